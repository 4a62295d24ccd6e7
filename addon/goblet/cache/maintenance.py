"""Repo maintenance: keep packs few, bitmaps fresh and deleted objects gone.

After a fill, when a repo has more than ``max_packs`` packs or more than
``max_loose`` loose objects, a *geometric* repack merges the small packs
(``git repack -d --geometric=2 --write-midx --write-bitmap-index``); a
*full* repack (``-a -d``: one pack, unreachable objects — those upstream
deleted — dropped) runs when the last one is older than ``full_every``.
Both are followed by ``commit-graph write --reachable --split`` and
``pack-refs --all``. They run under the repo's writer lock (fills wait,
readers never do: git replaces packs atomically), one at a time per
instance, with ``pack.threads`` and ``pack.windowMemory`` bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from goblet.cache.locks import LockTimeout, RepoLocks
from goblet.cache.store import CacheRepo, RepoStore
from goblet.git.runner import GitRunner, GitTimeout

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Policy:
    """When and how hard to repack."""

    max_packs: int = 8
    max_loose: int = 1000
    full_every: float = 7 * 86400.0
    threads: int = 1
    window_memory: str = "256m"
    timeout: float = 3600.0


@dataclass(frozen=True, slots=True)
class ObjectCounts:
    """What ``git count-objects -v`` says about a repo."""

    loose: int
    packs: int


def parse_count_objects(text: str) -> ObjectCounts:
    """Parse ``git count-objects -v`` output (pure)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if value.strip().isdigit():
            values[name.strip()] = int(value.strip())
    return ObjectCounts(values.get("count", 0), values.get("packs", 0))


class Maintainer:
    """Runs repacks after fills and on schedule, one repo at a time."""

    def __init__(
        self,
        store: RepoStore,
        locks: RepoLocks,
        git: GitRunner,
        policy: Policy | None = None,
        on_done: Callable[[str, str, float], None] = lambda kind, result, seconds: None,
    ) -> None:
        self.store = store
        self.locks = locks
        self.git = git
        self.policy = policy or Policy()
        self.on_done = on_done
        self._one = asyncio.Semaphore(1)
        self._pending: dict[str, asyncio.Task[str | None]] = {}

    def after_fill(self, repo: CacheRepo) -> None:
        """Check ``repo`` soon (at most one pending check per repo)."""
        task = self._pending.get(repo.key)
        if task is not None and not task.done():
            return
        task = asyncio.get_running_loop().create_task(self.maybe_repack(repo))
        self._pending[repo.key] = task
        task.add_done_callback(lambda t: self._pending.pop(repo.key, None))

    async def counts(self, repo: CacheRepo) -> ObjectCounts | None:
        """Loose objects and packs of ``repo`` (None if git cannot tell)."""
        res = await self.git.run(["count-objects", "-v"], git_dir=repo.path, timeout=60)
        return parse_count_objects(res.stdout.decode("ascii", "replace")) if res.ok else None

    def full_due(self, repo: CacheRepo) -> bool:
        """Whether the last full repack is older than ``full_every``."""
        state = self.store.state(repo)
        return state is not None and time.time() - state.full_repack_at >= self.policy.full_every

    async def maybe_repack(self, repo: CacheRepo) -> str | None:
        """Repack ``repo`` if a threshold is crossed; returns the kind run, if any."""
        if not self.store.exists(repo):
            return None
        if self.full_due(repo):
            return await self.repack(repo, full=True)
        counts = await self.counts(repo)
        if counts and (counts.packs > self.policy.max_packs
                       or counts.loose > self.policy.max_loose):
            return await self.repack(repo, full=False)
        return None

    async def repack(self, repo: CacheRepo, *, full: bool, lock_timeout: float = 60.0) -> str:
        """Run one repack now (waiting for the instance's turn); returns its kind."""
        kind = "full" if full else "geometric"
        started = time.monotonic()
        result = "error"
        async with self._one:
            try:
                async with self.locks.writer(repo.key, timeout=lock_timeout):
                    if not self.store.exists(repo):
                        result = "skipped"
                        return kind
                    result = "ok" if await self._run(repo, full) else "error"
                    if result == "ok" and full:
                        self.store.mark_full_repack(repo, *await self.store.read_refs(repo.path))
            except LockTimeout:
                result = "skipped"
            except (OSError, GitTimeout) as e:
                log.warning("%s repack of %s failed: %s", kind, repo.url, e)
            finally:
                seconds = time.monotonic() - started
                self.on_done(kind, result, seconds)
                log.info("%s repack of %s: %s in %.2fs", kind, repo.url, result, seconds)
        return kind

    async def _run(self, repo: CacheRepo, full: bool) -> bool:
        config = [("pack.threads", str(self.policy.threads)),
                  ("pack.windowMemory", self.policy.window_memory),
                  ("repack.writeBitmaps", "true")]
        repack = (["repack", "-a", "-d"] if full else ["repack", "-d", "--geometric=2"])
        for args in (
            [*repack, "--write-midx", "--write-bitmap-index", "--quiet"],
            ["commit-graph", "write", "--reachable", "--split", "--no-progress"],
            ["pack-refs", "--all"],
        ):
            res = await self.git.run(args, git_dir=repo.path, config=config,
                                     timeout=self.policy.timeout)
            if not res.ok:
                log.warning("git %s in %s: %s", args[0], repo.url, res.stderr_line())
                return False
        return True
