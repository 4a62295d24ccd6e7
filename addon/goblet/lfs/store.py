"""The LFS object store: content-addressed files, kept only when their sha256 is the oid.

Layout under the cache root::

    lfs/<oid[0:2]>/<oid[2:4]>/<oid>    one object, named by its sha256 (its mtime: last use)
    lfs/tmp/obj-<random>               an object being written (removed at start-up when
                                       it has not grown for an hour: crash residue)

Temporary objects stay out of the cache's ``tmp/``, whose sweep removes
whatever no writer lock guards.

An object is written to a temporary file on the same filesystem while its
bytes are hashed, and renamed into place only when its size and sha256 are
what the oid promised; anything else is deleted. Objects never change, so a
reader holding one open is unaffected by an eviction or a second writer.
Only oids matching ``[0-9a-f]{64}`` ever become paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from goblet.lfs.batch import OID_RE

TOUCH_EVERY = 60.0  # seconds between access-time updates of one object
STALE_TMP = 3600.0  # seconds without growth after which a temporary object is crash residue


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object in the store."""

    oid: str
    size: int
    last_access: float
    path: Path


class ObjectWriter:
    """One object on its way into the store: ``feed`` its bytes, then ``commit``.

    ``commit`` returns False (and keeps nothing) unless exactly ``size`` bytes
    with sha256 ``oid`` were fed; ``abort`` drops what was written. Both are
    idempotent, and one of them must be called.
    """

    def __init__(self, store: LfsStore, oid: str, size: int) -> None:
        self.store, self.oid, self.size = store, oid, size
        self.written = 0
        self.failed = False
        self._hash = hashlib.sha256()
        self._tmp = store.tmp_dir / f"obj-{secrets.token_hex(8)}"
        self._file: BinaryIO | None = None
        try:  # (``lfs/`` may have been removed since start-up: it comes back)
            store.tmp_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._file = os.fdopen(fd, "wb")
        except OSError:
            self.failed = True

    def feed(self, data: bytes) -> None:
        """Hash and write ``data`` (past the promised size, or after a disk error, the
        object can only fail)."""
        self._hash.update(data)
        self.written += len(data)
        if self.failed or self._file is None or self.written > self.size:
            self.failed = True
            return
        try:
            self._file.write(data)
        except OSError:
            self.failed = True

    @property
    def verified(self) -> bool:
        """Whether the bytes fed so far are the whole object."""
        return self.written == self.size and self._hash.hexdigest() == self.oid

    def commit(self) -> bool:
        """Keep the object if it is whole and verified; True if it is in the store now."""
        ok = not self.failed and self.verified and self._file is not None
        if ok:
            try:
                assert self._file is not None
                self._file.close()
                target = self.store.path_for(self.oid)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self._tmp, target)
            except OSError:
                ok = False
        self.abort()
        return ok

    def abort(self) -> None:
        """Drop the temporary file."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            self._tmp.unlink()


class LfsStore:
    """Where LFS objects live under the cache root."""

    def __init__(self, root: Path) -> None:
        self.root = root / "lfs"
        self.tmp_dir = self.root / "tmp"
        self._touched: dict[str, float] = {}

    def prepare(self, stale_after: float = STALE_TMP) -> int:
        """Create the store's directories and remove what a crash left in ``tmp/``: objects
        being written that have not grown for ``stale_after`` seconds (a live writer, maybe
        of another process sharing the cache dir, keeps its file's mtime fresh). Returns
        how many were removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        removed = 0
        now = time.time()
        for path in self.tmp_dir.glob("obj-*"):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > stale_after:
                    path.unlink()
                    removed += 1
        return removed

    def path_for(self, oid: str) -> Path:
        """Where the object ``oid`` lives; ValueError for anything but a sha256 hex oid."""
        if not OID_RE.fullmatch(oid):
            raise ValueError("not an LFS oid")
        return self.root / oid[:2] / oid[2:4] / oid

    def has(self, oid: str, size: int) -> bool:
        """Whether the object is stored (with the size the batch answer named)."""
        try:
            return self.path_for(oid).stat().st_size == size
        except OSError:
            return False

    def touch(self, oid: str) -> None:
        """Record a use of the object (for LRU eviction), at most once a minute."""
        now = time.monotonic()
        if now - self._touched.get(oid, -TOUCH_EVERY) < TOUCH_EVERY:
            return
        self._touched[oid] = now
        if len(self._touched) > 100_000:
            self._touched.clear()
        with contextlib.suppress(OSError):
            os.utime(self.path_for(oid))

    def writer(self, oid: str, size: int) -> ObjectWriter:
        """A writer that stores ``oid`` if its bytes verify."""
        self.path_for(oid)  # validates
        return ObjectWriter(self, oid, size)

    def objects(self) -> Iterator[StoredObject]:
        """Every stored object (skipping anything that is not one)."""
        for first in _dirs(self.root):
            for second in _dirs(first):
                with contextlib.suppress(OSError):
                    for entry in os.scandir(second):
                        if not OID_RE.fullmatch(entry.name) or not entry.is_file(
                                follow_symlinks=False):
                            continue
                        with contextlib.suppress(OSError):
                            st = entry.stat(follow_symlinks=False)
                            yield StoredObject(entry.name, st.st_size, st.st_mtime,
                                               Path(entry.path))

    def remove(self, oid: str) -> int | None:
        """Delete one object; returns the bytes it held (None if it was gone)."""
        path = self.path_for(oid)
        try:
            size = path.stat().st_blocks * 512
            path.unlink()
        except OSError:
            return None
        self._touched.pop(oid, None)
        return size


def _dirs(path: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(path)
                      if e.is_dir(follow_symlinks=False) and len(e.name) == 2)
    except OSError:
        return []
