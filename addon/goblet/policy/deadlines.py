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
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    """One pending deadline per key (a connection id, a held body); ``close(key)`` runs
    when one passes.

    All deadlines share one loop timer, set for the earliest of them (a timer per
    request, armed and cancelled each time, costs more than the rest of this).
    Deadlines of one length pass in the order they were armed, so each length has a
    queue in that order (a length changed at run time starts a queue of its own);
    a sweep looks at the head of each.
    """

    def __init__(self, seconds: Callable[[], float], close: Callable[[K], None]) -> None:
        self._seconds = seconds
        self._close = close
        self._queues: dict[float, OrderedDict[K, float]] = {}  # length -> key -> due
        self._length_of: dict[K, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._length_of)

    def arm(self, key: K) -> None:
        """Start (or restart) the deadline of ``key``."""
        self.cancel(key)
        loop, length = asyncio.get_running_loop(), self._seconds()
        queue = self._queues.get(length)
        if queue is None:
            queue = self._queues[length] = OrderedDict()
        due = queue[key] = loop.time() + length
        self._length_of[key] = length
        if self._loop is not loop:  # (a new loop: the old one's timer never fires)
            self._wake(loop, min(due, self._soonest() or due))
        elif self._timer is None or due < self._timer.when():
            self._wake(loop, due)

    def cancel(self, key: K) -> None:
        """``key`` is no longer owed (the connection sent its head, the body arrived, it
        is gone): the timer stays set (it finds nothing due when it fires)."""
        length = self._length_of.pop(key, None)
        if length is not None:
            del self._queues[length][key]

    def _soonest(self) -> float | None:
        return min((next(iter(q.values())) for q in self._queues.values()), default=None)

    def _wake(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._loop = loop.call_at(when, self._sweep), loop

    def _sweep(self) -> None:
        """Close every key whose deadline passed; set the timer for the next."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now, passed = loop.time(), []
        for length, queue in list(self._queues.items()):
            while queue:
                key, due = next(iter(queue.items()))
                if due > now:
                    break
                queue.popitem(last=False)
                del self._length_of[key]
                passed.append(key)
            if not queue:
                del self._queues[length]
        if (soonest := self._soonest()) is not None:
            self._wake(loop, soonest)
        for key in passed:  # (each on its own, as separate timers were)
            if key in self._length_of:
                continue  # armed again meanwhile (by an earlier close): owed anew
            try:
                self._close(key)
            except Exception as e:  # noqa: BLE001 (reported as a failed timer callback would be)
                loop.call_exception_handler({"message": "closing at a deadline failed",
                                             "exception": e})
