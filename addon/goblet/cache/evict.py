"""Keep the cache within its budget: evict least recently used repos and LFS objects.

Two limits, either can trigger: ``max_bytes`` (the repos, the pack cache and the
LFS store,
measured by walking the files: ``count-objects`` misses bitmaps, indexes and
reverse indexes) and ``min_free_bytes`` (free space on the cache filesystem).

Under the repo's writer lock the directory is renamed into ``trash/`` on the
same filesystem; new requests see no repo and fill it again (or go upstream)
as for any cold repo. A repo this process is serving is passed over: an
answer that follows tags runs in a view that names the repo by its path
(``serve/tagview.py``), which a rename would pull from under it. A plain
``upload-pack`` of another process sharing the cache dir keeps its working
directory and open files (its tag views fail, and the client retries). Trash
is deleted once no clone of this process reads it and it is older than the
drain time (clones of other processes sharing the cache dir get that long).
LFS objects (``lfs/store.py``) take their turn in the same least-recently-used
order; they never change, so one is simply deleted (a reader keeps its open
file).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from goblet.cache.locks import LockTimeout, RepoLocks
from goblet.cache.recovery import remove_tree
from goblet.cache.store import RepoInfo, RepoStore
from goblet.cache.usage import free_bytes, tree_bytes
from goblet.lfs.store import LfsStore, StoredObject

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Eviction:
    """One evicted repo."""

    key: str
    url: str
    bytes: int
    idle_seconds: float
    partition: str = "shared"  # the partition kind (never a tenant's id)


def cache_bytes(store: RepoStore) -> int:
    """The bytes the budget counts: repos, stored packs and LFS objects (not trash or
    tmp)."""
    return (tree_bytes(store.repos_dir) + tree_bytes(store.packcache_dir)
            + tree_bytes(LfsStore(store.root).root))


class Evictor:
    """Enforces the budget; one eviction pass at a time per process."""

    def __init__(
        self,
        store: RepoStore,
        locks: RepoLocks,
        *,
        max_bytes: int,
        min_free_bytes: int,
        drain_seconds: float = 30.0,
        reading: Callable[[str], bool] = lambda key: False,
        on_evict: Callable[[Eviction], None] = lambda e: None,
        lfs: LfsStore | None = None,
    ) -> None:
        self.store = store
        self.locks = locks
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.drain_seconds = drain_seconds
        self.reading = reading
        self.on_evict = on_evict
        self.lfs = lfs
        self._pass = asyncio.Lock()

    def over_budget(self) -> tuple[int, int]:
        """(bytes above max_bytes, bytes missing below min_free_bytes); blocking.

        Trash waiting for its drain counts as free already: it will be, and
        counting it again would evict one more repo on every pass.
        """
        over = cache_bytes(self.store) - self.max_bytes if self.max_bytes else 0
        pending = tree_bytes(self.store.trash_dir) if self.min_free_bytes else 0
        short = self.min_free_bytes - free_bytes(self.store.root) - pending
        return max(0, over), max(0, short)

    async def enforce(self) -> list[Eviction]:
        """Evict LRU repos until both limits hold (or nothing evictable is left)."""
        async with self._pass:
            over, short = await asyncio.to_thread(self.over_budget)
            done, _ = await self.evict_lru(over, short)
            await self.purge_trash()
            return done

    async def evict_lru(self, over: int, short: int = 0, *, lock_timeout: float = 5.0
                        ) -> tuple[list[Eviction], list[RepoInfo]]:
        """Evict least recently used repos until ``over`` and ``short`` bytes are freed.

        Returns the evictions and the repos passed over on the way (writer lock
        busy, or gone meanwhile). ``enforce`` runs this with what the budget asks
        for; ``goblet cache evict --lru-to`` with the bytes above its target.
        """
        done: list[Eviction] = []
        passed: list[RepoInfo] = []
        if over <= 0 and short <= 0:
            return done, passed
        lfs = self.lfs
        repos: list[RepoInfo | StoredObject] = [
            *await asyncio.to_thread(self.store.list_repos),
            *(await asyncio.to_thread(lambda: list(lfs.objects())) if lfs else [])]
        for info in sorted(repos, key=lambda r: r.last_access):
            if over <= 0 and short <= 0:
                break
            if isinstance(info, StoredObject):
                if (gone := self._evict_object(info)) is not None:
                    done.append(gone)
                    over, short = over - gone.bytes, short - gone.bytes
                continue
            size = await asyncio.to_thread(tree_bytes, info.path)
            eviction = await self.evict(info, size, lock_timeout)
            if eviction is None:
                passed.append(info)
                continue
            done.append(eviction)
            over -= size
            short -= size
        return done, passed

    def _evict_object(self, obj: StoredObject) -> Eviction | None:
        """Delete one LFS object; None if it was gone already."""
        assert self.lfs is not None
        freed = self.lfs.remove_object(obj)
        if freed is None:
            return None
        eviction = Eviction(obj.oid, f"lfs:{obj.oid}", freed, time.time() - obj.last_access,
                            "lfs")
        self.on_evict(eviction)
        return eviction

    async def evict(self, info: RepoInfo, size: int = 0,
                    lock_timeout: float = 5.0) -> Eviction | None:
        """Move one repo to trash under its writer lock; None if busy (its lock is held or
        this process is serving it) or gone."""
        try:
            async with self.locks.writer(info.key, timeout=lock_timeout):
                if not info.path.exists():
                    return None
                if self.reading(info.key):  # (checked under the lock: no await until the rename)
                    log.info("not evicting %s now: it is being served",
                             info.url or info.key[:12])
                    return None
                target = self.store.trash_dir / f"{info.key}.{time.time_ns()}"
                info.path.rename(target)
        except LockTimeout:
            log.info("not evicting %s now: its writer lock is busy", info.url or info.key[:12])
            return None
        except OSError as e:
            log.warning("cannot evict %s: %s", info.url or info.key[:12], e)
            return None
        eviction = Eviction(info.key, info.url, size, time.time() - info.last_access,
                            info.partition)
        self.on_evict(eviction)
        return eviction

    async def purge_trash(self, *, force: bool = False) -> int:
        """Delete trash entries nobody can still read; returns how many."""
        now = time.time()
        removed = 0
        try:
            entries = list(self.store.trash_dir.iterdir())
        except OSError:
            return 0
        for entry in entries:
            key, _, stamp = entry.name.partition(".")
            age = now - int(stamp) / 1e9 if stamp.isdigit() else self.drain_seconds
            if not force and (age < self.drain_seconds or self.reading(key)):
                continue
            await asyncio.to_thread(remove_tree, entry)
            removed += 1
        return removed
