"""Decode a request body's ``Content-Encoding`` with a cap on the decoded size, sans-IO.

git compresses upload-pack request bodies over 1 KiB with gzip
(``Content-Encoding: gzip``). A few KiB of gzip can decode to gigabytes, so
goblet never decodes a body whole: it inflates in steps, each bounded by what
is left of the cap, and stops the moment the cap is passed.

Contract of ``decode_capped(raw, encoding, cap)``:

- ``identity`` (or no header): ``raw`` itself if it is at most ``cap`` bytes.
- ``gzip``/``x-gzip`` (RFC 1952, one member) and ``deflate`` (RFC 1950 zlib
  stream, or a bare RFC 1951 stream as some clients send): the decoded bytes
  if they are at most ``cap``.
- More than ``cap`` decoded bytes: ``BodyTooLarge`` (after at most ``cap`` +
  one step of output was produced).
- A corrupt or truncated stream, or data after its end: ``ProtocolError``
  (the client's fault).
- Any other encoding (``br``, ``zstd``, a list of encodings): ``inspectable``
  says False and the caller leaves the body alone; git never sends them.

Work per call is bounded by ``len(raw)`` and ``cap``; it is CPU work, so a
caller on an event loop runs it in a worker thread.
"""

from __future__ import annotations

import zlib

from goblet.protocol.errors import ProtocolError

STEP = 64 * 1024  # compressed bytes fed per step

_GZIP = frozenset({"gzip", "x-gzip"})
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
               "deflate": zlib.MAX_WBITS}


class BodyTooLarge(Exception):
    """The decoded body is larger than the cap."""


def _name(encoding: str | None) -> str:
    return (encoding or "identity").strip().lower() or "identity"


def inspectable(encoding: str | None) -> bool:
    """Whether ``decode_capped`` can decode this ``Content-Encoding`` value."""
    return _name(encoding) in ("identity", *_ZLIB_WBITS)


def decode_capped(raw: bytes, encoding: str | None, cap: int) -> bytes:
    """The decoded body (see the module contract)."""
    name = _name(encoding)
    if name == "identity":
        if len(raw) > cap:
            raise BodyTooLarge(f"body of {len(raw)} bytes")
        return raw
    if name not in _ZLIB_WBITS:
        raise ValueError(f"cannot decode Content-Encoding {name!r}")
    try:
        return _inflate(raw, _ZLIB_WBITS[name], cap)
    except zlib.error:
        if name != "deflate":
            raise ProtocolError(f"corrupt {name} request body") from None
    try:  # "deflate" without the zlib wrapper
        return _inflate(raw, -zlib.MAX_WBITS, cap)
    except zlib.error:
        raise ProtocolError("corrupt deflate request body") from None


def _inflate(raw: bytes, wbits: int, cap: int) -> bytes:
    d = zlib.decompressobj(wbits)
    out = bytearray()
    view = memoryview(raw)
    pos = 0
    pending = b""
    while not d.eof:
        if not pending:
            if pos >= len(raw):
                raise ProtocolError("truncated compressed request body")
            pending = bytes(view[pos : pos + STEP])
            pos += len(pending)
        out += d.decompress(pending, cap + 1 - len(out))
        pending = d.unconsumed_tail
        if len(out) > cap:
            raise BodyTooLarge(f"body decodes to more than {cap} bytes")
    if d.unused_data or pos < len(raw):
        raise ProtocolError("data after the end of the compressed request body")
    return bytes(out)
