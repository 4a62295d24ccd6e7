"""The fleet tier's own threads for the object store's blocking calls.

boto3 blocks, so every store call runs in a thread. Not in asyncio's default
executor: the serving path uses that one too (pack-cache writes and replays,
walks over large bodies), and a store that accepts connections but never answers
would hold all its threads and stall clones that have nothing to do with the
store. ``StoreThreads`` is a pool of its own with a fixed number of threads, and
a call that finds none free is not queued behind the hung ones: it fails at once
with ``StoreBusy`` and the caller goes on without the store.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from goblet.fleet.store import StoreError

T = TypeVar("T")

STORE_THREADS = 8  # threads for store calls (a restore's download holds one throughout)


class StoreBusy(StoreError):
    """Every store thread is taken: the call was not made (the store is not known to
    have failed)."""


class StoreThreads:
    """At most ``size`` store calls at once, each in a thread of this pool."""

    def __init__(self, size: int = STORE_THREADS) -> None:
        self.size = size
        self._busy = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(size, thread_name_prefix="goblet-store")

    @property
    def busy(self) -> int:
        """How many calls run now (a call whose awaiting coroutine gave up still runs
        until its thread returns, and counts until then)."""
        with self._lock:
            return self._busy

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in one of the pool's threads; StoreBusy at once if
        none is free. Cancelling the await does not stop the call (give blocking calls
        their own limits, e.g. ``store.Pace``)."""
        with self._lock:
            if self._busy >= self.size:
                raise StoreBusy(f"object store busy: all {self.size} store threads "
                                f"wait on it")
            self._busy += 1
        try:
            future = self._pool.submit(fn, *args, **kwargs)
        except RuntimeError:  # (shut down)
            self._release(None)
            raise StoreError("object store calls are shut down") from None
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: Future[Any] | None) -> None:
        with self._lock:
            self._busy -= 1

    def close(self) -> None:
        """Let no new call start; calls running end on their own (their threads are not
        waited for)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
