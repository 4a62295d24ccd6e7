"""Remove what a killed writer left behind in a cache repo (DESIGN §2).

Call only while holding the repo's writer lock: then no other writer exists,
so every lock file, temporary pack and ``.keep`` file is residue. Readers
create none of these.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

_TOP_LOCKS = ("HEAD.lock", "packed-refs.lock", "config.lock", "shallow.lock", "index.lock",
              "FETCH_HEAD.lock", "commit-graph.lock")


def clean_residue(repo: Path) -> list[str]:
    """Delete stale locks, ``tmp_*`` packs, ``.keep`` files and quarantine dirs.

    Returns the repo-relative paths removed (for the log). Never follows
    symlinks out of the repo.
    """
    removed: list[str] = []

    def unlink(p: Path) -> None:
        if p.is_symlink() or p.is_file():
            p.unlink(missing_ok=True)
            removed.append(str(p.relative_to(repo)))

    for name in _TOP_LOCKS:
        unlink(repo / name)
    refs = repo / "refs"
    if refs.is_dir() and not refs.is_symlink():
        for p in refs.rglob("*.lock"):
            unlink(p)
    pack = repo / "objects" / "pack"
    if pack.is_dir() and not pack.is_symlink() and not pack.parent.is_symlink():
        for p in pack.iterdir():
            if p.name.startswith(("tmp_", ".tmp-")) or p.suffix == ".keep" or \
                    p.name.endswith(".lock"):
                unlink(p)
    objects = repo / "objects"
    if objects.is_dir() and not objects.is_symlink():
        quarantines = [*objects.glob("tmp_objdir-incoming-*"), *objects.glob("incoming-*")]
        for p in quarantines:
            if p.is_dir() and not p.is_symlink():
                for child in sorted(p.rglob("*"), reverse=True):
                    if child.is_dir() and not child.is_symlink():
                        child.rmdir()
                    else:
                        child.unlink(missing_ok=True)
                p.rmdir()
                removed.append(str(p.relative_to(repo)))
        for fanout in objects.glob("??"):
            if fanout.is_dir() and not fanout.is_symlink():
                for p in fanout.glob("tmp_obj_*"):
                    unlink(p)
        info = objects / "info"
        if info.is_dir() and not info.is_symlink():
            for p in info.glob("*.lock"):
                unlink(p)
            graphs = info / "commit-graphs"
            if graphs.is_dir() and not graphs.is_symlink():
                for p in graphs.iterdir():
                    if p.name.endswith(".lock") or p.name.startswith("tmp_graph_"):
                        unlink(p)
    if removed:
        log.info("removed crash residue in %s: %s", repo.name[:12], ", ".join(removed[:10]))
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_alive(name: str) -> bool:
    """Whether the process named in a ``<key>.<pid>.<ns>.<suffix>`` temp name lives.

    goblet names what it is still writing that way (``RepoStore.temp_path``,
    pack-cache productions), so another instance sharing the cache dir can
    tell its neighbour's work in progress from a dead writer's leftovers.
    """
    parts = name.split(".")
    return len(parts) >= 3 and parts[1].isdigit() and pid_alive(int(parts[1]))


def stale_temp_repos(tmp_dir: Path) -> list[Path]:
    """Half-created repos in ``tmp/`` whose creating process is gone."""
    try:
        entries = list(tmp_dir.iterdir())
    except OSError:
        return []
    return [entry for entry in entries if not owner_alive(entry.name)]


def remove_tree(path: Path) -> None:
    """Delete a file or directory tree of ours, never following symlinks."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    shutil.rmtree(path, onerror=_forget)


def _forget(func: Callable[..., object], path: str,
            exc: tuple[type[BaseException], BaseException, TracebackType]) -> None:
    log.debug("could not delete %s: %s", os.path.basename(path), exc[1])
