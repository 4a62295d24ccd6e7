"""pkt-line framing, sans-IO.

Grammar (gitprotocol-common(5), gitprotocol-v2(5))::

    pkt-line         = data-pkt / flush-pkt / delim-pkt / response-end-pkt
    data-pkt         = pkt-len pkt-payload
    pkt-len          = 4*(HEXDIG)      ; total length, the 4 length bytes included
    pkt-payload      = (pkt-len - 4)*(OCTET)
    flush-pkt        = "0000"
    delim-pkt        = "0001"          ; protocol v2 only
    response-end-pkt = "0002"          ; protocol v2, never sent over HTTP

A data-pkt is at least 5 bytes long (``0004`` is an empty payload, which git
itself never sends but tolerates) and at most 65520 bytes. ``0003`` is
invalid. A trailing LF in the payload is optional: git 2.39 sends
``command=fetch`` without one.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from goblet.protocol.errors import Culprit, ProtocolError, excerpt

MAX_PKT_LEN = 65520
MAX_PAYLOAD = MAX_PKT_LEN - 4

FLUSH = b"0000"
DELIM = b"0001"
RESPONSE_END = b"0002"


class PktKind(enum.Enum):
    """The four kinds of pkt-line."""

    DATA = "data"
    FLUSH = "flush"
    DELIM = "delim"
    RESPONSE_END = "response-end"


@dataclass(frozen=True, slots=True)
class Pkt:
    """One decoded pkt-line. ``payload`` is empty for the special packets."""

    kind: PktKind
    payload: bytes = b""

    @property
    def line(self) -> bytes:
        """The payload without one trailing LF (git's "text" pkt-line)."""
        return self.payload[:-1] if self.payload.endswith(b"\n") else self.payload


FLUSH_PKT = Pkt(PktKind.FLUSH)
DELIM_PKT = Pkt(PktKind.DELIM)
RESPONSE_END_PKT = Pkt(PktKind.RESPONSE_END)
_SPECIAL = {0: FLUSH_PKT, 1: DELIM_PKT, 2: RESPONSE_END_PKT}
_HEX = frozenset(b"0123456789abcdefABCDEF")


class PktDecoder:
    """Incremental pkt-line decoder.

    Feed it bytes in pieces of any size; it returns each packet once all of
    its bytes have arrived. ``close()`` raises if a packet was cut short.
    Raises ProtocolError (with the culprit given at construction) for a bad
    length header; once it raised, the decoder is unusable.
    """

    def __init__(self, culprit: Culprit = "client") -> None:
        self._buf = bytearray()
        self._culprit: Culprit = culprit
        self._offset = 0  # bytes consumed before _buf, for error messages

    def feed(self, data: bytes) -> list[Pkt]:
        """Add ``data``; return the packets it completed, in order."""
        self._buf += data
        out: list[Pkt] = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= 4:
            head = bytes(buf[pos : pos + 4])
            if not all(c in _HEX for c in head):
                raise ProtocolError(
                    f"bad pkt-line length {excerpt(head)!r} at byte {self._offset + pos}",
                    self._culprit,
                )
            size = int(head, 16)
            if size in _SPECIAL:
                out.append(_SPECIAL[size])
                pos += 4
                continue
            if size < 4 or size > MAX_PKT_LEN:
                raise ProtocolError(
                    f"invalid pkt-line length {size} at byte {self._offset + pos}", self._culprit
                )
            if len(buf) - pos < size:
                break
            out.append(Pkt(PktKind.DATA, bytes(buf[pos + 4 : pos + size])))
            pos += size
        del buf[:pos]
        self._offset += pos
        return out

    @property
    def pending(self) -> int:
        """How many bytes of an incomplete packet are buffered."""
        return len(self._buf)

    def close(self) -> None:
        """Declare the end of input; raise if a packet is incomplete."""
        if self._buf:
            raise ProtocolError(
                f"truncated pkt-line at byte {self._offset} ({len(self._buf)} bytes left)",
                self._culprit,
            )


def iter_decode(data: bytes, culprit: Culprit = "client") -> Iterator[tuple[Pkt, int]]:
    """Decode a complete pkt-line stream lazily: each packet with the offset just after it.

    A caller that stops early pays only for the packets it read; a bad length or
    a truncated last packet raises ProtocolError when the iteration reaches it.
    """
    pos, end = 0, len(data)
    while pos < end:
        head = data[pos : pos + 4]
        if len(head) < 4:
            raise ProtocolError(f"truncated pkt-line at byte {pos} ({end - pos} bytes left)",
                                culprit)
        if not all(c in _HEX for c in head):
            raise ProtocolError(f"bad pkt-line length {excerpt(head)!r} at byte {pos}", culprit)
        size = int(head, 16)
        if size in _SPECIAL:
            pos += 4
            yield _SPECIAL[size], pos
            continue
        if size < 4 or size > MAX_PKT_LEN:
            raise ProtocolError(f"invalid pkt-line length {size} at byte {pos}", culprit)
        if end - pos < size:
            raise ProtocolError(f"truncated pkt-line at byte {pos} ({end - pos} bytes left)",
                                culprit)
        yield Pkt(PktKind.DATA, data[pos + 4 : pos + size]), pos + size
        pos += size


def decode(data: bytes, culprit: Culprit = "client") -> list[Pkt]:
    """Decode a complete pkt-line stream; raise ProtocolError on any defect."""
    decoder = PktDecoder(culprit)
    pkts = decoder.feed(data)
    decoder.close()
    return pkts


def encode_data(payload: bytes) -> bytes:
    """Frame one data packet. Raises ValueError if the payload is too long."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"pkt-line payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return b"%04x" % (len(payload) + 4) + payload


def encode_line(text: str) -> bytes:
    """Frame one text line, adding the trailing LF."""
    return encode_data(text.encode("utf-8") + b"\n")


def encode(pkts: Iterable[Pkt]) -> bytes:
    """Frame a sequence of packets."""
    special = {PktKind.FLUSH: FLUSH, PktKind.DELIM: DELIM, PktKind.RESPONSE_END: RESPONSE_END}
    return b"".join(
        encode_data(p.payload) if p.kind is PktKind.DATA else special[p.kind] for p in pkts
    )


def error_packet(message: str) -> bytes:
    """An ``ERR`` packet, which git shows as "remote error: <message>".

    The message is reduced to one printable line so it cannot forge protocol
    structure or terminal escapes.
    """
    clean = "".join(c if c.isprintable() else " " for c in message).strip()
    data = b"ERR " + clean.encode("utf-8")[: MAX_PAYLOAD - 8] + b"\n"
    return encode_data(data)
