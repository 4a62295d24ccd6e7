"""An LFS object on its way from the upstream's download href to the client.

mitmproxy streams the upstream's answer to the client through ``stream``
(a response ``stream`` callable). Every byte is hashed (and, when the store
takes it, written to a temporary file created only once the answer turned
out to be the object); the last piece received is held back until the end
of the answer, and sent only if the whole object matched its oid. A
mismatch (or a short answer) therefore never reaches the client as a
complete body: ``corrupt`` is set and the caller aborts the connection, and
nothing is stored. An answer that is not a plain 200 passes through as it is.

``HeldAnswer`` is the other stream callable: a batch answer without a
``Content-Length``, held whole (within a cap) so it can be rewritten. Neither
ever returns an empty piece, which in a chunked answer would end the body.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable

from goblet.lfs.store import ObjectWriter


class _Check:
    """Hashes an object that is not being kept, to verify it all the same."""

    def __init__(self, oid: str, size: int) -> None:
        self.oid, self.size, self.written = oid, size, 0
        self._hash = hashlib.sha256()

    def feed(self, data: bytes) -> None:
        self._hash.update(data)
        self.written += len(data)

    @property
    def verified(self) -> bool:
        return self.written == self.size and self._hash.hexdigest() == self.oid


class Transfer:
    """One object download passed to the upstream href (see the module docstring)."""

    def __init__(self, oid: str, size: int,
                 open_writer: Callable[[], ObjectWriter | None] | None) -> None:
        """``open_writer``: where the verified object may go, asked only once the answer
        turns out to be the object (it may say None: verified, not kept); None for a
        request whose answer is not the object (HEAD): bytes are only counted."""
        self.oid, self.size = oid, size
        self._open = open_writer
        self.writer: ObjectWriter | None = None
        self._check: ObjectWriter | _Check | None = None
        self.active = False  # the answer is the object itself (200, no encoding)
        self.bytes = 0
        self.corrupt = False
        self.ended = False
        self._held = b""

    def start(self, status: int, content_encoding: str | None) -> None:
        """The upstream's answer starts: verify it (and maybe keep it) only if it is the
        object; no temporary file exists before."""
        self.active = self._open is not None and status == 200 and (
            content_encoding or "identity").strip().lower() == "identity"
        if self.active and self._open is not None:
            self.writer = self._open()
            self._check = self.writer or _Check(self.oid, self.size)

    def stream(self, data: bytes) -> list[bytes]:
        """The response ``stream`` callable: pass ``data`` on, one piece late; at the end
        (``b""``) release the last piece only if the object verified. Returns the pieces
        to send (never an empty one: in a chunked answer that would end the body)."""
        self.bytes += len(data)
        if not self.active or self._check is None:
            return [data] if data else []
        if data:
            self._check.feed(data)
            if self._check.written > self.size:  # more than the object: never sent on
                self.corrupt = True
            if self.corrupt:
                return []
            out, self._held = self._held, data
            return [out] if out else []
        self.ended = True
        out, self._held = self._held, b""
        if self.corrupt or not self._check.verified:
            self.corrupt = True
            return []
        return [out] if out else []

    def whole(self, body: bytes) -> None:
        """The answer arrived whole, without streaming (mitmproxy does so for an empty
        body, which is sent after the response hook): check it all at once."""
        if self.active and not self.ended:
            self.stream(body)
            self.stream(b"")

    def finish(self, complete: bool) -> bool:
        """The flow ended (``complete``: with a whole answer); True if the object was
        stored. Whatever was written is gone otherwise."""
        if self.writer is None:
            return False
        if complete and self.ended and not self.corrupt:
            return self.writer.commit()
        self.writer.abort()
        return False


class HeldAnswer:
    """A batch answer without ``Content-Length`` (chunked), as a response ``stream``
    callable: held until its end and rewritten then, or passed on unchanged once it
    grows past ``cap`` bytes."""

    def __init__(self, cap: int, rewrite: Callable[[bytes], bytes | None]) -> None:
        self.cap = cap
        self.rewrite = rewrite
        self.passing = False
        self._held = bytearray()

    def __call__(self, data: bytes) -> list[bytes]:
        """The pieces to send now (never an empty one: it would end a chunked body)."""
        if self.passing:
            return [data] if data else []
        if data:
            self._held += data
            if len(self._held) <= self.cap:
                return []
            self.passing = True
        held = bytes(self._held)
        self._held.clear()
        if not self.passing:
            with contextlib.suppress(Exception):  # (fail closed: the upstream's own answer)
                held = self.rewrite(held) or held
        return [held] if held else []
