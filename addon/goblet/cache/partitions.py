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
import time
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
    """Admits new copies of a repo and evicts surplus ones after fills.

    A new copy is admitted while the URL has fewer than ``max_per_repo`` copies, or
    when its least recently used copy has been idle for ``grace`` seconds (that one
    is evicted after the fill): clients minting credentials cannot evict a copy a
    tenant is using. The URL → copies index is read from disk once, then kept.
    """

    def __init__(self, store: RepoStore, evictor: Evictor, max_per_repo: int, *,
                 on_evict: Callable[[], None] = lambda: None,
                 on_refuse: Callable[[], None] = lambda: None, grace: float = 600.0) -> None:
        self.store = store
        self.evictor = evictor
        self.max_per_repo = max_per_repo
        self.on_evict = on_evict
        self.on_refuse = on_refuse
        self.grace = grace
        self._copies: dict[str, set[str]] | None = None
        self._tasks: set[asyncio.Task[int]] = set()

    async def load(self) -> None:
        """Index the copies on disk (at start-up)."""
        infos = await asyncio.to_thread(self.store.list_repos)
        copies: dict[str, set[str]] = {}
        for info in infos:
            if info.partition in ("tenant", "user"):
                copies.setdefault(info.url, set()).add(info.key)
        self._copies = copies

    def admit(self, repo: CacheRepo) -> bool:
        """Whether a new copy ``repo`` may be made now (see the class docstring)."""
        if not repo.partition or self.max_per_repo <= 0 or self._copies is None:
            return True
        others = self._copies.get(repo.url, set()) - {repo.key}
        if len(others) < self.max_per_repo:
            return True
        idle = max(time.time() - self.store.last_access(self.store.repos_dir / f"{k}.git")
                   for k in others)  # of the least recently used copy
        if idle < self.grace:
            self.on_refuse()
            return False
        return True

    def after_fill_noted(self, repo: CacheRepo) -> None:
        """Note that the copy ``repo`` exists."""
        if repo.partition and self._copies is not None:
            self._copies.setdefault(repo.url, set()).add(repo.key)

    def after_fill(self, repo: CacheRepo) -> None:
        """Note the copy and check its URL soon (only partitioned repos are checked)."""
        if not repo.partition:
            return
        self.after_fill_noted(repo)
        if self.max_per_repo > 0:
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
                if self._copies is not None:
                    self._copies.get(info.url, set()).discard(info.key)
        return evicted
