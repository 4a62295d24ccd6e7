"""The store's own threads: at most ``size`` calls at once, the next refused at once
rather than queued, and a call counted until its thread returns."""

from __future__ import annotations

import asyncio
import threading

import pytest
from goblet.fleet.store import StoreError
from goblet.fleet.threads import StoreBusy, StoreThreads


def test_calls_beyond_the_pool_are_refused_not_queued() -> None:
    gate = threading.Event()

    async def main() -> None:
        threads = StoreThreads(2)
        held = [asyncio.ensure_future(threads.run(gate.wait, 30)) for _ in range(2)]
        while threads.busy < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(StoreBusy, match="all 2 store threads"):
            await asyncio.wait_for(threads.run(lambda: 1), 10)
        # the default executor is another pool: still free
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 10) == "free"
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(*held), 10) == [True, True]
        assert threads.busy == 0
        assert await asyncio.wait_for(threads.run(lambda x, *, y: x + y, 1, y=2), 10) == 3
        threads.close()
        with pytest.raises(StoreError):
            await threads.run(lambda: 1)
        assert threads.busy == 0
    asyncio.run(main())


def test_a_call_given_up_on_holds_its_thread_until_it_returns() -> None:
    gate = threading.Event()

    async def main() -> None:
        threads = StoreThreads(1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(threads.run(gate.wait, 30), 0.2)
        assert threads.busy == 1  # the blocking call still runs
        with pytest.raises(StoreBusy):
            await threads.run(lambda: 1)
        gate.set()
        while threads.busy:
            await asyncio.sleep(0.01)
        assert await asyncio.wait_for(threads.run(lambda: 1), 10) == 1
        threads.close()
    asyncio.run(main())


def test_a_call_that_raises_frees_its_thread() -> None:
    def fail() -> None:
        raise StoreError("object store answered InternalError")

    async def main() -> None:
        threads = StoreThreads(1)
        for _ in range(3):
            with pytest.raises(StoreError, match="InternalError"):
                await asyncio.wait_for(threads.run(fail), 10)
        assert threads.busy == 0
        threads.close()
    asyncio.run(main())
