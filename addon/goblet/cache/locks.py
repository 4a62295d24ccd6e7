"""Per-repo writer locks: an asyncio lock inside one process, ``flock`` across processes.

Only writers (fills, HEAD updates, maintenance) take the lock; readers
(``upload-pack``, ``cat-file``) never do, because git's object and ref
updates are atomic renames that readers tolerate.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path


class LockTimeout(Exception):
    """The writer lock could not be taken in time."""


class RepoLocks:
    """Hands out the writer lock of a repo, keyed by its cache key.

    Lock files live in ``lock_dir`` (outside the repos, so a repo can be
    created, renamed or deleted under its lock). The flock is polled, not
    waited on in a thread, so a stuck holder never pins a worker thread.
    """

    def __init__(self, lock_dir: Path, poll: float = 0.05) -> None:
        self._dir = lock_dir
        self._poll = poll
        self._local: dict[str, asyncio.Lock] = {}

    def lock_path(self, key: str) -> Path:
        """Where the flock file of ``key`` lives."""
        return self._dir / f"{key}.lock"

    @contextlib.asynccontextmanager
    async def writer(self, key: str, timeout: float = 3600.0) -> AsyncIterator[None]:
        """Hold the writer lock of ``key`` for the body of the ``async with``.

        Raises LockTimeout if it is not acquired within ``timeout`` seconds.
        """
        lock = self._local.setdefault(key, asyncio.Lock())
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(lock.acquire(), timeout)
        except TimeoutError:
            raise LockTimeout(f"writer lock of {key[:12]} busy for {timeout:.0f}s") from None
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path(key), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                delay = self._poll
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise LockTimeout(
                                f"writer lock of {key[:12]} held by another process"
                            ) from None
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 1.0)
                try:
                    yield
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        finally:
            lock.release()
