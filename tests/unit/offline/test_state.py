"""UpstreamState: only goblet's own recent network failures make a host "down"."""

from __future__ import annotations

from goblet.offline.state import UpstreamState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_starts_at_the_first_failure_and_lasts_while_confirmed() -> None:
    clock = Clock()
    s = UpstreamState(clock)
    assert s.down_since("h", 10) is None
    s.unreachable("h")
    clock.now += 5
    s.unreachable("h")
    assert s.down_since("h", 10) == 1000.0
    clock.now += 9.9
    assert s.down_since("h", 10) == 1000.0
    clock.now += 0.2  # no failure of our own for 10 s: not known to be down any more
    assert s.down_since("h", 10) is None
    assert s.down_since("other", 10) is None


def test_any_answer_ends_the_outage() -> None:
    clock = Clock()
    s = UpstreamState(clock)
    s.unreachable("h")
    s.reachable("h")
    assert s.down_since("h", 10) is None
    s.unreachable("h")
    assert s.down_since("h", 10) == clock.now
