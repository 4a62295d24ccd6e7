"""The cache's life cycle: recovery at start-up, upkeep after fills and on a timer.

At start-up, before serving: half-created repos whose creator is gone (its
claim, an ``flock``, is no longer held) are deleted from ``tmp/``; every repo
whose writer lock is free loses its crash residue (stale locks, ``.keep``
files, temporary packs), and a repo that had residue is checked with ``git
fsck`` — if that fails it is moved to ``quarantine/`` and will be filled again
on its next request.

After each fill: a maintenance check for that repo and a budget check.
Every ``every`` seconds: a budget check, a sweep of ``tmp/`` and a scan for
due full repacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from goblet.cache.evict import Evictor
from goblet.cache.locks import LockTimeout, RepoLocks
from goblet.cache.maintenance import Maintainer
from goblet.cache.orphans import end_orphans
from goblet.cache.recovery import clean_residue, remove_tree, sweep_abandoned
from goblet.cache.store import CacheRepo, RepoInfo, RepoStore
from goblet.git.runner import GitRunner, GitTimeout

log = logging.getLogger(__name__)

QUARANTINE_KEEP = 86400.0
# The readiness check's write probes in tmp/ (observe.health): created and deleted
# at once, by any instance sharing the cache dir. A sweep spares them for a minute.
PROBE_PREFIX = ".ready-"
PROBE_KEEP = 60.0


@dataclass(slots=True)
class RecoveryReport:
    """What start-up recovery did."""

    orphans_ended: int = 0  # git processes a killed goblet left working (``orphans.py``)
    temp_removed: int = 0
    repos_cleaned: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)


def _fresh_probe(tmp_dir: Path, name: str) -> bool:
    """Whether ``name`` is a readiness probe that may still be in use."""
    if not name.startswith(PROBE_PREFIX):
        return False
    try:
        return time.time() - (tmp_dir / name).lstat().st_mtime < PROBE_KEEP
    except OSError:
        return True  # gone already: nothing to sweep


async def fsck_error(git: GitRunner, path: Path) -> str | None:
    """None if ``git fsck`` finds the repo at ``path`` sound, else its most telling line.

    Start-up recovery and ``goblet cache verify`` both judge a repo by this.
    """
    try:
        res = await git.run(["fsck", "--no-dangling", "--no-progress"], git_dir=path,
                            timeout=3600)
    except GitTimeout as e:
        return str(e)
    return None if res.ok else res.stderr_line()


class Lifecycle:
    """Owns recovery, maintenance scheduling and budget enforcement."""

    def __init__(self, store: RepoStore, locks: RepoLocks, git: GitRunner, evictor: Evictor,
                 maintainer: Maintainer, *, every: float = 60.0, maintenance: bool = True
                 ) -> None:
        self.maintenance = maintenance
        self.store = store
        self.locks = locks
        self.git = git
        self.evictor = evictor
        self.maintainer = maintainer
        self.every = every
        self._budget_task: asyncio.Task[object] | None = None

    async def end_orphans(self, *, wait: float) -> int:
        """End the git processes a goblet that died left running in the cache dir
        (``orphans.py``); how many. A failure is logged: start-up and the periodic loop
        go on whatever ``/proc`` holds."""
        try:
            return len(await asyncio.to_thread(end_orphans, self.store.root, wait=wait))
        except (OSError, ValueError) as e:
            log.warning("looking for git processes left running failed: %s", e)
            return 0

    async def recover(self) -> RecoveryReport:
        """End the git processes a killed goblet left working, clean what crashed writers
        left; quarantine repos fsck rejects."""
        report = RecoveryReport()
        report.orphans_ended = await self.end_orphans(wait=2.0)
        report.temp_removed = len(await asyncio.to_thread(self.sweep_tmp))
        for info in await asyncio.to_thread(self.store.list_repos):
            try:
                async with self.locks.writer(info.key, timeout=0.2):
                    removed = await asyncio.to_thread(clean_residue, info.path)
                    if not removed:
                        continue
                    report.repos_cleaned.append(info.key)
                    error = await fsck_error(self.git, info.path)
                    if error is not None:
                        log.warning("fsck of %s failed: %s", info.url or info.key[:12], error)
                        self.quarantine(info)
                        report.quarantined.append(info.key)
            except LockTimeout:
                continue  # another instance is writing it: its residue is not residue
        self._purge_quarantine()
        await self.evictor.purge_trash()
        if report.temp_removed or report.repos_cleaned:
            log.info("recovered cache: %d temporary repo(s) removed, %d repo(s) cleaned, "
                     "%d quarantined", report.temp_removed, len(report.repos_cleaned),
                     len(report.quarantined))
        return report

    def sweep_tmp(self) -> list[str]:
        """Delete what dead writers left in ``tmp/``; the names of the repos removed (blocking)."""
        tmp_dir = self.store.tmp_dir
        return sweep_abandoned(tmp_dir, keep=lambda name: _fresh_probe(tmp_dir, name))

    def quarantine(self, info: RepoInfo) -> None:
        """Move a damaged repo aside (call under its writer lock)."""
        target = self.store.quarantine_dir / f"{info.key}.{time.time_ns()}"
        info.path.rename(target)
        log.warning("quarantined %s (fsck failed); it is filled again on its next request",
                    info.url or info.key[:12])

    def _purge_quarantine(self) -> None:
        now = time.time()
        try:
            entries = list(self.store.quarantine_dir.iterdir())
        except OSError:
            return
        for entry in entries:
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > QUARANTINE_KEEP:
                    remove_tree(entry)

    def after_fill(self, repo: CacheRepo) -> None:
        """Schedule a maintenance check of ``repo`` (if maintenance is on) and a budget check.

        A new repo is due for a full repack at once, so it gets its bitmap and
        commit-graph right after its first fill.
        """
        if self.maintenance:
            self.maintainer.after_fill(repo)
        self.check_budget()

    def check_budget(self) -> None:
        """Run one budget pass soon (coalesces with a pass already waiting)."""
        if self._budget_task is None or self._budget_task.done():
            self._budget_task = asyncio.get_running_loop().create_task(self.evictor.enforce())

    async def run(self) -> None:
        """The periodic loop: budget, trash, abandoned temporary repos, due full repacks.

        Runs until cancelled. The sweep of ``tmp/`` removes what an instance
        sharing the cache dir left when it died while this one runs, once the git
        processes it left running are ended (``orphans.py``).
        """
        while True:
            await asyncio.sleep(self.every)
            await self.evictor.enforce()
            await self.end_orphans(wait=0.5)
            await asyncio.to_thread(self.sweep_tmp)
            if not self.maintenance:
                continue
            for info in await asyncio.to_thread(self.store.list_repos):
                repo = CacheRepo(info.url, info.key, info.path)
                if self.maintainer.full_due(repo):
                    self.maintainer.after_fill(repo)
