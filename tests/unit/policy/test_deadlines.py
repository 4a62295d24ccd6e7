"""Per-connection deadlines: armed, restarted, cancelled, and closing when they pass."""

from __future__ import annotations

import asyncio

from goblet.policy.deadlines import Deadlines


def test_a_deadline_that_passes_closes_its_connection_only() -> None:
    closed: list[str] = []

    async def scenario() -> None:
        d = Deadlines(lambda: 0.05, closed.append)
        d.arm("slow")
        d.arm("quick")
        d.arm("gone")
        d.cancel("quick")
        d.cancel("gone")
        d.arm("restarted")
        await asyncio.sleep(0.03)
        d.arm("restarted")  # a new head is owed: the clock starts again
        await asyncio.sleep(0.04)
        assert closed == ["slow"]
        await asyncio.sleep(0.05)
        assert closed == ["slow", "restarted"] and len(d) == 0

    asyncio.run(scenario())


def test_a_shortened_length_applies_to_deadlines_armed_after_it() -> None:
    closed: list[str] = []
    seconds = [0.5]

    async def scenario() -> None:
        d = Deadlines(lambda: seconds[0], closed.append)
        d.arm("armed-before")
        seconds[0] = 0.03
        d.arm("armed-after")
        d.arm("cancelled")
        d.cancel("cancelled")
        await asyncio.sleep(0.1)
        assert closed == ["armed-after"] and len(d) == 1
        d.cancel("armed-before")
        d.arm("again")
        await asyncio.sleep(0.1)
        assert closed == ["armed-after", "again"] and len(d) == 0

    asyncio.run(scenario())


def test_one_timer_serves_every_deadline() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        d = Deadlines(lambda: 60.0, lambda key: None)
        for i in range(100):
            d.arm(f"c{i}")
            d.arm(f"c{i}")
            d.cancel(f"c{i}")
            d.arm(f"c{i}")
        timers = [t for t in loop._scheduled if not t.cancelled()]  # type: ignore[attr-defined]
        assert len(timers) == 1 and len(d) == 100

    asyncio.run(scenario())


def test_deadlines_of_an_old_length_are_not_visited_by_each_sweep() -> None:
    """A length shortened at run time (say, during a slowloris attack) starts a queue of its
    own: sweeps for the short deadlines do not go through the old ones (counted by how
    often keys are hashed: re-sorting or re-building the pending set would hash them all)."""
    hashed = [0]

    class Key:
        def __init__(self, name: str) -> None:
            self.name = name

        def __hash__(self) -> int:
            hashed[0] += 1
            return hash(self.name)

    closed: list[str] = []
    seconds = [30.0]

    async def scenario() -> None:
        d: Deadlines[Key] = Deadlines(lambda: seconds[0], lambda key: closed.append(key.name))
        for i in range(5000):
            d.arm(Key(f"old{i}"))
        seconds[0] = 0.01
        before = hashed[0]
        for i in range(20):
            d.arm(Key(f"new{i}"))
            await asyncio.sleep(0.012)
        assert sorted(closed) == sorted(f"new{i}" for i in range(20))
        assert len(d) == 5000 and hashed[0] - before < 20 * 15  # (a handful per new key)

    asyncio.run(scenario())


def test_a_failing_close_leaves_the_others_and_a_new_loop_is_followed() -> None:
    closed: list[str] = []
    reported: list[object] = []

    def close(key: str) -> None:
        if key == "bad":
            raise RuntimeError("boom")
        closed.append(key)

    d = Deadlines(lambda: 0.02, close)

    async def first() -> None:
        d.arm("pending")  # still pending when this loop ends: its timer never fires
        await asyncio.sleep(0.001)

    async def second() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: reported.append(context["exception"]))
        d.arm("bad")
        d.arm("good")
        await asyncio.sleep(0.06)

    asyncio.run(first())
    asyncio.run(second())
    assert closed == ["pending", "good"] and len(d) == 0
    assert len(reported) == 1 and isinstance(reported[0], RuntimeError)
