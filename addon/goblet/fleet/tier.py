"""The fleet tier as the proxy sees it: restore, publish, and take turns.

- ``turn(repo)``: the fleet-wide single flight of a repo's fill. The first
  instance takes the repo's Redis lease (``LEADER``) and fills; the others
  wait until it is released and, if the leader published meanwhile, fill as
  ``FOLLOWER`` (restore from the store, then fetch only the delta upstream).
  When the store already has the repo, they do not wait: restoring is cheap
  and the upstream then sends each of them only what moved since.
  When the ``async with`` body succeeds, the holder publishes the repo in the
  background and only then releases the lease; on failure it releases at once.
  A crashed leader's lease runs out by itself.
- ``restore(repo, target)``: a cold fill's first step. Downloads the
  manifest's bundles (streamed to files), checks size and SHA-256, then
  ``git bundle verify`` and a fetch from each (index-pack with fsck) into the
  temporary repo. The fill then fetches from the upstream with the client's
  credential as always, so the refs (and the grant) are the upstream's.
- ``publish``: bundles the repo (a base, or an increment over the published
  tips), uploads it, replaces the manifest (fenced: a holder whose lease was
  taken over writes nothing), deletes bundles no manifest names and keeps the
  store within its budget. Only partitions the operator opted in are published.

Redis or the store failing degrades to what an instance does alone (fill from
the upstream), counted in ``goblet_fleet_degraded`` with one log line per
outage: a fleet failure never fails a clone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from goblet.cache.locks import LockTimeout, RepoLocks, claim_fresh
from goblet.cache.recovery import remove_tree
from goblet.cache.store import CacheRepo, RepoStore, refs_digest
from goblet.fleet import bundles
from goblet.fleet.lease import CoordinationError, Coordinator
from goblet.fleet.manifest import (
    BundleEntry,
    Manifest,
    ManifestError,
    compacts,
    increment_base,
    parse,
    stale_objects,
)
from goblet.fleet.store import MANIFEST, NotFound, ObjectStore, StoreError, file_sha256
from goblet.fleet.turns import Role, Turn

if TYPE_CHECKING:
    from goblet.observe.metrics import Metrics
    from goblet.options import Settings

log = logging.getLogger(__name__)

POLL = 0.2  # seconds between looks at a lease held by another instance


class FleetTier:
    """The shared object store (``store``) and Redis coordination (``coordinator``);
    either may be None (not configured)."""

    def __init__(self, repos: RepoStore, locks: RepoLocks, metrics: Metrics, *,
                 store: ObjectStore | None, coordinator: Coordinator | None,
                 partitions: frozenset[str] = frozenset({"shared"}), max_bytes: int = 0,
                 max_wait: float = 3600.0) -> None:
        self.repos = repos
        self.locks = locks
        self.metrics = metrics
        self.store = store
        self.coordinator = coordinator
        self.partitions = partitions
        self.max_bytes = max_bytes
        self.max_wait = max_wait
        self._down: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    # --- health of the shared parts -------------------------------------------------

    def _degraded(self, part: str, reason: str) -> None:
        self.metrics.fleet_degraded.labels(part).inc()
        if part not in self._down:
            self._down.add(part)
            log.warning("fleet %s unavailable, filling alone: %s", part, reason)

    def _healthy(self, part: str) -> None:
        if part in self._down:
            self._down.discard(part)
            log.info("fleet %s available again", part)

    def publishable(self, repo: CacheRepo) -> bool:
        """Whether ``repo`` may go to (and come from) the store: its partition kind is
        opted in."""
        return self.store is not None and repo.partition_kind in self.partitions

    # --- turns ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def turn(self, repo: CacheRepo, *, wait: bool = True) -> AsyncIterator[Turn]:
        """This instance's turn at filling ``repo`` (see the module docstring)."""
        turn = await self._take(repo, wait)
        ok = False
        try:
            yield turn
            ok = True
        finally:
            publish = ok and turn.role in (Role.LEADER, Role.ALONE) and self.publishable(repo)
            self._spawn(self._publish_then_release(repo, turn, publish))

    async def _take(self, repo: CacheRepo, wait: bool) -> Turn:
        coord = self.coordinator
        if coord is None:
            return Turn(Role.ALONE)
        started = time.monotonic()
        try:
            before = await coord.digest(repo.key)
            while True:
                token = await coord.acquire(repo.key)
                if token is not None:
                    turn = Turn(Role.LEADER, token)
                    turn._renewer = asyncio.get_running_loop().create_task(
                        self._renew(repo, turn))
                    return self._waited(turn, started)
                if not wait:
                    return self._waited(Turn(Role.BUSY), started)
                if before is not None:  # the store has it: restore now, fetch the delta
                    return self._waited(Turn(Role.FOLLOWER), started)
                while await coord.held(repo.key):
                    if time.monotonic() - started > self.max_wait:
                        return self._waited(Turn(Role.ALONE), started, "timeout")
                    await asyncio.sleep(POLL)
                if await coord.digest(repo.key) != before:
                    return self._waited(Turn(Role.FOLLOWER), started)
        except CoordinationError as e:
            self._degraded("redis", str(e))
            return Turn(Role.ALONE)

    def _waited(self, turn: Turn, started: float, result: str = "") -> Turn:
        self._healthy("redis")
        self.metrics.lease_waits.labels(result or turn.role.value).inc()
        self.metrics.lease_wait_seconds.observe(time.monotonic() - started)
        return turn

    async def _renew(self, repo: CacheRepo, turn: Turn) -> None:
        assert self.coordinator is not None
        every = self.coordinator.lease_ms / 3000
        while True:
            await asyncio.sleep(every)
            try:
                if not await self.coordinator.renew(repo.key, turn.token):
                    turn.lost = True
                    log.warning("fleet lease of %s ran out before its fill ended", repo.url)
                    return
            except CoordinationError as e:
                self._degraded("redis", str(e))

    async def _publish_then_release(self, repo: CacheRepo, turn: Turn, publish: bool) -> None:
        try:
            if publish and not turn.lost:
                await self.publish(repo, turn)
        finally:
            if turn._renewer is not None:
                turn._renewer.cancel()
            if turn.role is Role.LEADER and self.coordinator is not None:
                try:
                    await self.coordinator.release(repo.key, turn.token)
                except CoordinationError as e:
                    self._degraded("redis", str(e))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("fleet publish crashed", exc_info=exc)

    # --- restore ----------------------------------------------------------------------

    async def can_restore(self, repo: CacheRepo) -> bool:
        """Whether the store has ``repo`` published (a cold fill would restore it)."""
        if self.store is None or not self.publishable(repo):
            return False
        if self.coordinator is not None and "redis" not in self._down:
            try:
                if await self.coordinator.digest(repo.key):
                    return True
            except CoordinationError as e:
                self._degraded("redis", str(e))
        try:
            await asyncio.to_thread(self.store.get_manifest, repo.key)
        except NotFound:
            return False
        except StoreError as e:
            self._degraded("store", str(e))
            return False
        self._healthy("store")
        return True

    async def restore(self, repo: CacheRepo, target: Path) -> bool:
        """Fill the new, empty repo at ``target`` from the store; True if restored.

        On any failure ``target`` is left empty again (re-created) and False returned:
        the fill then fetches everything from the upstream.
        """
        store = self.store
        if store is None or not self.publishable(repo):
            return False
        started = time.monotonic()
        try:
            manifest = parse(await asyncio.to_thread(store.get_manifest, repo.key))
            moved = 0
            for entry in manifest.bundles:
                with self._bundle_file(repo) as path:
                    digest = await asyncio.to_thread(store.download, repo.key, entry.name,
                                                     path, entry.size)
                    if digest != entry.sha256 or path.stat().st_size != entry.size:
                        raise bundles.BundleError("bundle checksum does not match its manifest")
                    moved += entry.size
                    await bundles.verify(self.repos.git, target, path)
                    await bundles.fetch(self.repos.git, target, path)
        except NotFound:
            self.metrics.store_restores.labels("miss").inc()
            self._healthy("store")
            await self._reset(target)
            return False
        except StoreError as e:
            self._degraded("store", str(e))
            self.metrics.store_restores.labels("error").inc()
            await self._reset(target)
            return False
        except (ManifestError, bundles.BundleError, OSError) as e:
            log.warning("not restoring %s from the store: %s", repo.url, e)
            self.metrics.store_restores.labels("error").inc()
            await self._reset(target)
            return False
        self._healthy("store")
        seconds = time.monotonic() - started
        self.metrics.store_restores.labels("hit").inc()
        self.metrics.store_bytes.labels("down").inc(moved)
        self.metrics.store_duration.labels("restore").observe(seconds)
        log.info("restored %s from the store: %d bundle(s), %d bytes, %.3fs", repo.url,
                 len(manifest.bundles), moved, seconds)
        return True

    @contextlib.contextmanager
    def _bundle_file(self, repo: CacheRepo) -> Iterator[Path]:
        """A fresh path in the cache's ``tmp/`` for one bundle, claimed while in use (so no
        sweep of ``tmp/`` takes it; a crashed process's is swept), deleted afterwards."""
        path, claim = claim_fresh(self.repos.tmp_dir, repo.key, ".bundle")
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)
            claim.release()

    async def _reset(self, target: Path) -> None:
        """Leave an empty repo at ``target`` (whatever a failed restore put there goes)."""
        await asyncio.to_thread(remove_tree, target)
        await self.repos.init_bare(target)

    # --- publish ----------------------------------------------------------------------

    async def publish(self, repo: CacheRepo, turn: Turn) -> None:
        """Publish ``repo`` (see the module docstring); failures are logged and counted."""
        store, coord = self.store, self.coordinator
        state = self.repos.state(repo)
        if store is None or state is None or not state.refs:
            return
        started = time.monotonic()
        try:
            if coord is not None and turn.role is Role.LEADER:
                try:
                    if await coord.digest(repo.key) == state.digest:
                        self.metrics.store_publishes.labels("skipped").inc()
                        return
                except CoordinationError as e:
                    self._degraded("redis", str(e))
            previous = await self._previous(repo)
            if previous is not None and previous.digest == state.digest:
                self.metrics.store_publishes.labels("skipped").inc()
                await self._set_digest(repo, turn, state.digest)
                return
            if previous is not None and turn.token and previous.fence > turn.token:
                self.metrics.store_publishes.labels("skipped").inc()
                return
            kind, manifest = await self._bundle_and_upload(repo, turn, previous)
            if manifest is None:
                self.metrics.store_publishes.labels("skipped").inc()
                return
            if not await self._still_leader(repo, turn):
                log.warning("fleet lease of %s was taken over: not publishing", repo.url)
                self.metrics.store_publishes.labels("skipped").inc()
                return
            await asyncio.to_thread(store.put_manifest, repo.key, manifest.to_json())
            await self._set_digest(repo, turn, manifest.digest)
            await self._tidy(repo, manifest)
        except StoreError as e:
            self._degraded("store", str(e))
            self.metrics.store_publishes.labels("error").inc()
            return
        except CoordinationError as e:
            self._degraded("redis", str(e))
            self.metrics.store_publishes.labels("error").inc()
            return
        except (bundles.BundleError, OSError, LockTimeout) as e:
            log.warning("cannot publish %s: %s", repo.url, e)
            self.metrics.store_publishes.labels("error").inc()
            return
        self._healthy("store")
        seconds = time.monotonic() - started
        self.metrics.store_publishes.labels(kind).inc()
        self.metrics.store_duration.labels("publish").observe(seconds)
        log.info("published %s to the store: %s, %d bytes in %d bundle(s), %.3fs", repo.url,
                 kind, manifest.size, len(manifest.bundles), seconds)

    async def _still_leader(self, repo: CacheRepo, turn: Turn) -> bool:
        """Whether ``turn`` may write the manifest: no one took its lease over. With Redis
        gone this cannot be known; the manifest's own fence (never replaced by an older
        token) is then the guard."""
        if self.coordinator is None or turn.role is not Role.LEADER:
            return True
        try:
            return await self.coordinator.current(repo.key, turn.token)
        except CoordinationError as e:
            self._degraded("redis", str(e))
            return True

    async def _previous(self, repo: CacheRepo) -> Manifest | None:
        assert self.store is not None
        try:
            return parse(await asyncio.to_thread(self.store.get_manifest, repo.key))
        except NotFound:
            return None
        except ManifestError as e:
            log.warning("replacing an unreadable manifest of %s: %s", repo.url, e)
            return None

    async def _bundle_and_upload(self, repo: CacheRepo, turn: Turn, previous: Manifest | None
                                 ) -> tuple[str, Manifest | None]:
        """Make the next bundle (an increment if it can be one), upload it; the manifest
        that names it (None: nothing to publish)."""
        assert self.store is not None
        with self._bundle_file(repo) as out:
            async with self.locks.writer(repo.key, timeout=600):
                refs, head = await self.repos.read_refs(repo.path)
                if not refs:
                    return "skipped", None
                tips = set(previous.refs.values()) if previous else set()
                base = increment_base(previous, await self.repos.present(repo, tips))
                if base is not None and await bundles.create(
                        self.repos.git, repo.path, out, sorted(refs), base):
                    assert previous is not None
                    if compacts(previous, out.stat().st_size):
                        base = None
                else:
                    base = None
                if base is None:
                    out.unlink(missing_ok=True)
                    if not await bundles.create(self.repos.git, repo.path, out, sorted(refs)):
                        return "skipped", None
            size, sha = out.stat().st_size, await asyncio.to_thread(file_sha256, out)
            entry = BundleEntry(f"{sha}.bundle", size, sha)
            await asyncio.to_thread(self.store.upload, repo.key, entry.name, out)
            self.metrics.store_bytes.labels("up").inc(size)
        chain = (*previous.bundles, entry) if base is not None and previous else (entry,)
        return ("increment" if base is not None else "base",
                Manifest(refs, head, refs_digest(refs, head), time.time(), turn.token, chain))

    async def _set_digest(self, repo: CacheRepo, turn: Turn, digest: str) -> None:
        if self.coordinator is None or turn.role is not Role.LEADER:
            return
        try:
            await self.coordinator.set_digest(repo.key, turn.token, digest)
        except CoordinationError as e:
            self._degraded("redis", str(e))

    async def _tidy(self, repo: CacheRepo, manifest: Manifest) -> None:
        """Delete bundles ``manifest`` no longer names, then keep within the budget."""
        assert self.store is not None
        names = {o.name for o in await asyncio.to_thread(self.store.list_repo, repo.key)}
        stale = sorted(stale_objects(names, manifest))
        if stale:
            await asyncio.to_thread(self.store.delete, repo.key, stale)
        if self.max_bytes:
            await asyncio.to_thread(self._enforce_budget, repo.key)

    def _enforce_budget(self, keep: str) -> None:
        """Delete whole repos, least recently published first, until the store fits its
        budget (never ``keep``, the repo just published). Blocking."""
        assert self.store is not None
        folders = self.store.list_all()
        total = sum(o.size for objs in folders.values() for o in objs)
        order = sorted((max(o.modified for o in objs), key) for key, objs in folders.items()
                       if key != keep)
        for _, key in order:
            if total <= self.max_bytes:
                return
            objs = folders[key]
            names = [o.name for o in objs]
            names.sort(key=lambda n: n != MANIFEST)  # the manifest first: no dangling names
            self.store.delete(key, names)
            total -= sum(o.size for o in objs)
            log.info("store budget: removed %s (%d bytes)", key[:12], sum(o.size for o in objs))

    async def close(self) -> None:
        """Let background publishes finish (briefly), then close Redis."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=10)
        if self.coordinator is not None:
            await self.coordinator.close()


def redis_password() -> str | None:
    """Redis's password, from ``GOBLET_REDIS_PASSWORD`` (never an option)."""
    return os.environ.get("GOBLET_REDIS_PASSWORD") or None


def build(settings: Settings, repos: RepoStore, locks: RepoLocks, metrics: Metrics
          ) -> FleetTier | None:
    """The fleet tier the settings ask for; None when neither store nor Redis is set."""
    if settings.store is None and settings.redis is None:
        return None
    store = ObjectStore(settings.store, settings.store_endpoint) if settings.store else None
    coordinator = Coordinator(settings.redis, password=redis_password(),
                              lease_seconds=settings.fleet_lease) if settings.redis else None
    return FleetTier(repos, locks, metrics, store=store, coordinator=coordinator,
                     partitions=settings.store_partitions, max_bytes=settings.store_max_bytes)


def describe(settings: Settings) -> str:
    """One log line naming the fleet's shared parts (no credential is in any of them)."""
    store = f"s3://{settings.store.bucket}/{settings.store.prefix}" if settings.store else "off"
    if settings.store and settings.store_endpoint:
        store += f" at {settings.store_endpoint}"
    redis = (f"{settings.redis.host}:{settings.redis.port}/{settings.redis.db}"
             if settings.redis else "off")
    return (f"fleet tier: store={store} redis={redis} "
            f"partitions={','.join(sorted(settings.store_partitions))}")
