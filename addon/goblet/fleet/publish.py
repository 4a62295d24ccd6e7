"""Publishing a repo to the object store: the next bundle (a base, or an increment
over the published tips), its upload, the manifest (fenced), then tidying.

- An increment's prerequisites are the previous manifest's tips, used only when
  this repo holds all of them; after ``MAX_INCREMENTS``, or when increments
  would outweigh the base, the next publish is a new base (compaction).
- The manifest is replaced only by the holder of the repo's lease (a holder
  whose lease was taken over writes nothing), never by an older token than
  the one that wrote it, never without a token (Redis down) once a token wrote
  it, and only if it is still the manifest read before (a conditional PUT on
  its ETag; on a server without conditional writes, a window remains).
- Bundles no manifest names are deleted afterwards, and the store is kept
  within its budget by removing whole repos, least recently published first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from goblet.cache.locks import LockTimeout, RepoLocks
from goblet.cache.store import CacheRepo, RepoStore, refs_digest
from goblet.fleet import bundles
from goblet.fleet.health import PartHealth
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
from goblet.fleet.store import (
    MANIFEST,
    Conflict,
    NotFound,
    ObjectStore,
    StoreError,
    file_sha256,
)
from goblet.fleet.threads import StoreBusy, StoreThreads
from goblet.fleet.turns import Role, Turn

if TYPE_CHECKING:
    from goblet.observe.metrics import Metrics

log = logging.getLogger(__name__)


class Publisher:
    """Publishes repos of ``repos`` to ``store``, fenced by ``coordinator`` (if any)."""

    def __init__(self, repos: RepoStore, locks: RepoLocks, metrics: Metrics,
                 health: PartHealth, threads: StoreThreads, *, store: ObjectStore | None,
                 coordinator: Coordinator | None, max_bytes: int = 0) -> None:
        self.repos = repos
        self.locks = locks
        self.metrics = metrics
        self.health = health
        self.threads = threads  # every store call runs in one of these
        self.store = store
        self.coordinator = coordinator
        self.max_bytes = max_bytes

    async def publish(self, repo: CacheRepo, turn: Turn) -> None:
        """Publish ``repo`` (see the module docstring); failures are logged and counted."""
        store = self.store
        state = self.repos.state(repo)
        if store is None or state is None or not state.refs:
            return
        started = time.monotonic()
        try:
            # What the store holds decides, never Redis's digest alone: the store may
            # have lost the repo (its budget, a lifecycle rule, an operator) meanwhile.
            previous, etag = await self._previous(repo)
            if previous is not None and not await self._whole(repo, previous):
                log.warning("the store lost bundles of %s: publishing a new base", repo.url)
                previous = replace(previous, bundles=(), refs={})
            if previous is not None and previous.bundles and previous.digest == state.digest:
                self.metrics.store_publishes.labels("skipped").inc()
                await self._set_digest(repo, turn, state.digest)
                return
            if previous is not None and previous.fence > turn.token:
                # a newer writer's (or, without a token, any fenced writer's) manifest
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
            # Conditional on the manifest read above: a writer that replaced it since
            # (one whose fence this publish did not see) wins, and nothing is tidied.
            await self.threads.run(store.put_manifest, repo.key, manifest.to_json(),
                                    if_match=etag)
            await self._set_digest(repo, turn, manifest.digest)
            await self._tidy(repo, manifest)
        except Conflict:
            log.warning("the manifest of %s changed while publishing: not replaced", repo.url)
            self.metrics.store_publishes.labels("skipped").inc()
            return
        except StoreBusy:
            log.warning("not publishing %s: all store threads are taken", repo.url)
            self.health.skipped("store")
            self.metrics.store_publishes.labels("error").inc()
            return
        except StoreError as e:
            self.health.degraded("store", str(e))
            self.metrics.store_publishes.labels("error").inc()
            return
        except CoordinationError as e:
            self.health.degraded("redis", str(e))
            self.metrics.store_publishes.labels("error").inc()
            return
        except (bundles.BundleError, OSError, LockTimeout) as e:
            log.warning("cannot publish %s: %s", repo.url, e)
            self.metrics.store_publishes.labels("error").inc()
            return
        self.health.healthy("store")
        seconds = time.monotonic() - started
        self.metrics.store_publishes.labels(kind).inc()
        self.metrics.store_duration.labels("publish").observe(seconds)
        log.info("published %s to the store: %s, %d bytes in %d bundle(s), %.3fs", repo.url,
                 kind, manifest.size, len(manifest.bundles), seconds)

    async def _whole(self, repo: CacheRepo, manifest: Manifest) -> bool:
        """Whether every bundle ``manifest`` names is in the store."""
        assert self.store is not None
        names = {o.name for o in await self.threads.run(self.store.list_repo, repo.key)}
        return all(b.name in names for b in manifest.bundles)

    async def _still_leader(self, repo: CacheRepo, turn: Turn) -> bool:
        """Whether ``turn`` may write the manifest: no one took its lease over. With Redis
        gone this cannot be known; the manifest's own fence (never replaced by an older
        token) is then the guard."""
        if self.coordinator is None or turn.role is not Role.LEADER:
            return True
        try:
            return await self.coordinator.current(repo.key, turn.token)
        except CoordinationError as e:
            self.health.degraded("redis", str(e))
            return True

    async def _previous(self, repo: CacheRepo) -> tuple[Manifest | None, str]:
        """The stored manifest (None: none, or unreadable) and its ETag ("": none)."""
        assert self.store is not None
        try:
            data, etag = await self.threads.run(self.store.get_manifest_tagged, repo.key)
        except NotFound:
            return None, ""
        try:
            return parse(data), etag
        except ManifestError as e:
            log.warning("replacing an unreadable manifest of %s: %s", repo.url, e)
            return None, etag

    async def _bundle_and_upload(self, repo: CacheRepo, turn: Turn, previous: Manifest | None
                                 ) -> tuple[str, Manifest | None]:
        """Make the next bundle (an increment if it can be one), upload it; the manifest
        that names it (None: nothing to publish)."""
        assert self.store is not None
        with bundles.bundle_file(self.repos.tmp_dir, repo.key) as out:
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
            await self.threads.run(self.store.upload, repo.key, entry.name, out)
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
            self.health.degraded("redis", str(e))

    async def _tidy(self, repo: CacheRepo, manifest: Manifest) -> None:
        """Delete bundles ``manifest`` no longer names, then keep within the budget."""
        assert self.store is not None
        names = {o.name for o in await self.threads.run(self.store.list_repo, repo.key)}
        stale = sorted(stale_objects(names, manifest))
        if stale:
            await self.threads.run(self.store.delete, repo.key, stale)
        if self.max_bytes:
            removed = await self.threads.run(self._enforce_budget, repo.key)
            for key in removed:  # no instance may believe the store still has it
                await self.forget(key)

    async def forget(self, repo_key: str) -> None:
        """Drop Redis's digest of a repo the store no longer holds (if Redis is up: not
        tried while it is down, see ``PartHealth``)."""
        if self.coordinator is None:
            return
        if not self.health.usable("redis"):
            self.health.skipped("redis")
            return
        try:
            await self.coordinator.forget(repo_key)
            self.health.healthy("redis")
        except CoordinationError as e:
            self.health.degraded("redis", str(e))

    def _enforce_budget(self, keep: str) -> list[str]:
        """Delete whole repos, least recently published first, until the store fits its
        budget (never ``keep``, the repo just published); the keys removed. Blocking."""
        assert self.store is not None
        folders = self.store.list_all()
        total = sum(o.size for objs in folders.values() for o in objs)
        order = sorted((max(o.modified for o in objs), key) for key, objs in folders.items()
                       if key != keep)
        removed: list[str] = []
        for _, key in order:
            if total <= self.max_bytes:
                break
            objs = folders[key]
            names = [o.name for o in objs]
            names.sort(key=lambda n: n != MANIFEST)  # the manifest first: no dangling names
            self.store.delete(key, names)
            removed.append(key)
            total -= sum(o.size for o in objs)
            log.info("store budget: removed %s (%d bytes)", key[:12], sum(o.size for o in objs))
        return removed
