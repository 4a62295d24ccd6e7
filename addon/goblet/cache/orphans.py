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
same cache dir never is. Only processes of this user, in this pid namespace and working
under the cache dir are looked at (``orphans``); each is signalled through a pidfd
opened before its mark is read again, so a pid reused meanwhile is never hit.
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
    fields = _stat(proc / pid)
    if fields is None:
        return False
    return fields[0] != "Z" and (started in ("", "0") or fields[19] == started)


def orphans(cache_dir: Path, proc: Path = PROC) -> list[int]:
    """Pids of the running processes working under ``cache_dir`` whose goblet owner is
    gone.

    Only processes of this user, in this pid namespace (a mark names its owner by the
    pid its own namespace gave it) and with their current directory under
    ``cache_dir`` (goblet starts every git there) are looked at: their environment is
    read only then (reading it waits for the process's memory map, which a process
    stuck on a dead network file system holds).
    """
    root, me, uid = cache_dir.resolve(), owner_mark(), os.geteuid()
    try:
        namespace = _namespace(proc / "self")
    except OSError:
        return []  # (no /proc to read: nothing to judge)
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != uid or _namespace(entry) != namespace or \
                    not Path(os.readlink(entry / "cwd")).is_relative_to(root):
                continue
        except OSError:
            continue  # gone meanwhile, or not readable
        mark = owner_of(entry)
        if mark is None or mark == me or owner_alive(mark, proc) or not _running(entry):
            continue
        found.append(int(entry.name))
    return found


def end_orphans(cache_dir: Path, *, wait: float = 2.0, proc: Path = PROC) -> list[int]:
    """SIGKILL ``orphans(cache_dir)`` and wait up to ``wait`` seconds for them to go; the
    pids signalled (one warning line if any)."""
    ended = [pid for pid in orphans(cache_dir, proc) if _kill(pid, proc)]
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
    fields = _stat(entry)
    return fields is not None and fields[0] != "Z"


def _stat(entry: Path) -> list[str] | None:
    """The fields of ``<entry>/stat`` after the command name (None if unreadable)."""
    try:
        text = entry.joinpath("stat").read_bytes().decode("ascii", "replace")
        fields = text.rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 19 else None


def _namespace(entry: Path) -> str:
    return os.readlink(entry / "ns" / "pid")
