"""Whether the fleet's shared parts (``store``, ``redis``) work: a metric for every
operation done without one, one log line when it goes away and one when it is back.

A part seen failing is ``down``: operations skip it (``usable`` is False) instead of
each paying its timeout, except one every ``PROBE_EVERY`` seconds, which tries it
again. The first operation that works marks it back (``healthy``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from goblet.observe.metrics import Metrics

log = logging.getLogger(__name__)

PROBE_EVERY = 10.0  # seconds between tries of a part that is down


class PartHealth:
    """The parts seen failing (``down``), counted in ``goblet_fleet_degraded_total``."""

    def __init__(self, metrics: Metrics, *, probe_every: float = PROBE_EVERY) -> None:
        self.metrics = metrics
        self.probe_every = probe_every
        self.down: set[str] = set()
        self._probe_at: dict[str, float] = {}

    def usable(self, part: str) -> bool:
        """Whether an operation may use ``part`` now: it is not down, or it is and a try
        is due (then this operation is that try: until the next is due, or ``part``
        works again, others get False). An operation told False goes on without the
        part and says so with ``skipped``."""
        if part not in self.down:
            return True
        now = time.monotonic()
        if now < self._probe_at.get(part, 0.0):
            return False
        self._probe_at[part] = now + self.probe_every
        return True

    def skipped(self, part: str) -> None:
        """An operation went on without ``part``, which is down (``usable`` said so)."""
        self.metrics.fleet_degraded.labels(part).inc()

    def degraded(self, part: str, reason: str) -> None:
        """An operation went on without ``part`` (it failed with ``reason``, one safe line):
        ``part`` is down, tried again in ``probe_every`` seconds."""
        self.metrics.fleet_degraded.labels(part).inc()
        self._probe_at[part] = time.monotonic() + self.probe_every
        if part not in self.down:
            self.down.add(part)
            log.warning("fleet %s unavailable, filling alone: %s", part, reason)

    def healthy(self, part: str) -> None:
        """``part`` just worked."""
        if part in self.down:
            self.down.discard(part)
            log.info("fleet %s available again", part)
