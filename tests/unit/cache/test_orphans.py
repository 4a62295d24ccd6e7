"""Git processes a killed goblet left working in its cache dir, with real processes.

A ``git`` started by a git child of goblet gets no parent-death signal: once that
child (its session leader) is gone, it is an orphan working in the cache. Start-up
recovery ends exactly those: not a git whose session leader lives (another goblet's
child), not another program, not a git working elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from goblet.cache.orphans import end_orphans, orphans

from tests.unit.cache.test_recovery import lifecycle_of


def orphan(program: Path, cwd: Path) -> int:
    """``program 300`` started in ``cwd`` by a session leader that is gone by now."""
    out = subprocess.run(["setsid", "sh", "-c", f'"{program}" 300 >/dev/null 2>&1 & echo $!'],
                         cwd=cwd, capture_output=True, text=True, check=True).stdout
    return int(out)


def leader(program: Path, cwd: Path) -> int:
    """``program 300`` in ``cwd``, leading its own (live) session."""
    return subprocess.Popen(["setsid", str(program), "300"], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def started() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_start_up_ends_only_git_orphans_working_in_the_cache(
        tmp_path: Path, started: list[int]) -> None:
    if shutil.which("setsid") is None:
        pytest.skip("no setsid here")
    life = lifecycle_of(tmp_path / "cache")
    repo = life.store.repos_dir / ("a" * 64 + ".git")
    repo.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sleep = shutil.which("sleep")
    assert sleep is not None
    git_named = tmp_path / "git-pack-worker"  # (its command name starts with "git")
    shutil.copy(sleep, git_named)
    left = orphan(git_named, repo)
    started.extend([left, orphan(git_named, elsewhere), orphan(Path(sleep), repo),
                    leader(git_named, repo)])
    deadline = time.monotonic() + 10
    while not all(alive(p) for p in started):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert orphans(life.store.root) == [left]
    report = asyncio.run(life.recover())
    assert report.orphans_ended == 1 and not alive(left)
    assert all(alive(p) for p in started[1:])
    assert end_orphans(life.store.root) == []
