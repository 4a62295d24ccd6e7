"""Stopping what a test started: a subprocess (SIGTERM, then SIGKILL), and a ``with``
block whose end stops its handle."""

from __future__ import annotations

import signal
import subprocess
from types import TracebackType
from typing import Any


def terminate(proc: subprocess.Popen[Any], *, grace: float = 10, reap: float = 5) -> None:
    """SIGTERM ``proc`` if it still runs, SIGKILL it if it has not exited after ``grace``
    seconds, and then wait up to ``reap`` seconds for it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(reap)


class StopsOnExit:
    """A handle whose ``with`` block ends with its ``stop()``."""

    def stop(self) -> object:
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
