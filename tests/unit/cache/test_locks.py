"""RepoLocks.writer: one writer per repo key, in this process and across processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from goblet.cache.locks import LockTimeout, RepoLocks


@pytest.mark.parametrize("timeout", [0, 0.01, 5])
def test_a_free_lock_is_taken_whatever_the_timeout(tmp_path: Path, timeout: float) -> None:
    async def take() -> bool:
        async with RepoLocks(tmp_path).writer("k" * 64, timeout=timeout):
            return True

    assert asyncio.run(take())


@pytest.mark.parametrize("timeout", [0, 0.05])
def test_a_held_lock_times_out(tmp_path: Path, timeout: float) -> None:
    async def scenario() -> None:
        here = RepoLocks(tmp_path, poll=0.01)
        async with here.writer("k" * 64):
            with pytest.raises(LockTimeout, match="busy"):  # same process: its asyncio lock
                async with here.writer("k" * 64, timeout=timeout):
                    pass
            with pytest.raises(LockTimeout, match="another process"):  # its own flock
                async with RepoLocks(tmp_path, poll=0.01).writer("k" * 64, timeout=timeout):
                    pass
            async with here.writer("j" * 64, timeout=0):  # other keys are free
                pass

    asyncio.run(scenario())


def test_a_waiting_writer_gets_the_lock_once_it_is_released(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        locks, order = RepoLocks(tmp_path, poll=0.01), []

        async def writer(name: str, hold: float) -> None:
            async with locks.writer("k" * 64, timeout=5):
                order.append(f"{name} in")
                await asyncio.sleep(hold)
                order.append(f"{name} out")

        await asyncio.gather(writer("first", 0.1), writer("second", 0))
        return order

    assert asyncio.run(scenario()) == ["first in", "first out", "second in", "second out"]


def test_held_elsewhere_tells_only_a_lock_another_process_holds(tmp_path: Path) -> None:
    key = "k" * 64

    async def scenario() -> None:
        here, there = RepoLocks(tmp_path), RepoLocks(tmp_path)  # there: as another process
        assert not here.held_elsewhere(key)  # never held (no lock file yet)
        async with there.writer(key):
            assert here.held_elsewhere(key)
            assert not here.held_elsewhere("j" * 64)
        assert not here.held_elsewhere(key)
        async with here.writer(key):
            assert not here.held_elsewhere(key)  # this process's own: its fills are known
        async with there.writer(key, timeout=0):  # the probes left nothing held
            pass

    asyncio.run(scenario())
