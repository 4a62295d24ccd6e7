"""Deadlines for clients that send too slowly (slowloris), by connection.

mitmproxy closes a connection only after 10 minutes without a byte, and a
client that trickles one byte at a time never reaches that. goblet gives each
client connection a deadline while it owes a request head — from the moment
it connects, from its ``CONNECT`` (the tunnel's first request), and after
each answer (the next request on a kept-alive connection) — and closes the
connection if no head arrived when it passes. Bodies goblet reads have their
own deadline (``goblet_request_body_timeout``, the same length). Connections
relayed as opaque TLS owe goblet nothing and have no deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadlines:
    """One pending deadline per connection id; ``close(id)`` runs when one passes."""

    def __init__(self, seconds: Callable[[], float], close: Callable[[str], None]) -> None:
        self._seconds = seconds
        self._close = close
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._timers)

    def arm(self, key: str) -> None:
        """Start (or restart) the deadline of connection ``key``."""
        self.cancel(key)
        self._timers[key] = asyncio.get_running_loop().call_later(
            self._seconds(), self._passed, key)

    def cancel(self, key: str) -> None:
        """Connection ``key`` sent what it owed (or is gone)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _passed(self, key: str) -> None:
        self._timers.pop(key, None)
        self._close(key)
