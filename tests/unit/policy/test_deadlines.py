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
