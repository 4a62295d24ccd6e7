"""git processes a goblet that died left running, with real processes.

The ``sh`` a goblet starts through its GitRunner (as git starts ``pack-objects``)
starts a ``sleep`` and waits; the goblet is SIGKILLed; its direct child dies with it
(parent-death signal), the ``sleep`` lives on with the dead goblet's mark. Start-up
recovery ends it and only what carries a dead owner's mark: not a child of a live
goblet, not a process without a mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from goblet.cache.orphans import end_orphans, orphans
from goblet.git.env import OWNER_VARIABLE
from goblet.git.runner import GitRunner, kill_and_reap

from tests.unit.cache.test_recovery import lifecycle_of

_GOBLET = """
import asyncio, sys, time
from pathlib import Path
from goblet.git.runner import GitRunner, kill_and_reap
async def main():
    proc = await GitRunner(home=Path(sys.argv[1]), git="/bin/sh").spawn(
        ["-c", "sleep 300 & echo $!; wait"])
    print((await proc.stdout.readline()).decode().strip(), flush=True)
    time.sleep(300)
asyncio.run(main())
"""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def started() -> Iterator[list[int | subprocess.Popen[bytes]]]:
    running: list[int | subprocess.Popen[bytes]] = []
    yield running
    for p in running:
        if isinstance(p, subprocess.Popen):
            p.kill()
            p.wait()
        elif alive(p):  # (an orphan the test did not end)
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


def left_by_a_killed_goblet(home: Path) -> int:
    """The pid of the grandchild a SIGKILLed goblet left running."""
    addon = Path(__file__).resolve().parents[3] / "addon"
    goblet = subprocess.Popen([sys.executable, "-c", _GOBLET, str(home)],
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(addon)})
    assert goblet.stdout is not None
    grandchild = int(goblet.stdout.readline())
    goblet.kill()
    goblet.wait()
    goblet.stdout.close()
    return grandchild


async def child_of_a_live_goblet(home: Path) -> tuple[asyncio.subprocess.Process, int]:
    proc = await GitRunner(home=home, git="/bin/sh").spawn(["-c", "sleep 300 & echo $!; wait"])
    assert proc.stdout is not None
    return proc, int((await proc.stdout.readline()).decode())


def test_start_up_ends_what_a_dead_goblet_left_running_and_nothing_else(
        tmp_path: Path, started: list[int | subprocess.Popen[bytes]]) -> None:
    life = lifecycle_of(tmp_path / "cache")
    home = life.store.root / "home"
    left = left_by_a_killed_goblet(home)
    started.append(left)
    reused_p = subprocess.Popen(["sleep", "300"], cwd=home, env={  # its owner's pid is
        "PATH": os.environ["PATH"], OWNER_VARIABLE: f"{os.getpid()}:1"})  # alive, started later
    unmarked_p = subprocess.Popen(["sleep", "300"], cwd=home)
    elsewhere_p = subprocess.Popen(["sleep", "300"], cwd=tmp_path, env={  # not in the cache
        "PATH": os.environ["PATH"], OWNER_VARIABLE: f"{os.getpid()}:1"})
    started.extend([reused_p, unmarked_p, elsewhere_p])
    reused, unmarked = reused_p.pid, unmarked_p.pid

    async def scenario() -> None:
        proc, live_child = await child_of_a_live_goblet(home)
        try:
            deadline = time.monotonic() + 10
            while alive(left) and left not in orphans(life.store.root):  # (parent's death settling)
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            report = await life.recover()
            assert report.orphans_ended == 2 and not alive(left) and not alive(reused)
            assert alive(unmarked) and alive(live_child) and alive(proc.pid)
            assert alive(elsewhere_p.pid) and orphans(life.store.root) == []
        finally:
            await kill_and_reap(proc)  # (its group: the sleep too)

    asyncio.run(scenario())
    assert end_orphans(life.store.root) == []
