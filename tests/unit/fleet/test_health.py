"""The fleet parts' health: a part that failed is left alone, tried again once per
``probe_every``, and back as soon as an operation with it works."""

from __future__ import annotations

import types

import pytest
from goblet.fleet import health
from goblet.fleet.health import PartHealth
from goblet.observe.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(health, "time", types.SimpleNamespace(monotonic=c.monotonic))
    return c


def degraded(h: PartHealth, part: str) -> float:
    return float(h.metrics.fleet_degraded.labels(part)._value.get())


def test_a_down_part_is_tried_once_per_probe_interval(clock: Clock) -> None:
    h = PartHealth(Metrics(), probe_every=10.0)
    assert h.usable("redis") and h.usable("redis")
    h.degraded("redis", "redis unavailable: TimeoutError")
    assert h.down == {"redis"} and degraded(h, "redis") == 1
    assert not h.usable("redis")
    h.skipped("redis")
    assert degraded(h, "redis") == 2
    assert h.usable("store")  # the other part is unaffected
    clock.now += 9.9
    assert not h.usable("redis")
    clock.now += 0.2
    assert h.usable("redis")  # this caller probes...
    assert not h.usable("redis")  # ...and no other until the next is due
    h.degraded("redis", "redis unavailable: TimeoutError")  # the probe failed
    clock.now += 5
    assert not h.usable("redis")
    clock.now += 5.1
    assert h.usable("redis")
    h.healthy("redis")  # the probe worked
    assert h.down == set()
    assert h.usable("redis") and h.usable("redis")


def test_an_unanswered_probe_does_not_block_the_next(clock: Clock) -> None:
    h = PartHealth(Metrics(), probe_every=10.0)
    h.degraded("store", "object store unreachable")
    clock.now += 10.1
    assert h.usable("store")  # a probe that never reports back (cancelled, say)
    clock.now += 10.1
    assert h.usable("store")
