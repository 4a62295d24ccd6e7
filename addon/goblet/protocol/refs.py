"""Parse the upstream's ref answers, sans-IO.

``GET …/info/refs?service=git-upload-pack`` (gitprotocol-http(5))::

    smart-reply     = PKT-LINE("# service=git-upload-pack" LF) flush-pkt
                      ( v0-advertisement / v1-advertisement / v2-capabilities )
    v0-advertisement = first-ref *other-ref flush-pkt
                     / no-refs flush-pkt
    first-ref       = PKT-LINE(obj-id SP refname NUL cap-list LF)
    no-refs         = PKT-LINE(zero-id SP "capabilities^{}" NUL cap-list LF)
    other-ref       = PKT-LINE(obj-id SP refname [ "^{}" ] LF)
    v1-advertisement = PKT-LINE("version 1" LF) v0-advertisement
    v2-capabilities = PKT-LINE("version 2" LF) *PKT-LINE(key[=value] LF) flush-pkt

The ``# service`` preamble is optional (git accepts its absence).

``command=ls-refs`` response (gitprotocol-v2(5))::

    output     = *ref flush-pkt
    ref        = PKT-LINE((obj-id / "unborn") SP refname *(SP ref-attribute) LF)
    ref-attribute = "symref-target:" symref-target / "peeled:" obj-id

Errors here are the upstream's fault (culprit ``"upstream"``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from goblet.protocol import pktline
from goblet.protocol.errors import ProtocolError, excerpt
from goblet.protocol.pktline import Pkt, PktKind
from goblet.protocol.routes import ADVERTISEMENT_TYPE, RESULT_TYPE

V2_CAPABILITIES = b"000eversion 2\n"  # how a protocol v2 capability advertisement starts

_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class RefAdvertisement:
    """What the upstream said about a repo's refs.

    ``refs`` maps refname → oid (peeled ``^{}`` entries live in ``peeled``);
    ``symrefs`` maps a symbolic ref (usually ``HEAD``) to its target;
    ``version`` is 0, 1 or 2; for a v2 info/refs answer ``refs`` is empty and
    ``capabilities`` holds the v2 capability lines.
    """

    version: int
    refs: dict[str, str] = field(default_factory=dict)
    peeled: dict[str, str] = field(default_factory=dict)
    symrefs: dict[str, str] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ()

    @property
    def object_format(self) -> str:
        """The advertised object format (``sha1`` unless said otherwise)."""
        for cap in self.capabilities:
            if cap.startswith("object-format="):
                return cap.split("=", 1)[1]
        return "sha1"


def _fail(msg: str) -> ProtocolError:
    return ProtocolError(msg, "upstream")


def _text(p: Pkt) -> str:
    try:
        return p.line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(f"non-UTF-8 ref line {excerpt(p.line)!r}") from e


def _check_oid(oid: str) -> str:
    if not _OID.fullmatch(oid):
        raise _fail(f"bad object id {excerpt(oid.encode())!r} in ref advertisement")
    return oid


def parse_info_refs(body: bytes) -> RefAdvertisement:
    """Parse a smart ``info/refs?service=git-upload-pack`` answer."""
    pkts = pktline.decode(body, "upstream")
    i = 0
    if pkts and pkts[0].kind is PktKind.DATA and pkts[0].line.startswith(b"# service="):
        if pkts[0].line != b"# service=git-upload-pack":
            raise _fail(f"unexpected service line {excerpt(pkts[0].line)!r}")
        if len(pkts) < 2 or pkts[1].kind is not PktKind.FLUSH:
            raise _fail("service line not followed by a flush-pkt")
        i = 2
    rest = pkts[i:]
    if rest and rest[0].kind is PktKind.DATA and rest[0].line == b"version 2":
        return _parse_v2_caps(rest[1:])
    version = 0
    if rest and rest[0].kind is PktKind.DATA and rest[0].line == b"version 1":
        version = 1
        rest = rest[1:]
    return _parse_v0_refs(rest, version)


def _parse_v2_caps(pkts: list[Pkt]) -> RefAdvertisement:
    caps: list[str] = []
    for n, p in enumerate(pkts):
        if p.kind is PktKind.FLUSH:
            if n != len(pkts) - 1:
                raise _fail("data after the v2 capability advertisement's flush-pkt")
            return RefAdvertisement(version=2, capabilities=tuple(caps))
        if p.kind is not PktKind.DATA:
            raise _fail("unexpected special packet in v2 capability advertisement")
        caps.append(_text(p))
    raise _fail("v2 capability advertisement without a flush-pkt")


def _parse_v0_refs(pkts: list[Pkt], version: int) -> RefAdvertisement:
    refs: dict[str, str] = {}
    peeled: dict[str, str] = {}
    symrefs: dict[str, str] = {}
    caps: list[str] = []
    for n, p in enumerate(pkts):
        if p.kind is PktKind.FLUSH:
            if n != len(pkts) - 1:
                raise _fail("data after the ref advertisement's flush-pkt")
            return RefAdvertisement(version, refs, peeled, symrefs, tuple(caps))
        if p.kind is not PktKind.DATA:
            raise _fail("unexpected special packet in ref advertisement")
        line = p.line
        if n == 0:
            line, nul, cap_bytes = line.partition(b"\0")
            if not nul:
                raise _fail("first advertised ref has no capability list")
            caps = cap_bytes.decode("utf-8", "replace").split()
            for cap in caps:
                if cap.startswith("symref="):
                    src, _, dst = cap[len("symref=") :].partition(":")
                    symrefs[src] = dst
        try:  # (a name that is not UTF-8: the answer proves nothing, so goblet stays out)
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _fail(f"non-UTF-8 ref line {excerpt(line)!r}") from e
        oid, sep, name = text.partition(" ")
        if not sep or not name:
            raise _fail(f"malformed ref line {excerpt(line)!r}")
        _check_oid(oid)
        if name == "capabilities^{}":
            continue
        if name.endswith("^{}"):
            peeled[name[:-3]] = oid
        else:
            refs[name] = oid
    raise _fail("ref advertisement without a flush-pkt")


def parse_ls_refs(body: bytes) -> RefAdvertisement:
    """Parse a v2 ``ls-refs`` answer. An ``unborn`` HEAD yields only a symref."""
    pkts = pktline.decode(body, "upstream")
    refs: dict[str, str] = {}
    peeled: dict[str, str] = {}
    symrefs: dict[str, str] = {}
    for n, p in enumerate(pkts):
        if p.kind is PktKind.FLUSH:
            if n != len(pkts) - 1:
                raise _fail("data after the ls-refs flush-pkt")
            return RefAdvertisement(2, refs, peeled, symrefs)
        if p.kind is not PktKind.DATA:
            raise _fail("unexpected special packet in ls-refs answer")
        fields = _text(p).split(" ")
        if len(fields) < 2 or not fields[1]:
            raise _fail(f"malformed ls-refs line {excerpt(p.line)!r}")
        oid, name = fields[0], fields[1]
        if oid != "unborn":
            refs[name] = _check_oid(oid)
        for attr in fields[2:]:
            if attr.startswith("symref-target:"):
                symrefs[name] = attr[len("symref-target:") :]
            elif attr.startswith("peeled:"):
                peeled[name] = _check_oid(attr[len("peeled:") :])
    raise _fail("ls-refs answer without a flush-pkt")


def mirrored(name: str) -> bool:
    """Whether a ref is one the cache mirrors (branches and tags)."""
    return name.startswith(("refs/heads/", "refs/tags/"))


def starts_with_any(prefixes: Iterable[str]) -> Callable[[str], bool]:
    """A test of whether a name starts with one of ``prefixes``, whose time grows with the
    name's length, not with the number of prefixes (a client may send 65,536)."""
    wanted = frozenset(prefixes)
    lengths = sorted({len(p) for p in wanted})

    def test(name: str) -> bool:
        for n in lengths:
            if n > len(name):
                return False
            if name[:n] in wanted:
                return True
        return False

    return test


def refs_differ(
    upstream: dict[str, str], cache: dict[str, str], prefixes: tuple[str, ...] = ()
) -> bool:
    """Whether the cache's branches/tags disagree with what upstream advertised.

    ``upstream`` may be a partial view (an ls-refs limited by ``prefixes``):
    only refs inside that view are compared, so a cache ref outside it is not
    taken for deleted. An empty ``prefixes`` means upstream listed everything.
    """
    asked = starts_with_any(prefixes)

    def in_view(name: str) -> bool:
        return not prefixes or asked(name)

    for name, oid in upstream.items():
        if mirrored(name) and cache.get(name) != oid:
            return True
    return any(mirrored(name) and in_view(name) and name not in upstream for name in cache)


# v2 ``fetch`` features a full-mirror cache answers exactly like the upstream.
CACHE_FETCH_FEATURES = frozenset({"shallow", "filter", "wait-for-done"})


def is_ref_answer_type(content_type: str, *, ls_refs: bool) -> bool:
    """Whether ``content_type`` is git's for an answer to ``ls-refs`` (``ls_refs``) or to
    ``info/refs``."""
    wanted = RESULT_TYPE if ls_refs else ADVERTISEMENT_TYPE
    return content_type.split(";", 1)[0].strip().lower() == wanted


def parse_ref_answer(content_type: str, body: bytes, *, ls_refs: bool) -> RefAdvertisement | None:
    """The refs of an answer to a ref request (``ls_refs``: a v2 ``ls-refs``, else
    ``info/refs``), or None when it is not one: git's content type for that request
    and a body that parses. Anything else, an ``ERR`` packet included, proves nothing.
    """
    if not is_ref_answer_type(content_type, ls_refs=ls_refs):
        return None
    try:
        return parse_ls_refs(body) if ls_refs else parse_info_refs(body)
    except ProtocolError:
        return None


def restrict_v2_fetch_features(body: bytes) -> bytes | None:
    """Drop v2 ``fetch`` features the cache cannot serve from an info/refs answer.

    Upstreams may advertise ``fetch=… ref-in-want sideband-all packfile-uris``;
    a client that sees them may use them, and such a request can only go
    upstream. Hiding them makes clients send requests the cache can answer
    (and that the upstream still answers identically). Returns the new body,
    or None when nothing had to change. Raises ProtocolError on a bad answer.
    """
    pkts = pktline.decode(body, "upstream")
    changed = False
    out: list[Pkt] = []
    for p in pkts:
        if p.kind is PktKind.DATA and p.line.startswith(b"fetch="):
            features = p.line[len(b"fetch=") :].decode("utf-8", "replace").split()
            kept = [f for f in features if f in CACHE_FETCH_FEATURES]
            if kept != features:
                changed = True
                line = ("fetch=" + " ".join(kept)).rstrip("=")
                out.append(Pkt(PktKind.DATA, line.encode() + b"\n"))
                continue
        out.append(p)
    return pktline.encode(out) if changed else None


class HeadSymrefDropper:
    """Streams a v0/v1 ref advertisement, removing ``symref=HEAD:…`` from its capability
    list (offline answers that hide HEAD must not name its target either), sans-IO.

    The ``# service=`` preamble, its flush-pkt and a ``version 1`` line pass as they
    are; the first ref line is rewritten; everything after it passes untouched.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        """What can be sent now."""
        if self._done:
            return chunk
        self._buf += chunk
        out = bytearray()
        while not self._done and len(self._buf) >= 4:
            head = bytes(self._buf[:4])
            size = int(head, 16) if all(c in b"0123456789abcdefABCDEF" for c in head) else -1
            if size < 0:
                self._done = True  # not an advertisement after all: pass it on
                break
            size = max(size, 4)
            if len(self._buf) < size:
                break
            payload = bytes(self._buf[4:size])
            del self._buf[:size]
            if size == 4 or payload.startswith((b"# service=", b"version ")):
                out += head
                out += payload
                continue
            ref, nul, caps = payload.partition(b"\0")
            kept = b" ".join(c for c in caps.split(b" ") if not c.startswith(b"symref=HEAD:"))
            out += pktline.encode_data(ref + nul + kept if nul else payload)
            self._done = True
        if self._done:
            out += self._buf
            self._buf = bytearray()
        return bytes(out)

    def close(self) -> bytes:
        """Whatever is still buffered (the advertisement ended early)."""
        rest, self._buf, self._done = bytes(self._buf), bytearray(), True
        return rest
