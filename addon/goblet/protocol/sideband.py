"""Insert a ``remote:`` message into an upload-pack answer, sans-IO.

With side-band (v0/v1 ``side-band``/``side-band-64k``, and always in v2's
``packfile`` section) the pack travels in pkt-lines whose first payload byte
is the band: 1 pack data, 2 progress (git prints it as ``remote: …``),
3 fatal error. Everything before the first band packet is plain text
(``ACK``/``NAK``, v2 section headers), so a band-2 packet inserted right
before the first band packet is shown by git and changes nothing else.

An answer without side-band (the raw pack follows ``NAK``) is passed on
unchanged: the first bytes that are not a pkt-line header end the search.
"""

from __future__ import annotations

from goblet.protocol.pktline import MAX_PAYLOAD, encode_data

_HEX = frozenset(b"0123456789abcdefABCDEF")
_BANDS = (1, 2, 3)


def band2_packet(message: str) -> bytes:
    """A progress packet carrying ``message`` as one printable line."""
    clean = "".join(c if c.isprintable() else " " for c in message).strip()
    return encode_data(b"\x02" + clean.encode("utf-8")[: MAX_PAYLOAD - 2] + b"\n")


class NoticeInserter:
    """Streams an answer through, adding one band-2 packet before the first band packet."""

    def __init__(self, message: str) -> None:
        self._notice = band2_packet(message)
        self._buf = bytearray()
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        """Return what can be sent now (possibly with the notice inside)."""
        if self._done:
            return chunk
        self._buf += chunk
        pos = 0
        buf = self._buf
        while len(buf) - pos >= 4:
            head = bytes(buf[pos : pos + 4])
            if not all(c in _HEX for c in head):
                return self._finish(len(buf))  # not pkt-lines (raw pack): give up
            size = int(head, 16)
            if size < 4:  # flush / delim / response-end
                pos += 4
                continue
            if len(buf) - pos < 5:
                break
            if buf[pos + 4] in _BANDS:
                out = bytes(buf[:pos]) + self._notice + bytes(buf[pos:])
                self._done = True
                self._buf = bytearray()
                return out
            if len(buf) - pos < size:
                break
            pos += size
        out = bytes(buf[:pos])
        del buf[:pos]
        return out

    def _finish(self, upto: int) -> bytes:
        out = bytes(self._buf[:upto])
        self._done = True
        self._buf = bytearray()
        return out

    def close(self) -> bytes:
        """Whatever is still buffered (the answer ended before any band packet)."""
        return self._finish(len(self._buf))
