"""git processes a goblet that died left running, found and ended.

Every git child goblet starts gets SIGKILL when goblet dies (``git/runner.py``), but
what git itself starts does not: the kernel gives no parent-death signal to a child's
children. The ``pack-objects`` under a ``repack`` or a ``bundle create`` writes its
whole pack before it writes to its (closed) output, so it goes on writing into the
cache after the proxy and its direct child are gone, while a running or restarted
proxy takes its files for residue.

Such a process is known by its environment, not by guesswork: every git child carries
``GOBLET_OWNER=<pid>:<start time>`` of the goblet that started it (``git/env.py``) and
git passes it on to what it starts. A process whose owner is no longer alive (no such
pid, a zombie, or the pid now belongs to a process started at another time) is an
orphan. A git run by hand, another program, or a child of another live goblet on the
same cache dir never is. Only processes of this user are readable, and so signalled;
each is signalled through a pidfd opened before its marker is read again, so a pid
reused meanwhile is never hit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from goblet.git.env import OWNER_VARIABLE, owner_mark

log = logging.getLogger(__name__)

PROC = Path("/proc")
_MARK = OWNER_VARIABLE.encode() + b"="


def owner_of(entry: Path) -> str | None:
    """The ``GOBLET_OWNER`` of the process at ``entry`` (``/proc/<pid>``), if any."""
    try:
        environ = entry.joinpath("environ").read_bytes()
    except OSError:
        return None  # gone, or not this user's
    for item in environ.split(b"\0"):
        if item.startswith(_MARK):
            return item[len(_MARK):].decode("ascii", "replace")
    return None


def owner_alive(mark: str, proc: Path = PROC) -> bool:
    """Whether the goblet of ``mark`` (``<pid>:<start time>``) still runs."""
    pid, _, started = mark.partition(":")
    if not pid.isdigit():
        return False
    try:
        fields = proc.joinpath(pid, "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z" and (started in ("", "0") or fields[19] == started)


def orphans(proc: Path = PROC) -> list[int]:
    """Pids of the running processes whose goblet owner is gone."""
    me, found = owner_mark(), []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        mark = owner_of(entry)
        if mark is None or mark == me or owner_alive(mark, proc) or not _running(entry):
            continue
        found.append(int(entry.name))
    return found


def end_orphans(*, wait: float = 2.0, proc: Path = PROC) -> list[int]:
    """SIGKILL ``orphans()`` and wait up to ``wait`` seconds for them to go; the pids
    signalled (one warning line if any)."""
    ended = [pid for pid in orphans(proc) if _kill(pid, proc)]
    deadline = time.monotonic() + wait
    while ended and time.monotonic() < deadline and any(_running(proc / str(p)) for p in ended):
        time.sleep(0.01)
    if ended:
        log.warning("ended %d git process(es) left running by a goblet that died: %s",
                    len(ended), " ".join(map(str, ended)))
    return ended


def _kill(pid: int, proc: Path) -> bool:
    """SIGKILL ``pid`` if it is still an orphan (checked through a pidfd, so the check
    and the signal reach the same process)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:  # (no pidfds: the plain signal, after one more look)
        mark = owner_of(proc / str(pid))
        if mark is None or owner_alive(mark, proc):
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        return True
    try:
        mark = owner_of(proc / str(pid))  # (an orphan now was one at the open, or is gone)
        if mark is None or owner_alive(mark, proc):
            return False
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        os.close(fd)


def _running(entry: Path) -> bool:
    try:
        return entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
