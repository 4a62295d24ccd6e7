"""The LFS object store: content-addressed files, kept only when their sha256 is the oid.

Layout under the cache root::

    lfs/<origin>/<scope>/<oid[0:2]>/<oid[2:4]>/<oid>
                                       one object, named by its sha256 (its mtime: last use)
    lfs/<origin>/origin                the LFS API origin (host[:port]) it stands for
    lfs/tmp/obj-<random>               an object being written (removed at start-up when
                                       it has not grown for an hour: crash residue)

``<origin>`` names the LFS API (the host of ``goblet_hosts`` the batch request
went to) whose grant brought the object in, ``<scope>`` the partition of the
isolation mode (``shared``, or one per tenant or verified user in ``tenant``
and ``user`` isolation), both as hashes (``LfsScope``): an object is only ever
answered for a grant of the same API, within the same partition, so one API's
grant never unlocks what another API's grant stored. Objects of the older
flat layout (``lfs/<oid[0:2]>/<oid[2:4]>/<oid>``) are never answered; they are
listed, counted and evicted like the others.

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
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from goblet.cache.usage import free_bytes
from goblet.lfs.batch import OID_RE

TOUCH_EVERY = 60.0  # seconds between access-time updates of one object
STALE_TMP = 3600.0  # seconds without growth after which a temporary object is crash residue


SHARED = "shared"  # the scope of the shared and public isolation modes
ORIGIN_FILE = "origin"
_KEY_RE = re.compile(r"[0-9a-f]{32}")


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class LfsScope:
    """Where objects granted by the LFS API ``origin`` (host[:port] as in goblet_hosts)
    within ``partition`` (the isolation mode's: "" when shared) are kept."""

    origin: str
    partition: str = ""

    @property
    def origin_dir(self) -> str:
        return _key(self.origin.lower())

    @property
    def scope_dir(self) -> str:
        return _key(self.partition) if self.partition else SHARED

    @property
    def relative(self) -> str:
        return f"{self.origin_dir}/{self.scope_dir}"


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object in the store; ``origin`` is the LFS API it came from ("" when unknown:
    an object of the older flat layout, never answered)."""

    oid: str
    size: int
    last_access: float
    path: Path
    origin: str = ""


class ObjectWriter:
    """One object on its way into the store: ``feed`` its bytes, then ``commit``.

    ``commit`` returns False (and keeps nothing) unless exactly ``size`` bytes
    with sha256 ``oid`` were fed; ``abort`` drops what was written. Both are
    idempotent, and one of them must be called.
    """

    def __init__(self, store: LfsStore, scope: LfsScope, oid: str, size: int) -> None:
        self.store, self.scope, self.oid, self.size = store, scope, oid, size
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
                target = self.store.path_for(self.scope, self.oid)
                target.parent.mkdir(parents=True, exist_ok=True)
                self.store.name_origin(self.scope)
                os.replace(self._tmp, target)
            except OSError:
                ok = False
        self.abort()
        return ok

    def abort(self) -> None:
        """Drop the temporary file."""
        self.store._writing.discard(self.store.path_for(self.scope, self.oid))
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
        self._writing: set[Path] = set()  # objects with a writer in this process

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

    def path_for(self, scope: LfsScope, oid: str) -> Path:
        """Where the object ``oid`` of ``scope`` lives; ValueError for anything but a sha256
        hex oid."""
        if not OID_RE.fullmatch(oid):
            raise ValueError("not an LFS oid")
        return self.root / scope.origin_dir / scope.scope_dir / oid[:2] / oid[2:4] / oid

    def name_origin(self, scope: LfsScope) -> None:
        """Record which LFS API the origin directory of ``scope`` stands for (for ``goblet
        cache ls --lfs``)."""
        path = self.root / scope.origin_dir / ORIGIN_FILE
        if not path.exists():
            with contextlib.suppress(OSError):
                path.write_text(scope.origin.lower() + "\n")

    def has(self, scope: LfsScope, oid: str, size: int) -> bool:
        """Whether the object is stored in ``scope`` (with the size the batch answer
        named)."""
        try:
            return self.path_for(scope, oid).stat().st_size == size
        except OSError:
            return False

    def touch(self, scope: LfsScope, oid: str) -> None:
        """Record a use of the object (for LRU eviction), at most once a minute."""
        path = self.path_for(scope, oid)
        now, key = time.monotonic(), str(path)
        if now - self._touched.get(key, -TOUCH_EVERY) < TOUCH_EVERY:
            return
        self._touched[key] = now
        if len(self._touched) > 100_000:
            self._touched.clear()
        with contextlib.suppress(OSError):
            os.utime(path)

    def copies(self, scope: LfsScope, oid: str) -> int:
        """How many partitions of ``scope``'s LFS API hold ``oid``."""
        origin = self.root / scope.origin_dir
        return sum(1 for part in _dirs(origin, _scope_name)
                   if (part / oid[:2] / oid[2:4] / oid).is_file())

    def writer(self, scope: LfsScope, oid: str, size: int) -> ObjectWriter:
        """A writer that stores ``oid`` in ``scope`` if its bytes verify."""
        self._writing.add(self.path_for(scope, oid))  # (validates the oid)
        return ObjectWriter(self, scope, oid, size)

    def open_writer(self, scope: LfsScope, oid: str, size: int, *, max_bytes: int = 0,
                    min_free: int = 0) -> ObjectWriter | None:
        """``writer``, or None when ``oid`` is being written to ``scope`` already (one
        writer per object: other downloads of it are not kept), when ``size`` is more than
        ``max_bytes`` (the cache's budget; 0: none), or when keeping it would leave less
        than ``min_free`` bytes free on the cache's filesystem."""
        if self.path_for(scope, oid) in self._writing or (max_bytes and size > max_bytes) or (
                min_free and free_bytes(self.root.parent) - size < min_free):
            return None
        return self.writer(scope, oid, size)

    def objects(self) -> Iterator[StoredObject]:
        """Every stored object (skipping anything that is not one), older layout too."""
        for origin in _dirs(self.root, _KEY_RE.fullmatch):
            try:
                name = (origin / ORIGIN_FILE).read_text().strip()
            except OSError:
                name = ""
            for part in _dirs(origin, _scope_name):
                yield from _objects(part, name)
        yield from _objects(self.root, "")

    def remove(self, oid: str) -> int | None:
        """Delete every stored copy of ``oid``; returns the bytes they held (None if there
        was none)."""
        if not OID_RE.fullmatch(oid):
            raise ValueError("not an LFS oid")
        freed = [self.remove_object(o) for o in self.objects() if o.oid == oid]
        got = [f for f in freed if f is not None]
        return sum(got) if got else None

    def remove_object(self, obj: StoredObject) -> int | None:
        """Delete one stored object; returns the bytes it held (None if it was gone)."""
        try:
            size = obj.path.stat().st_blocks * 512
            obj.path.unlink()
        except OSError:
            return None
        self._touched.pop(str(obj.path), None)
        return size


def _scope_name(name: str) -> bool:
    return name == SHARED or bool(_KEY_RE.fullmatch(name))


def _objects(base: Path, origin: str) -> Iterator[StoredObject]:
    for first in _dirs(base, lambda n: len(n) == 2):
        for second in _dirs(first, lambda n: len(n) == 2):
            with contextlib.suppress(OSError):
                for entry in os.scandir(second):
                    if not OID_RE.fullmatch(entry.name) or not entry.is_file(
                            follow_symlinks=False):
                        continue
                    with contextlib.suppress(OSError):
                        st = entry.stat(follow_symlinks=False)
                        yield StoredObject(entry.name, st.st_size, st.st_mtime,
                                           Path(entry.path), origin)


def _dirs(path: Path, name: Callable[[str], object]) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(path)
                      if e.is_dir(follow_symlinks=False) and name(e.name))
    except OSError:
        return []
