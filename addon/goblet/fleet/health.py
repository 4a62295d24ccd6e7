"""Whether the fleet's shared parts (``store``, ``redis``) work: a metric for every
operation done without one, one log line when it goes away and one when it is back."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from goblet.observe.metrics import Metrics

log = logging.getLogger(__name__)


class PartHealth:
    """The parts seen failing (``down``), counted in ``goblet_fleet_degraded_total``."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.down: set[str] = set()

    def degraded(self, part: str, reason: str) -> None:
        """An operation went on without ``part`` (it failed with ``reason``, one safe line)."""
        self.metrics.fleet_degraded.labels(part).inc()
        if part not in self.down:
            self.down.add(part)
            log.warning("fleet %s unavailable, filling alone: %s", part, reason)

    def healthy(self, part: str) -> None:
        """``part`` just worked."""
        if part in self.down:
            self.down.discard(part)
            log.info("fleet %s available again", part)
