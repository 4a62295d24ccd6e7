"""Which upstream hosts goblet itself recently failed to reach, and since when.

Only goblet's *own* attempts count (the requests its forwarder sends, see
``offline/forward.py``): a network error, a TLS failure or a timeout. Nothing
a client does — a request it abandons half-sent, a flow that ends without an
answer, a request that makes the upstream answer 5xx — marks a host
unreachable, so no client can fake an outage. A 5xx answer is an answer to
*that* request only (whose bytes the client chose) and is never recorded here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outage:
    """The current outage of one host: when it began and when it was last confirmed."""

    since: float
    last_failure: float


class UpstreamState:
    """Per ``host[:port]``: the outage goblet's own attempts observed, if any."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._down: dict[str, Outage] = {}

    def unreachable(self, host: str) -> None:
        """Record that goblet's own attempt to reach ``host`` failed at the network level."""
        now = self._clock()
        previous = self._down.get(host)
        self._down[host] = Outage(previous.since if previous else now, now)

    def reachable(self, host: str) -> None:
        """Record that ``host`` answered one of goblet's own requests (any status)."""
        self._down.pop(host, None)

    def down_since(self, host: str, within: float) -> float | None:
        """When the current outage of ``host`` began, if a failure of goblet's own
        was observed less than ``within`` seconds ago; else None."""
        outage = self._down.get(host)
        if outage is None or self._clock() - outage.last_failure >= within:
            return None
        return outage.since
