"""Writer locks and claims on work in progress, both ``flock`` based.

Per-repo writer locks: an asyncio lock inside one process, ``flock`` across
processes. Only writers (fills, HEAD updates, maintenance) take the lock;
readers (``upload-pack``, ``cat-file``) never do, because git's object and ref
updates are atomic renames that readers tolerate.

Claims (``WorkClaim``) mark temporary work — a repo being built in ``tmp/``, a
pack-cache answer being produced — as live for as long as its writer lives:
the kernel drops an ``flock`` when its holder dies, however it dies, so a
leftover is told from live work by trying the lock, never by a pid (a
restarted process in a container often gets the dead one's pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
_CLAIM_TRIES = 5


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

    def held_elsewhere(self, key: str) -> bool:
        """Whether another process holds the writer lock of ``key`` now.

        A snapshot (the lock may be taken or released right after), for callers
        that would rather not wait; False while a task of this process holds or
        awaits the lock (its fills are known here) and when it cannot be told.
        """
        local = self._local.get(key)
        if local is not None and local.locked():
            return False
        try:
            fd = os.open(self.lock_path(key), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return False  # no lock file: nobody has ever held it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(fd)  # (closing drops the lock, if it was taken)
        return False

    @contextlib.asynccontextmanager
    async def writer(self, key: str, timeout: float = 3600.0) -> AsyncIterator[None]:
        """Hold the writer lock of ``key`` for the body of the ``async with``.

        Raises LockTimeout if it is not acquired within ``timeout`` seconds.
        """
        lock = self._local.setdefault(key, asyncio.Lock())
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):  # a free lock is taken even with timeout 0
                await lock.acquire()
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


class ClaimRaced(OSError):
    """A sweeper removed a new claim's lock file before its lock was held."""


class WorkClaim:
    """An ``flock`` held on ``<stem>.lock`` while the work ``<stem>.<suffix>`` is unfinished.

    Protocol: ``take`` the claim before creating the work; remove the work or
    rename it away, then ``release``. So the lock file exists, held, for the
    whole life of the work, and a work entry whose lock file is missing or
    not held was left by a dead writer (``recovery.sweep_abandoned``). The
    descriptor is close-on-exec: children never hold the claim.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @property
    def held(self) -> bool:
        """Whether the claim is still held (not yet released)."""
        return self._fd >= 0

    @classmethod
    def take(cls, path: Path) -> WorkClaim:
        """Create the lock file ``path`` (it must not exist yet) and hold its lock.

        Raises FileExistsError if the name is taken, BlockingIOError or
        ClaimRaced if a sweeper got to the new file first (then nothing is held
        and the caller should try another name), OSError if it cannot be created.
        """
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not names_file(path, fd):
                raise ClaimRaced(errno.ENOENT, "claim removed before it was held", str(path))
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def release(self) -> None:
        """Delete the lock file, then drop the lock (idempotent; never raises)."""
        if self._fd < 0:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError as e:  # left unlocked: the next sweep removes it
            log.warning("cannot remove claim %s: %s", self.path.name, e)
        finally:
            os.close(self._fd)
            self._fd = -1


def claim_fresh(directory: Path, prefix: str, suffix: str) -> tuple[Path, WorkClaim]:
    """A new, unused ``<prefix>.<pid>.<ns><suffix>`` path in ``directory``, claimed.

    The pid and time only make the name unique and tell an operator who wrote
    it; liveness is the claim. Raises OSError if no claim can be made.
    """
    for _ in range(_CLAIM_TRIES):
        stem = f"{prefix}.{os.getpid()}.{time.monotonic_ns()}"
        try:
            claim = WorkClaim.take(directory / f"{stem}{LOCK_SUFFIX}")
        except (FileExistsError, BlockingIOError, ClaimRaced):
            continue  # a name taken, or a sweeper raced us: another name
        return directory / f"{stem}{suffix}", claim
    raise OSError(errno.EAGAIN, f"no free claim name in {directory.name}/")


def names_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not unlinked or replaced)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (opened.st_dev, opened.st_ino)
