"""Where goblet's CPU work on request and answer bodies runs.

Parsing a large body on the event loop would stall every other connection, so
it runs in a worker thread. A hop to a worker thread is not free either: a
future, a wake-up of the worker, a wake-up of the loop, and the GIL changing
hands twice — it cost more than parsing the few hundred bytes of a typical
``ls-refs`` request or the few kilobytes of a typical ref answer. So work on
small inputs runs inline, larger inputs go to the executor. The bounds keep the
loop's worst inline stall near half a millisecond: a client's request body is
parsed at worst at about 0.65 ms per KiB (a body of empty pkt-lines, measured),
an ordinary ref answer at about 0.04 ms per KiB (only the upstream a repo was
configured for could send a costlier one).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from concurrent.futures import Executor
from typing import ParamSpec, TypeVar

INLINE_REQUEST_BYTES = 1024  # a client's request body (hostile input)
INLINE_ANSWER_BYTES = 8 * 1024  # an upstream's ref answer
# How long a thread holding the GIL keeps it while another waits (CPython: 5 ms). The
# event loop gives the GIL up at every poll and takes it back after: while worker
# threads parse (a ref answer of a repo with 150,000 refs takes them over a second), each
# turn of the loop waited up to 5 ms for it, so the loop managed a couple of hundred
# turns a second, and a client's small request waited seconds behind other clients'
# body chunks. Measured with six such answers in flight: /healthz waited up to 7 s at
# 5 ms, at most 0.4 s at 1 ms. Threads that do not contend are not affected.
SWITCH_INTERVAL = 0.001

P = ParamSpec("P")
T = TypeVar("T")


async def run_sized(executor: Executor, size: int, limit: int, fn: Callable[P, T],
                    *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)``: inline if ``size`` (bytes of input) is at most ``limit``,
    else in ``executor``. Exceptions propagate either way."""
    if size <= limit:
        return fn(*args, **kwargs)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, lambda: fn(*args, **kwargs))


def favour_the_event_loop() -> None:
    """Make the GIL change hands every ``SWITCH_INTERVAL`` seconds (process-wide: goblet
    runs inside mitmdump, whose event loop is the one that serves every client)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
