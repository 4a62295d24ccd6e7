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
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    """One pending deadline per key (a connection id, a held body); ``close(key)`` runs
    when one passes.

    All deadlines share one loop timer, set for the earliest of them (a timer per
    request, armed and cancelled each time, costs more than the rest of this).
    Deadlines are kept in the order they pass: with one length for all, that is
    the order they were armed in; a length shortened since breaks it until the
    next sweep sorts them again.
    """

    def __init__(self, seconds: Callable[[], float], close: Callable[[K], None]) -> None:
        self._seconds = seconds
        self._close = close
        self._due: dict[K, float] = {}  # loop time each passes at, soonest first
        self._sorted = True
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def arm(self, key: K) -> None:
        """Start (or restart) the deadline of ``key``."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self._seconds()
        self._due.pop(key, None)
        if self._due and due < next(reversed(self._due.values())):
            self._sorted = False
        self._due[key] = due
        if self._timer is None or due < self._timer.when():
            self._wake(loop, due)

    def cancel(self, key: K) -> None:
        """``key`` is no longer owed (the connection sent its head, the body arrived, it
        is gone): the timer stays set (it finds nothing due when it fires)."""
        self._due.pop(key, None)

    def _wake(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        """Close every connection whose deadline passed; set the timer for the next."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self._sorted:
            self._due = dict(sorted(self._due.items(), key=lambda item: item[1]))
            self._sorted = True
        passed = []
        for key, due in self._due.items():
            if due > now:
                break
            passed.append(key)
        for key in passed:
            del self._due[key]
        if self._due:
            self._wake(loop, next(iter(self._due.values())))
        for key in passed:  # (each on its own, as separate timers were)
            loop.call_soon(self._close, key)
