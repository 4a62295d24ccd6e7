"""Take the pack out of an upload-pack answer as it streams by, sans-IO.

A protocol v2 ``fetch`` answer (gitprotocol-v2(5))::

    output   = acknowledgments flush-pkt
             / [acknowledgments delim-pkt] [shallow-info delim-pkt]
               [wanted-refs delim-pkt] [packfile-uris delim-pkt]
               packfile flush-pkt
    packfile = PKT-LINE("packfile" LF) *PKT-LINE(%x01-03 *%x00-ff)

A protocol v0/v1 answer with ``side-band``/``side-band-64k`` is ``NAK`` or
``ACK`` lines, then the same band packets, then a flush-pkt.

Band 1 carries pack data, band 2 progress text, band 3 a fatal error. The
demultiplexer hands back band-1 bytes as they arrive and, at the end, says
whether the answer was complete: a ``packfile`` section (or, in v0, band
packets) ended by a flush-pkt, with no band-3 and no ``ERR`` packet. An answer
that ends any other way is incomplete and its pack must not be kept. Errors
are the upstream's (culprit ``"upstream"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from goblet.protocol.errors import ProtocolError, excerpt
from goblet.protocol.pktline import PktDecoder, PktKind


@dataclass(frozen=True, slots=True)
class Ending:
    """How an answer ended: ``complete`` (a whole pack was sent) or why not."""

    complete: bool
    reason: str = ""
    pack_bytes: int = 0


class PackDemux:
    """Feed an upload-pack answer; get its pack bytes; ``close`` says if it was whole."""

    def __init__(self, version: int) -> None:
        self._version = version
        self._decoder = PktDecoder("upstream")
        self._in_pack = False
        self._ended = False
        self._failure = ""
        self.pack_bytes = 0

    def feed(self, data: bytes) -> bytes:
        """The band-1 (pack) bytes within ``data``.

        Raises ProtocolError if the answer is not an upload-pack answer; after
        that (or after a failure the answer itself reports) nothing more is
        returned and ``close`` reports the answer incomplete.
        """
        if self._failure:
            return b""
        out = bytearray()
        try:
            for pkt in self._decoder.feed(data):
                self._packet(pkt.kind, pkt.payload, out)
                if self._failure:
                    return bytes(out)
        except ProtocolError as e:
            self._failure = e.reason
            raise
        return bytes(out)

    def _packet(self, kind: PktKind, payload: bytes, out: bytearray) -> None:
        if self._ended:
            self._failure = "data after the end of the answer"
            raise ProtocolError(self._failure, "upstream")
        if kind is PktKind.FLUSH:
            if self._in_pack:
                self._ended = True
            elif self._version == 2:
                self._failure = "the answer has no packfile section"
            return
        if kind is not PktKind.DATA:
            if not self._in_pack:
                return  # a delim-pkt between v2 sections
            self._failure = f"unexpected {kind.value}-pkt inside the pack"
            raise ProtocolError(self._failure, "upstream")
        if payload.startswith(b"ERR "):
            self._failure = "upstream error: " + excerpt(payload[4:].rstrip(b"\n"), 200)
            return
        if self._in_pack or (self._version != 2 and payload[:1] in (b"\x01", b"\x02", b"\x03")):
            self._in_pack = True
            band = payload[:1]
            if band == b"\x01":
                out += payload[1:]
                self.pack_bytes += len(payload) - 1
            elif band == b"\x03":
                self._failure = "upstream error: " + excerpt(payload[1:].rstrip(b"\n"), 200)
            elif band != b"\x02":
                self._failure = f"unknown side-band {payload[:1]!r}"
            return
        if self._version == 2 and payload.rstrip(b"\n") == b"packfile":
            self._in_pack = True

    def close(self) -> Ending:
        """Declare the end of the answer and say whether it carried a whole pack."""
        if self._failure:
            return Ending(False, self._failure, self.pack_bytes)
        if self._decoder.pending:
            return Ending(False, "the answer was cut inside a packet", self.pack_bytes)
        if not self._ended:
            return Ending(False, "the answer ended before its flush-pkt", self.pack_bytes)
        return Ending(True, "", self.pack_bytes)
