"""The fleet tier as the proxy sees it: restore, publish, and take turns.

- ``turn(repo)``: the fleet-wide single flight of a repo's fill. The first
  instance takes the repo's Redis lease (``LEADER``) and fills; the others
  wait until it is released and, if the leader published meanwhile, fill as
  ``FOLLOWER`` (restore from the store, then fetch only the delta upstream).
  When the store already has the repo, they do not wait: restoring is cheap
  and the upstream then sends each of them only what moved since.
  When the ``async with`` body succeeds, the holder publishes the repo in the
  background and only then releases the lease; on failure it releases at once.
  A crashed leader's lease runs out by itself. A leader streaming a cold
  clone to its client (``streaming``) marks its lease so: its fill lasts as
  long as that client reads, so others wait for it at most ``stall_timeout``
  (goblet_upstream_timeout) and then fill on their own.
- ``restore(repo, target)``: a cold fill's first step. Downloads the
  manifest's bundles (streamed to files), checks size and SHA-256, then
  ``git bundle verify`` and a fetch from each (index-pack with fsck) into the
  temporary repo. The fill then fetches from the upstream with the client's
  credential as always, so the refs (and the grant) are the upstream's.
- ``publish``: ``publish.Publisher`` bundles the repo (a base, or an increment
  over the published tips), uploads it, replaces the manifest (fenced),
  deletes bundles no manifest names and keeps the store within its budget.
  Only partitions the operator opted in are published.

Redis or the store failing degrades to what an instance does alone (fill from
the upstream), counted in ``goblet_fleet_degraded`` with one log line per
outage: a fleet failure never fails a clone. A part that failed is left alone
(``PartHealth``: one try every ``PROBE_EVERY`` seconds) rather than costing every
fill its timeout. Store calls run in the tier's own threads (``StoreThreads``),
never in the default executor the serving path uses: a store that does not
answer holds at most those, and a call finding none free goes without the store.
``can_restore`` (asked before a cold clone decides how to fill) waits at most
``CHECK_TIMEOUT`` for the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from goblet.cache.locks import RepoLocks
from goblet.cache.recovery import remove_tree
from goblet.cache.store import CacheRepo, RepoStore
from goblet.cache.usage import free_bytes
from goblet.fleet import bundles
from goblet.fleet.health import PartHealth
from goblet.fleet.lease import CoordinationError, Coordinator, ForeignFence
from goblet.fleet.manifest import Manifest, ManifestError, parse
from goblet.fleet.publish import Publisher
from goblet.fleet.store import NotFound, ObjectStore, Pace, StoreError
from goblet.fleet.threads import StoreBusy, StoreThreads
from goblet.fleet.turns import Role, Turn

if TYPE_CHECKING:
    from goblet.observe.metrics import Metrics
    from goblet.options import Settings

log = logging.getLogger(__name__)

POLL = 0.2  # seconds between looks at a lease held by another instance
CHECK_TIMEOUT = 3.0  # seconds ``can_restore`` waits for the store's manifest


class FleetTier:
    """The shared object store (``store``) and Redis coordination (``coordinator``);
    either may be None (not configured)."""

    def __init__(self, repos: RepoStore, locks: RepoLocks, metrics: Metrics, *,
                 store: ObjectStore | None, coordinator: Coordinator | None,
                 partitions: frozenset[str] = frozenset({"shared"}), max_bytes: int = 0,
                 max_wait: float = 3600.0, stall_timeout: float = 60.0,
                 cache_max_bytes: int = 0, min_free_bytes: int = 0,
                 public: bool = False) -> None:
        self.repos = repos
        self.locks = locks
        self.metrics = metrics
        self.store = store
        self.coordinator = coordinator
        self.partitions = partitions
        self.max_wait = max_wait
        # goblet_upstream_timeout: a download from the store slower than
        # ``store.LOW_SPEED`` bytes/s for this long is the store failing.
        self.stall_timeout = stall_timeout
        # goblet_cache_max_bytes and goblet_min_free_bytes: a manifest naming more than
        # the cache may hold is not downloaded (its writer does not decide that).
        self.cache_max_bytes = cache_max_bytes
        self.min_free_bytes = min_free_bytes
        # goblet_isolation=public: the tier stays out of fills (see ``publishable``).
        self.public = public
        self.health = PartHealth(metrics)
        self.threads = StoreThreads()
        self.publisher = Publisher(repos, locks, metrics, self.health, self.threads,
                                   store=store, coordinator=coordinator, max_bytes=max_bytes)
        self._background: set[asyncio.Task[None]] = set()

    @property
    def max_bytes(self) -> int:
        """The store's budget (``goblet_store_max_bytes``; 0: none)."""
        budget: int = self.publisher.max_bytes
        return budget

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self.publisher.max_bytes = value

    def publishable(self, repo: CacheRepo) -> bool:
        """Whether ``repo`` may go to (and come from) the store: its partition kind is
        opted in, and the isolation is not ``public``. A public instance's repos share the
        ``shared`` partition's keys, and a restore comes before the anonymous fill that
        would be refused a private repo: restoring would put bundles another instance
        published from a private repo on a disk that holds only public data."""
        return (self.store is not None and not self.public
                and repo.partition_kind in self.partitions)

    # --- turns ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def turn(self, repo: CacheRepo, *, wait: bool = True,
                   streaming: bool = False) -> AsyncIterator[Turn]:
        """This instance's turn at filling ``repo`` (see the module docstring);
        ``streaming``: the fill is a streamed cold clone (``cache/teefill.py``)."""
        turn = await self._take(repo, wait, streaming)
        ok = False
        try:
            yield turn
            ok = True
        finally:
            publish = ok and turn.role in (Role.LEADER, Role.ALONE) and self.publishable(repo)
            self._spawn(self._publish_then_release(repo, turn, publish))

    async def _take(self, repo: CacheRepo, wait: bool, streaming: bool = False) -> Turn:
        """This instance's role in the fill of ``repo``; returns within ``max_wait``.

        A lease goblet cannot have written (``Lease.foreign``: not a token, no expiry,
        an expiry beyond the lease time) is not waited for: the fill goes ``ALONE``, as
        it does when a lease's expiry has not moved forward for ``2 x`` the lease time
        (no holder renews it), when a streaming holder was waited for ``stall_timeout``,
        and after ``max_wait``. Every look at a held lease is ``POLL`` after the last.
        While Redis is down (``PartHealth``) the fill goes alone without asking it.
        """
        coord = self.coordinator
        if coord is None or self.public:  # a public instance neither restores nor publishes
            return Turn(Role.ALONE)
        if not self.health.usable("redis"):  # down: tried again every PROBE_EVERY
            self.health.skipped("redis")
            return Turn(Role.ALONE)
        started = time.monotonic()
        try:
            before = await coord.digest(repo.key)
            while True:
                token = await coord.acquire(repo.key, streaming=streaming)
                if token is not None:
                    turn = Turn(Role.LEADER, token)
                    turn._renewer = asyncio.get_running_loop().create_task(
                        self._renew(repo, turn))
                    return self._waited(turn, started)
                if not wait:
                    return self._waited(Turn(Role.BUSY), started)
                if before is not None and not await self._lost(repo):
                    # the store has it: restore now, fetch the delta
                    return self._waited(Turn(Role.FOLLOWER), started)
                before = None
                gave_up = await self._wait_out(coord, repo, started)
                if gave_up:
                    return self._waited(Turn(Role.ALONE), started, gave_up)
                if await coord.digest(repo.key) != before:
                    return self._waited(Turn(Role.FOLLOWER), started)
        except ForeignFence as e:
            log.warning("not coordinating the fill of %s: %s", repo.url, e)
            return self._waited(Turn(Role.ALONE), started, "foreign")
        except CoordinationError as e:
            self.health.degraded("redis", str(e))
            return Turn(Role.ALONE)

    async def _wait_out(self, coord: Coordinator, repo: CacheRepo, started: float) -> str:
        """Wait until ``repo``'s lease is gone (""), or give up on it: ``"timeout"`` (waited
        ``max_wait``, or ``stall_timeout`` for a streaming holder) or ``"foreign"`` (not a
        lease a goblet holder keeps: see ``_take``). Looks every ``POLL`` seconds."""
        lease_s = coord.lease_ms / 1000
        moved_at = time.monotonic()  # when the lease's expiry last moved forward
        expires = -math.inf
        while True:
            await asyncio.sleep(POLL)
            now = time.monotonic()
            if now - started > self.max_wait:
                return "timeout"
            lease = await coord.lease(repo.key)
            if lease is None:
                return ""
            if lease.foreign(coord.lease_ms):
                log.warning("fleet lease of %s holds a value goblet did not write: "
                            "filling alone", repo.url)
                return "foreign"
            # A streamed cold clone lasts as long as its client reads: waited for no
            # longer than a stalled fetch would be.
            if lease.streaming and now - started > min(self.max_wait, self.stall_timeout):
                return "timeout"
            # A holder renews every third of the lease time, each time pushing the expiry
            # forward by about that much; a takeover moves it too.
            if now + lease.ttl_ms / 1000 > expires + lease_s / 10:
                moved_at = now
            expires = max(expires, now + lease.ttl_ms / 1000)
            if now - moved_at > 2 * lease_s:
                log.warning("fleet lease of %s is not renewed and does not run out: "
                            "filling alone", repo.url)
                return "foreign"

    def _glance(self) -> Pace:
        """The pace of a look at a manifest outside a fill: ``stall_timeout`` at most."""
        window = max(1.0, self.stall_timeout)
        return Pace(window=window, deadline=time.monotonic() + window)

    async def _lost(self, repo: CacheRepo) -> bool:
        """Whether the store lost ``repo`` though Redis has its digest (then forgotten):
        a follower would restore nothing, so it waits for the leader instead."""
        if self.store is None:
            return False
        if not self.health.usable("store"):
            self.health.skipped("store")
            return False
        try:
            await self.threads.run(self.store.get_manifest, repo.key, self._glance())
        except NotFound:
            self.health.healthy("store")
            await self.publisher.forget(repo.key)
            return True
        except StoreBusy:
            self.health.skipped("store")
        except StoreError as e:
            self.health.degraded("store", str(e))
        else:
            self.health.healthy("store")
        return False

    def _waited(self, turn: Turn, started: float, result: str = "") -> Turn:
        self.health.healthy("redis")
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
                self.health.degraded("redis", str(e))

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
                    self.health.degraded("redis", str(e))

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
        """Whether the store has ``repo`` published (a cold fill would restore it).

        Returns within about ``CHECK_TIMEOUT`` (plus one Redis timeout): a store slower
        than that to show the manifest counts as failing, and False is returned, as it
        is while the store is down (``PartHealth``) or all its threads are taken."""
        if self.store is None or not self.publishable(repo):
            return False
        if self.coordinator is not None and self.health.usable("redis"):
            try:
                digest = await self.coordinator.digest(repo.key)
                self.health.healthy("redis")
                if digest:
                    return True
            except CoordinationError as e:
                self.health.degraded("redis", str(e))
        if not self.health.usable("store"):
            self.health.skipped("store")
            return False
        pace = Pace(window=CHECK_TIMEOUT, deadline=time.monotonic() + CHECK_TIMEOUT)
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await self.threads.run(self.store.get_manifest, repo.key, pace)
        except NotFound:
            self.health.healthy("store")
            return False
        except StoreBusy:
            self.health.skipped("store")
            return False
        except StoreError as e:
            self.health.degraded("store", str(e))
            return False
        except TimeoutError:
            pace.stop.set()  # the read still waiting in its thread ends at its next one
            self.health.degraded("store", f"object store did not show a manifest within "
                                          f"{CHECK_TIMEOUT:.0f}s")
            return False
        self.health.healthy("store")
        return True

    async def restore(self, repo: CacheRepo, target: Path, *,
                      deadline: float = math.inf) -> bool:
        """Fill the new, empty repo at ``target`` from the store; True if restored.

        The whole restore ends by ``deadline`` (``time.monotonic``, the fill's), and
        a download slower than ``store.LOW_SPEED`` bytes/s for ``stall_timeout`` is
        abandoned: both count as the store failing. On any failure ``target`` is left
        empty again (re-created) and False returned: the fill then fetches everything
        from the upstream. Not tried (False) while the store is down (``PartHealth``);
        given up (False) if a store call finds all the store's threads taken.
        """
        store = self.store
        if store is None or not self.publishable(repo):
            return False
        if not self.health.usable("store"):
            self.health.skipped("store")
            return False
        started = time.monotonic()
        pace = Pace(window=max(1.0, self.stall_timeout), deadline=deadline)
        try:
            async with asyncio.timeout(max(0.0, deadline - started)
                                       if deadline != math.inf else None):
                manifest, moved = await self._restore(store, repo, target, pace)
        except NotFound:
            self.metrics.store_restores.labels("miss").inc()
            self.health.healthy("store")
            await self.publisher.forget(repo.key)  # Redis's digest no longer holds
            await self._reset(target)
            return False
        except StoreBusy:
            self.health.skipped("store")
            await self._reset(target)
            return False
        except (StoreError, TimeoutError) as e:
            pace.stop.set()  # a download still running in its thread ends at its next read
            reason = str(e) if isinstance(e, StoreError) else \
                "object store too slow: the fill's deadline passed"
            self.health.degraded("store", reason)
            self.metrics.store_restores.labels("error").inc()
            await self._reset(target)
            return False
        except (ManifestError, bundles.BundleError, OSError) as e:
            log.warning("not restoring %s from the store: %s", repo.url, e)
            self.metrics.store_restores.labels("error").inc()
            await self._reset(target)
            return False
        self.health.healthy("store")
        seconds = time.monotonic() - started
        self.metrics.store_restores.labels("hit").inc()
        self.metrics.store_bytes.labels("down").inc(moved)
        self.metrics.store_duration.labels("restore").observe(seconds)
        log.info("restored %s from the store: %d bundle(s), %d bytes, %.3fs", repo.url,
                 len(manifest.bundles), moved, seconds)
        return True

    async def _restore(self, store: ObjectStore, repo: CacheRepo, target: Path, pace: Pace
                       ) -> tuple[Manifest, int]:
        """Download, check and fetch each bundle of the manifest; (manifest, bytes)."""
        manifest = parse(await self.threads.run(store.get_manifest, repo.key, pace))
        self._room_for(manifest)
        moved = 0
        for entry in manifest.bundles:
            with bundles.bundle_file(self.repos.tmp_dir, repo.key) as path:
                digest = await self.threads.run(store.download, repo.key, entry.name,
                                                path, entry.size, pace)
                if digest != entry.sha256 or path.stat().st_size != entry.size:
                    raise bundles.BundleError("bundle checksum does not match its manifest")
                moved += entry.size
                await bundles.verify(self.repos.git, target, path)
                await bundles.fetch(self.repos.git, target, path)
        return manifest, moved

    def _room_for(self, manifest: Manifest) -> None:
        """BundleError unless the cache has room for what ``manifest`` names: within
        ``cache_max_bytes``, and with ``min_free_bytes`` left free while its largest bundle
        and the packs fetched from the bundles are both on disk."""
        total = manifest.size
        if self.cache_max_bytes and total > self.cache_max_bytes:
            raise bundles.BundleError(f"manifest names {total} bytes, over the cache budget "
                                      f"of {self.cache_max_bytes}")
        need = total + max((b.size for b in manifest.bundles), default=0)
        room = free_bytes(self.repos.root) - self.min_free_bytes
        if need > room:
            raise bundles.BundleError(f"manifest names {total} bytes, more than the cache "
                                      f"disk has free above goblet_min_free_bytes")

    async def _reset(self, target: Path) -> None:
        """Leave an empty repo at ``target`` (whatever a failed restore put there goes)."""
        await asyncio.to_thread(remove_tree, target)
        await self.repos.init_bare(target)

    async def publish(self, repo: CacheRepo, turn: Turn) -> None:
        """Publish ``repo`` now (``publish.Publisher``) if it is ``publishable`` and the
        store is not down (``PartHealth``); failures are logged and counted."""
        if not self.publishable(repo):
            return
        if not self.health.usable("store"):
            self.health.skipped("store")
            return
        await self.publisher.publish(repo, turn)

    async def close(self) -> None:
        """Let background publishes finish (briefly), then close Redis and the store's
        threads."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=10)
        if self.coordinator is not None:
            await self.coordinator.close()
        self.threads.close()


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
                     partitions=settings.store_partitions, max_bytes=settings.store_max_bytes,
                     stall_timeout=settings.upstream_timeout,
                     cache_max_bytes=settings.cache_max_bytes,
                     min_free_bytes=settings.min_free_bytes,
                     public=settings.isolation == "public")


def describe(settings: Settings) -> str:
    """One log line naming the fleet's shared parts (no credential is in any of them)."""
    store = f"s3://{settings.store.bucket}/{settings.store.prefix}" if settings.store else "off"
    if settings.store and settings.store_endpoint:
        store += f" at {settings.store_endpoint}"
    redis = (f"{settings.redis.host}:{settings.redis.port}/{settings.redis.db}"
             if settings.redis else "off")
    return (f"fleet tier: store={store} redis={redis} "
            f"partitions={','.join(sorted(settings.store_partitions))}")
