"""Request classification, counters and fault injection of the test upstream server.

Kinds (one per request, fixed when the request has been read):

* ``info_refs`` - ``GET <repo>/info/refs?service=git-upload-pack|git-receive-pack``;
* ``ls_refs`` / ``fetch`` / ``other`` - ``POST <repo>/git-upload-pack`` whose (gunzipped) body
  is a protocol v2 ``command=ls-refs`` / ``command=fetch`` / any other command or shape;
* ``probe`` - ``POST <repo>/git-upload-pack`` whose body is exactly ``0000``;
* ``upload_pack_v0`` - ``POST <repo>/git-upload-pack`` starting with a ``want `` pkt-line;
* ``receive_pack`` - any ``POST <repo>/git-receive-pack`` (git's ``0000`` push probe included);
* ``api`` - ``/api/...`` pass-through endpoints; ``not_found`` - every other path.

The first seven are the "git kinds": a fault with an empty ``kinds`` list applies to them only.
"""

from __future__ import annotations

import collections
import threading
import time
import zlib
from typing import IO, Any

GIT_KINDS: tuple[str, ...] = (
    "info_refs",
    "ls_refs",
    "fetch",
    "upload_pack_v0",
    "probe",
    "receive_pack",
    "other",
)
ALL_KINDS: tuple[str, ...] = (*GIT_KINDS, "api", "not_found")
PACK_KINDS: frozenset[str] = frozenset({"fetch", "upload_pack_v0"})
FAULT_MODES: tuple[str, ...] = ("none", "stall", "error500", "truncate", "reset", "err200")
MAX_LOGGED_REQUESTS = 500
_PREFIX_LIMIT = 64 * 1024


def _body_prefix(body: IO[bytes], gzipped: bool) -> tuple[bytes, bool]:
    """Return up to 64 KiB of the (decompressed) body and whether that is the whole body.

    The file position of ``body`` is restored. A corrupt gzip stream yields ``(b"", False)``.
    """
    start = body.tell()
    try:
        raw = body.read(_PREFIX_LIMIT if not gzipped else 1024 * 1024)
        more_raw = bool(body.read(1))
    finally:
        body.seek(start)
    if not gzipped:
        return raw, not more_raw
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, _PREFIX_LIMIT)
    except zlib.error:
        return b"", False
    return out, inflater.eof and not inflater.unconsumed_tail


def _first_pkt_payload(data: bytes) -> bytes | None:
    if len(data) < 4:
        return None
    try:
        size = int(data[:4], 16)
    except ValueError:
        return None
    if size < 4:
        return None
    return data[4:size]


def classify_upload_pack(body: IO[bytes], gzipped: bool) -> str:
    """Kind of a ``POST git-upload-pack`` request from its body (see module docstring)."""
    prefix, complete = _body_prefix(body, gzipped)
    if prefix == b"0000" and complete:
        return "probe"
    payload = _first_pkt_payload(prefix)
    if payload is None:
        return "other"
    if payload.startswith(b"command="):
        command = payload[len(b"command=") :].rstrip(b"\n")
        if command == b"ls-refs":
            return "ls_refs"
        if command == b"fetch":
            return "fetch"
        return "other"
    if payload.startswith(b"want "):
        return "upload_pack_v0"
    return "other"


class Stats:
    """Thread-safe counters and the log of the last :data:`MAX_LOGGED_REQUESTS` requests.

    Entries are dicts with ``method``, ``path`` (request target incl. query), ``kind``,
    ``status`` (``None`` until decided, ``0`` when no response was sent), ``user``,
    ``git_protocol`` (the ``Git-Protocol`` header or ``None``) and ``fault`` (mode applied or
    ``None``). Entries are visible as soon as the request is classified.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(ALL_KINDS, 0)
        self._pack_bytes = 0
        self._requests: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=MAX_LOGGED_REQUESTS
        )

    def record(
        self, method: str, path: str, kind: str, user: str | None, git_protocol: str | None
    ) -> dict[str, Any]:
        """Count a request of ``kind`` and return its (mutable through :meth:`update`) entry."""
        entry: dict[str, Any] = {
            "method": method,
            "path": path,
            "kind": kind,
            "status": None,
            "user": user,
            "git_protocol": git_protocol,
            "fault": None,
        }
        with self._lock:
            self._counts[kind] += 1
            self._requests.append(entry)
        return entry

    def update(self, entry: dict[str, Any], **values: Any) -> None:
        """Set fields of an entry returned by :meth:`record`."""
        with self._lock:
            entry.update(values)

    def add_pack_bytes(self, count: int) -> None:
        """Account ``count`` response body bytes of a ``fetch``/``upload_pack_v0`` request."""
        with self._lock:
            self._pack_bytes += count

    def reset(self) -> None:
        """Zero all counters and forget the request log."""
        with self._lock:
            self._counts = dict.fromkeys(ALL_KINDS, 0)
            self._pack_bytes = 0
            self._requests.clear()

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready copy: one int per kind, ``pack_bytes`` and ``requests`` (oldest first)."""
        with self._lock:
            result: dict[str, Any] = dict(self._counts)
            result["pack_bytes"] = self._pack_bytes
            result["requests"] = [dict(e) for e in self._requests]
        return result


class FaultState:
    """The currently configured fault, shared by all handler threads.

    A fault matches a request when its mode is not ``none`` and the request's kind is in
    ``kinds`` (or, with empty ``kinds``, is a git kind). With a ``count``, only that many
    matching requests are affected, after which the mode reverts to ``none``. Every call to
    :meth:`configure` starts a new generation, which releases stalled requests.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._mode = "none"
        self._kinds: frozenset[str] = frozenset()
        self._remaining: int | None = None
        self._generation = 0

    def configure(self, mode: str, kinds: list[str], count: int | None) -> None:
        """Install a fault; raises ``ValueError`` for an unknown mode/kind or a negative count."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}")
        unknown = sorted(set(kinds) - set(ALL_KINDS))
        if unknown:
            raise ValueError(f"unknown kinds {unknown}")
        if count is not None and count < 0:
            raise ValueError("count must be >= 0")
        with self._cond:
            self._mode = mode if count != 0 else "none"
            self._kinds = frozenset(kinds)
            self._remaining = count
            self._generation += 1
            self._cond.notify_all()

    def take(self, kind: str) -> tuple[str, int]:
        """Consume the fault for one request of ``kind``: return (mode, generation).

        The mode is ``none`` when the fault does not apply.
        """
        with self._cond:
            applies = self._mode != "none" and (
                kind in self._kinds if self._kinds else kind in GIT_KINDS
            )
            if not applies:
                return "none", self._generation
            mode = self._mode
            if self._remaining is not None:
                self._remaining -= 1
                if self._remaining <= 0:
                    self._mode = "none"
            return mode, self._generation

    def wait_cleared(self, generation: int, timeout: float) -> bool:
        """Block until the fault is reconfigured after ``generation``; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._generation == generation:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True
