"""Liveness and readiness checks.

``/healthz`` answers while the event loop runs. ``/readyz`` is ready only when
every check passes: the cache dir takes a new file, git runs, the free disk
is at least ``min_free_bytes`` and the serving backend listens.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from goblet.cache.usage import free_bytes
from goblet.git.runner import GitRunner, GitTimeout


@dataclass(frozen=True, slots=True)
class Readiness:
    """The verdict of one readiness evaluation: failing checks as one-line reasons."""

    failures: tuple[str, ...]
    free_bytes: int = 0  # measured by the disk check, for the goblet_cache_free_bytes gauge

    @property
    def ready(self) -> bool:
        """True iff no check failed."""
        return not self.failures


def probe_writable(tmp_dir: Path) -> str | None:
    """Create and remove a file in ``tmp_dir``; the error as one line, or None."""
    probe = tmp_dir / f".ready-{os.getpid()}-{time.monotonic_ns()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as e:
        return f"cache dir not writable: {e.strerror or e}"
    return None


class HealthChecker:
    """Evaluates readiness; the git check is cached for ``git_every`` seconds."""

    def __init__(
        self,
        *,
        cache_dir: Path,
        tmp_dir: Path,
        git: GitRunner,
        min_free_bytes: int,
        backend_up: Callable[[], bool],
        git_every: float = 30.0,
    ) -> None:
        self.cache_dir = cache_dir
        self.tmp_dir = tmp_dir
        self.git = git
        self.min_free_bytes = min_free_bytes
        self.backend_up = backend_up
        self.git_every = git_every
        self._git_ok: tuple[float, str | None] | None = None

    async def _git_failure(self) -> str | None:
        now = time.monotonic()
        if self._git_ok is not None and now - self._git_ok[0] < self.git_every:
            return self._git_ok[1]
        try:
            res = await self.git.run(["--version"], timeout=10)
            failure = None if res.ok else f"git does not run: {res.stderr_line()}"
        except (OSError, GitTimeout) as e:
            failure = f"git does not run: {e}"
        self._git_ok = (now, failure)
        return failure

    async def readiness(self) -> Readiness:
        """Run every check (file IO in a worker thread) and collect the failures."""
        failures: list[str] = []
        writable = await asyncio.to_thread(probe_writable, self.tmp_dir)
        if writable:
            failures.append(writable)
        git = await self._git_failure()
        if git:
            failures.append(git)
        free = await asyncio.to_thread(free_bytes, self.cache_dir)
        if free < self.min_free_bytes:
            failures.append(
                f"free disk {free} bytes is below goblet_min_free_bytes {self.min_free_bytes}"
            )
        if not self.backend_up():
            failures.append("serving backend is not listening")
        return Readiness(tuple(failures), free)
