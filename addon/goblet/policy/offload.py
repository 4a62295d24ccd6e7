"""Where goblet's CPU work on request and answer bodies runs.

Parsing a large body on the event loop would stall every other connection, so
it runs in a worker thread. A hop to a worker thread is not free either: a
future, a wake-up of the worker, a wake-up of the loop, and the GIL changing
hands twice — tens of microseconds, more than parsing the few hundred bytes of
a typical ``ls-refs`` request or the few kilobytes of a typical ref answer. So
work on at most ``INLINE_BYTES`` of input runs inline; anything larger goes to
the executor. The bound keeps the loop's worst inline stall to well under a
millisecond (pkt-line parsing runs at tens of MB/s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import ParamSpec, TypeVar

INLINE_BYTES = 16 * 1024

P = ParamSpec("P")
T = TypeVar("T")


async def run_sized(executor: Executor, size: int, fn: Callable[P, T],
                    *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)``: inline if ``size`` (bytes of input) is at most
    ``INLINE_BYTES``, else in ``executor``. Exceptions propagate either way."""
    if size <= INLINE_BYTES:
        return fn(*args, **kwargs)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, lambda: fn(*args, **kwargs))
