"""Bound the copies of one upstream repo in ``tenant`` and ``user`` isolation.

Every distinct credential gets its own cache repo in those modes, so a client
that sends a new header value with every clone would make a full copy each
time. After a fill, the partitions of the filled repo's URL beyond
``max_per_repo`` are evicted, least recently used first (never the repo just
filled); the shared partition is not counted. The trade-off: a tenant whose
copy was evicted fills again on its next clone, from the upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from goblet.cache.evict import Evictor
from goblet.cache.store import CacheRepo, RepoInfo, RepoStore
from goblet.cache.usage import tree_bytes


def excess(infos: list[RepoInfo], repo: CacheRepo, max_per_repo: int) -> list[RepoInfo]:
    """The partitions of ``repo``'s URL to evict, oldest first (pure)."""
    copies = [i for i in infos if i.url == repo.url and i.partition in ("tenant", "user")]
    if max_per_repo <= 0 or len(copies) <= max_per_repo:
        return []
    others = sorted((i for i in copies if i.key != repo.key), key=lambda i: i.last_access)
    return others[: len(copies) - max_per_repo]


class PartitionLimiter:
    """Evicts surplus partitions of a repo's URL after its fills."""

    def __init__(self, store: RepoStore, evictor: Evictor, max_per_repo: int,
                 on_evict: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.evictor = evictor
        self.max_per_repo = max_per_repo
        self.on_evict = on_evict
        self._tasks: set[asyncio.Task[int]] = set()

    def after_fill(self, repo: CacheRepo) -> None:
        """Check ``repo``'s URL soon (only partitioned repos are checked)."""
        if repo.partition and self.max_per_repo > 0:
            task = asyncio.get_running_loop().create_task(self.enforce(repo))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def enforce(self, repo: CacheRepo) -> int:
        """Evict the partitions of ``repo``'s URL beyond the bound; returns how many.

        Each eviction is also reported by the evictor like any other.
        """
        infos = await asyncio.to_thread(self.store.list_repos)
        evicted = 0
        for info in excess(infos, repo, self.max_per_repo):
            size = await asyncio.to_thread(tree_bytes, info.path)
            if await self.evictor.evict(info, size) is not None:
                evicted += 1
                self.on_evict()
        return evicted
