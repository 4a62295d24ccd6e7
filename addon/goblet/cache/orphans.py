"""Git processes a killed goblet left working in its cache dir, found and ended at start-up.

Every git child goblet starts leads its own session and gets SIGKILL when goblet dies
(``git/runner.py``), but what git itself starts does not: the kernel gives no
parent-death signal to a child's children. The ``pack-objects`` under a ``repack`` or
a ``bundle create`` writes its whole pack before it writes to its (closed) output, so
it goes on writing into the cache after the proxy and its direct child are gone, while
a restarted proxy takes its files for residue.

Such a process is git's (its command name starts with ``git``), works in the cache dir
(its current directory: goblet starts every git child there) and its session leader,
the git child goblet started, no longer exists.
The live children of another goblet on the same cache dir still have theirs, and so
does anything started from a shell. Only processes whose ``/proc`` entries this user
can read are looked at, and so signalled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

PROC = Path("/proc")


def orphans(cache_dir: Path, proc: Path = PROC) -> list[int]:
    """Pids of the git processes working under ``cache_dir`` whose session leader is
    gone (never this process or one of its session)."""
    root = cache_dir.resolve()
    mine = {os.getpid(), os.getsid(0)}
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "comm").read_text().strip()
        except (OSError, IndexError):
            continue  # gone meanwhile, or not this user's
        if fields[0] == "Z" or not command.startswith("git") or not cwd.is_relative_to(root):
            continue
        sid = int(fields[3])
        if sid in (0, int(entry.name)) or sid in mine or (proc / str(sid)).exists():
            continue
        found.append(int(entry.name))
    return found


def end_orphans(cache_dir: Path, *, wait: float = 2.0, proc: Path = PROC) -> list[int]:
    """SIGKILL ``orphans(cache_dir)`` and wait up to ``wait`` seconds for them to go;
    the pids signalled (one warning line if any)."""
    pids = orphans(cache_dir, proc)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while pids and time.monotonic() < deadline and any(_running(proc / str(p)) for p in pids):
        time.sleep(0.01)
    if pids:
        log.warning("ended %d git process(es) a killed goblet left working in %s: %s",
                    len(pids), cache_dir, " ".join(map(str, pids)))
    return pids


def _running(entry: Path) -> bool:
    try:
        return entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
