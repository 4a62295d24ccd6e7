"""Which upstream hosts are unreachable, and since when."""

from __future__ import annotations

import time
from collections.abc import Callable


class UpstreamState:
    """Per ``host:port``: the wall-clock time it was first seen failing, or nothing.

    A host is marked down by a network error, a timeout or a 5xx answer and
    up again by any other answer; 401/403/404 are answers, never outages.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._down: dict[str, float] = {}

    def mark_down(self, host: str) -> None:
        """Record a failure (keeps the first failure time of an outage)."""
        self._down.setdefault(host, self._clock())

    def mark_up(self, host: str) -> None:
        """Record a working answer."""
        self._down.pop(host, None)

    def down_since(self, host: str) -> float | None:
        """When the current outage of ``host`` began, or None if it is up."""
        return self._down.get(host)
