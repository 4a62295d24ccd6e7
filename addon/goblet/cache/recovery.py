"""Remove what killed writers left behind: in a cache repo, in ``tmp/`` and ``packcache/``.

``clean_residue``: call only while holding the repo's writer lock; then no
other writer exists, so every lock file, temporary pack and ``.keep`` file is
residue. Readers create none of these.

``sweep_abandoned``: temporary work (repos being built, answers being
produced) whose writer's claim (``locks.WorkClaim``) is no longer held.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from goblet.cache.locks import LOCK_SUFFIX, names_file

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


def sweep_abandoned(directory: Path, keep: Callable[[str], bool] = lambda name: False
                    ) -> list[str]:
    """Delete what dead writers left in ``directory``; return the names of work removed.

    Every entry but those ``keep`` accepts is work ``<stem>.<suffix>`` (or a
    claim's ``<stem>.lock``) guarded by the ``flock`` of ``<stem>.lock``
    (``locks.WorkClaim``). A stem whose lock file is missing or not held was
    left by a dead writer: its work is deleted, then its lock file, while the
    sweep holds that lock. Work whose lock is held — a live process, such as
    another instance sharing the directory — is left alone. Safe to run while
    other processes create and finish work in ``directory``.
    """
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    stems: dict[str, list[str]] = {}
    for name in names:
        if not keep(name):
            stems.setdefault(_stem(name), []).append(name)
    removed: list[str] = []
    for stem, entries in stems.items():
        try:
            removed += _sweep_stem(directory, stem, entries)
        except OSError as e:
            log.warning("cannot remove abandoned %s in %s/: %s", stem[:24], directory.name, e)
    if removed:
        log.info("removed %d abandoned entr%s of dead writers in %s/", len(removed),
                 "y" if len(removed) == 1 else "ies", directory.name)
    return removed


def _sweep_stem(directory: Path, stem: str, entries: list[str]) -> list[str]:
    """Delete the ``entries`` of ``stem`` and its lock file if abandoned; the work removed."""
    lock = directory / f"{stem}{LOCK_SUFFIX}"
    removed: list[str] = []
    with _abandoned(lock) as dead:
        if not dead:
            return removed
        for name in entries:
            if name != lock.name:
                remove_tree(directory / name)
                removed.append(name)
        remove_tree(lock)  # last: until here it kept other sweeps off this work
    return removed


def _stem(name: str) -> str:
    """``name`` without its last suffix (a dot file's leading dot is no suffix)."""
    head, dot, _ = name.rpartition(".")
    return head if dot and head.strip(".") else name


@contextlib.contextmanager
def _abandoned(lock: Path) -> Iterator[bool]:
    """Whether the work guarded by ``lock`` is abandoned; if so its lock is held in the body.

    True if the lock file is missing (a writer creates it before its work and
    deletes it after) or nobody holds its lock; False if a live process does
    (or if the name was unlinked meanwhile: whoever did so owns the cleanup).
    """
    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1
    except OSError as e:  # a symlink, a directory: nothing a writer of ours holds
        log.debug("%s is no claim: %s", lock.name, e)
        fd = -1
    if fd < 0:
        yield True
        return
    try:
        yield _lock_if_free(fd) and names_file(lock, fd)
    finally:
        os.close(fd)


def _lock_if_free(fd: int) -> bool:
    """Take the ``flock`` of ``fd`` unless another open file holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def remove_tree(path: Path) -> None:
    """Delete a file or directory tree of ours, never following symlinks."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    shutil.rmtree(path, onerror=_forget)


def _forget(func: Callable[..., object], path: str,
            exc: tuple[type[BaseException], BaseException, TracebackType]) -> None:
    log.debug("could not delete %s: %s", os.path.basename(path), exc[1])
