"""run_sized: small work inline on the event loop, large work in the executor."""

from __future__ import annotations

import asyncio
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from goblet.policy import offload
from goblet.policy.offload import run_sized

LIMIT = 1024


def where(tag: str, *, fail: bool = False) -> tuple[str, str]:
    if fail:
        raise ValueError(tag)
    return tag, threading.current_thread().name


def test_small_work_runs_inline_and_large_work_in_the_executor() -> None:
    async def main() -> list[tuple[str, str]]:
        with ThreadPoolExecutor(1, thread_name_prefix="worker") as pool:
            return [await run_sized(pool, LIMIT, LIMIT, where, "small"),
                    await run_sized(pool, LIMIT + 1, LIMIT, where, tag="large")]

    small, large = asyncio.run(main())
    assert small == ("small", threading.current_thread().name)
    assert large[0] == "large" and large[1].startswith("worker")


@pytest.mark.parametrize("size", [0, LIMIT + 1])
def test_exceptions_reach_the_caller_either_way(size: int) -> None:
    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            await run_sized(pool, size, LIMIT, where, "x", fail=True)

    with pytest.raises(ValueError, match="x"):
        asyncio.run(main())


def test_the_gil_changes_hands_often_enough_for_the_event_loop() -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)  # CPython's default
        offload.favour_the_event_loop()
        assert offload.SWITCH_INTERVAL <= 0.001
        assert sys.getswitchinterval() == pytest.approx(offload.SWITCH_INTERVAL)
    finally:
        sys.setswitchinterval(before)
