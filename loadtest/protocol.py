"""Git smart-HTTP bodies the load generator sends, and checks of what comes back. Sans-IO.

Requests are built exactly as git 2.39 builds them, so the proxy under test sees
real protocol; answers are checked strictly, so an ``ERR`` packet, a sideband
error or a cut pack counts as a failure instead of a fast "success".

Grammar (gitprotocol-common(5), gitprotocol-v2(5), gitprotocol-pack(5))::

    pkt-line     = length payload        ; length: 4 lower-case hex digits,
                                         ; counting themselves (0004..fff0)
    flush-pkt    = "0000"                ; end of a message or section list
    delim-pkt    = "0001"                ; v2: capabilities | command arguments
    error-line   = "ERR" SP message      ; as a pkt-line payload, anywhere
    v2 request   = "command=" name LF capability* delim-pkt argument* flush-pkt
    info/refs v2 = "version 2" LF capability* flush-pkt
    info/refs v0 = "# service=git-upload-pack" LF flush-pkt ref-line* flush-pkt
    ls-refs ans. = (oid SP refname (SP attribute)* LF)* flush-pkt
    fetch answer = (section-header ...)* "packfile" LF sideband* flush-pkt
    sideband     = %x01 pack-data | %x02 progress | %x03 error-message
    pack         = "PACK" version(4) count(4) object* sha1(20 bytes of all before)

Every check raises :class:`ProtocolError`, whose message says which side was at
fault; nothing else escapes for any input (a Hypothesis test states it).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

FLUSH = b"0000"
DELIM = b"0001"
AGENT = "git/2.39.5"
ADVERTISEMENT_TYPE = "application/x-git-upload-pack-advertisement"
RESULT_TYPE = "application/x-git-upload-pack-result"
MAX_PKT = 65520
_OID = re.compile(r"[0-9a-f]{40}")
_HEX4 = re.compile(rb"[0-9a-f]{4}")
_SECTIONS = frozenset(
    {"acknowledgments", "shallow-info", "wanted-refs", "packfile-uris", "packfile"})


class ProtocolError(Exception):
    """An answer that is not valid git protocol, or a git error inside a valid one."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One pkt-line: ``kind`` is ``data``, ``flush``, ``delim`` or ``end``."""

    kind: str
    payload: bytes = b""


# -- building requests --------------------------------------------------------------


def pkt_line(data: bytes | str) -> bytes:
    """One pkt-line; a ``str`` gets its trailing LF added, as git writes text lines."""
    raw = data.encode() + b"\n" if isinstance(data, str) else data
    if not raw or len(raw) + 4 > MAX_PKT:
        raise ValueError(f"pkt-line payload must be 1..{MAX_PKT - 4} bytes")
    return b"%04x" % (len(raw) + 4) + raw


def ls_refs_request(prefixes: Iterable[str] = ("HEAD", "refs/heads/", "refs/tags/")) -> bytes:
    """A v2 ``ls-refs`` body as ``git clone`` sends it (peeled, with symrefs).

    Byte for byte git 2.39's, which writes its capability lines without LF, except
    that ``unborn`` is left out (git sends it only when the server offers it).
    """
    return b"".join((
        pkt_line(b"command=ls-refs\n"),
        pkt_line(f"agent={AGENT}".encode()),
        pkt_line(b"object-format=sha1"),
        DELIM,
        pkt_line("peel"),
        pkt_line("symrefs"),
        *(pkt_line(f"ref-prefix {p}") for p in prefixes),
        FLUSH,
    ))


def fetch_request(wants: Iterable[str], *, depth: int = 0) -> bytes:
    """A v2 ``fetch`` body for a fresh clone of ``wants`` (``done``: no negotiation).

    Byte for byte what ``git clone --quiet`` 2.39 sends: ``command=fetch``, the
    capabilities and the flag arguments without LF, ``want``/``deepen``/``done``
    with it. ``depth`` > 0 asks for a shallow pack. ValueError for a malformed oid.
    """
    oids = list(wants)
    if not oids:
        raise ValueError("a fetch needs at least one want")
    for oid in oids:
        if not _OID.fullmatch(oid):
            raise ValueError(f"not a sha1 object id: {oid!r}")
    lines = [pkt_line(b"command=fetch"), pkt_line(f"agent={AGENT}".encode()),
             pkt_line(b"object-format=sha1"), DELIM,
             pkt_line(b"thin-pack"), pkt_line(b"no-progress"), pkt_line(b"ofs-delta")]
    if depth > 0:
        lines.append(pkt_line(f"deepen {depth}"))
    lines += [pkt_line(f"want {oid}") for oid in oids]
    lines += [pkt_line("done"), FLUSH]
    return b"".join(lines)


# -- reading answers ----------------------------------------------------------------


def read_packets(body: bytes, who: str = "server") -> Iterator[Packet]:
    """Split ``body`` into pkt-lines; ProtocolError (blaming ``who``) if it is not that."""
    pos = 0
    while pos < len(body):
        head = body[pos:pos + 4]
        if len(head) < 4 or not _HEX4.fullmatch(head):
            raise ProtocolError(f"{who} sent a bad pkt-line length {bytes(head)!r} at {pos}")
        size = int(head, 16)
        if size in (0, 1, 2):
            yield Packet(("flush", "delim", "end")[size])
            pos += 4
            continue
        if size < 5 or pos + size > len(body):
            raise ProtocolError(f"{who} sent a truncated or invalid pkt-line at {pos}")
        yield Packet("data", body[pos + 4:pos + size])
        pos += size


def _text(packet: Packet) -> str:
    return packet.payload.rstrip(b"\n").decode("utf-8", "replace")


def _raise_if_err(packet: Packet, who: str) -> None:
    if packet.kind == "data" and packet.payload.startswith(b"ERR "):
        raise ProtocolError(f"{who} sent a git error: {_text(packet)[4:][:200]}")


@dataclass(frozen=True, slots=True)
class Advertisement:
    """A checked ``info/refs`` answer: the protocol version and what it lists."""

    version: int
    capabilities: tuple[str, ...] = ()
    refs: dict[str, str] = field(default_factory=dict)


def check_info_refs(body: bytes, who: str = "server") -> Advertisement:
    """Check a smart ``info/refs?service=git-upload-pack`` answer (v2, or v0/v1 refs)."""
    packets = list(read_packets(body, who))
    for p in packets:
        _raise_if_err(p, who)
    if packets and packets[0].kind == "data" and _text(packets[0]) == "version 2":
        rest = packets  # v2 answers start with the version line, no service header
    elif len(packets) >= 2 and _text(packets[0]) == "# service=git-upload-pack" \
            and packets[1].kind == "flush":
        rest = packets[2:]
    else:
        raise ProtocolError(f"{who} sent neither 'version 2' nor a '# service=' header")
    if not rest or rest[-1].kind != "flush":
        raise ProtocolError(f"{who} sent an advertisement without its final flush")
    lines = [p for p in rest[:-1] if p.kind == "data"]
    if len(lines) != len(rest) - 1:
        raise ProtocolError(f"{who} sent a flush or delim inside the advertisement")
    if lines and _text(lines[0]) == "version 2":
        return Advertisement(2, tuple(_text(p) for p in lines[1:]))
    refs: dict[str, str] = {}
    caps: tuple[str, ...] = ()
    for i, p in enumerate(lines):
        text = _text(p)
        if i == 0 and text == "version 1":
            continue
        line, _, cap_text = text.partition("\0")
        if cap_text:
            caps = tuple(cap_text.split())
        oid, _, name = line.partition(" ")
        if not _OID.fullmatch(oid) or not name:
            raise ProtocolError(f"{who} sent a bad ref line {text[:80]!r}")
        if name != "capabilities^{}":
            refs[name] = oid
    return Advertisement(1 if lines and _text(lines[0]) == "version 1" else 0, caps, refs)


@dataclass(frozen=True, slots=True)
class RefList:
    """A checked ``ls-refs`` answer: refname → oid, and HEAD's target if sent."""

    refs: dict[str, str]
    head_target: str | None = None

    def tip(self) -> str:
        """The oid a clone wants first: HEAD's, else the first ref's. ProtocolError if none."""
        if "HEAD" in self.refs:
            return self.refs["HEAD"]
        if self.refs:
            return next(iter(self.refs.values()))
        raise ProtocolError("server listed no refs (empty repository?)")


def check_ls_refs(body: bytes, who: str = "server") -> RefList:
    """Check a v2 ``ls-refs`` answer and return its refs."""
    packets = list(read_packets(body, who))
    if not packets or packets[-1].kind != "flush":
        raise ProtocolError(f"{who} sent an ls-refs answer without its final flush")
    refs: dict[str, str] = {}
    head_target = None
    for p in packets[:-1]:
        _raise_if_err(p, who)
        if p.kind != "data":
            raise ProtocolError(f"{who} sent a {p.kind} packet inside an ls-refs answer")
        oid, _, rest = _text(p).partition(" ")
        name, *attributes = rest.split(" ")
        if not (_OID.fullmatch(oid) or oid == "unborn") or not name:
            raise ProtocolError(f"{who} sent a bad ls-refs line {_text(p)[:80]!r}")
        if oid != "unborn":
            refs[name] = oid
        for attribute in attributes:
            if name == "HEAD" and attribute.startswith("symref-target:"):
                head_target = attribute.split(":", 1)[1]
    return RefList(refs, head_target)


@dataclass(frozen=True, slots=True)
class PackSummary:
    """What a checked fetch answer carried."""

    objects: int
    pack_bytes: int
    sections: tuple[str, ...]


def check_fetch(body: bytes, who: str = "server") -> PackSummary:
    """Check a v2 ``fetch`` answer: sections, sideband, and the pack's own checksum.

    A sideband error (band 3), an ``ERR`` packet, a missing flush or a pack whose
    trailing SHA-1 does not match its bytes raises ProtocolError.
    """
    sections: list[str] = []
    pack = bytearray()
    expect_header, in_pack, ended = True, False, False
    for p in read_packets(body, who):
        if ended:
            raise ProtocolError(f"{who} sent data after the final flush")
        _raise_if_err(p, who)
        if p.kind == "flush":
            ended = True
        elif p.kind == "delim":
            if in_pack:
                raise ProtocolError(f"{who} sent a delim inside the packfile section")
            expect_header = True
        elif p.kind != "data":
            raise ProtocolError(f"{who} sent a response-end packet over HTTP")
        elif expect_header:
            header = _text(p)
            if header not in _SECTIONS:
                raise ProtocolError(f"{who} sent an unknown section {header[:40]!r}")
            sections.append(header)
            expect_header, in_pack = False, header == "packfile"
        elif in_pack:
            band, data = p.payload[0], p.payload[1:]
            if band == 1:
                pack += data
            elif band == 3:
                raise ProtocolError(f"{who} sent a sideband error: "
                                    f"{data.decode('utf-8', 'replace').strip()[:200]}")
            elif band != 2:
                raise ProtocolError(f"{who} sent sideband band {band}")
    if not ended:
        raise ProtocolError(f"{who} cut the fetch answer short (no final flush)")
    if "packfile" not in sections:
        raise ProtocolError(f"{who} sent no packfile section")
    return PackSummary(check_pack(bytes(pack), who), len(pack), tuple(sections))


def check_pack(pack: bytes, who: str = "server") -> int:
    """Check a pack's header and trailing SHA-1; return its object count."""
    if len(pack) < 32 or pack[:4] != b"PACK":
        raise ProtocolError(f"{who} sent no pack data (or too little)")
    version, count = struct.unpack(">II", pack[4:12])
    if version not in (2, 3):
        raise ProtocolError(f"{who} sent pack version {version}")
    if hashlib.sha1(pack[:-20], usedforsecurity=False).digest() != pack[-20:]:
        raise ProtocolError(f"{who} sent a pack whose checksum does not match (truncated?)")
    return int(count)
