"""Parse the body of a ``POST …/git-upload-pack`` request, sans-IO.

Protocol v2 (gitprotocol-v2(5))::

    request         = empty-request / command-request
    empty-request   = flush-pkt      ; same bytes as the probe below
    command-request = command capability-list [delim-pkt command-args] flush-pkt
    command         = PKT-LINE("command=" key LF)
    capability-list = *capability
    capability      = PKT-LINE(key[=value] LF)
    command-args    = *PKT-LINE(arg LF)

``fetch`` arguments: ``want <oid>``, ``have <oid>``, ``done``, ``thin-pack``,
``no-progress``, ``include-tag``, ``ofs-delta``, ``shallow <oid>``,
``deepen <depth>``, ``deepen-relative``, ``deepen-since <timestamp>``,
``deepen-not <rev>``, ``filter <spec>``, ``want-ref <ref>``, ``sideband-all``,
``packfile-uris <protocols>``, ``wait-for-done``.

Protocol v0/v1, stateless (gitprotocol-pack(5), gitprotocol-http(5))::

    request     = want-list *shallow-line *1depth-request [filter-request]
                  flush-pkt *have-line [done-line]
    want-list   = first-want *additional-want
    first-want  = PKT-LINE("want" SP obj-id [SP capability-list])
    depth-request = PKT-LINE("deepen" SP depth) / PKT-LINE("deepen-since" SP ts)
                  / PKT-LINE("deepen-not" SP ref)

A body that is exactly ``0000`` is git's probe before a large chunked POST.

Parsing is strict about framing and object ids (a malformed request is the
client's fault: ProtocolError). Whether the cache may answer a request is a
separate, conservative judgement recorded in ``unservable``: anything not on
the allowlists below is left to the upstream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from urllib.parse import unquote_to_bytes

from goblet.protocol import pktline, serveroptions
from goblet.protocol.errors import ProtocolError, excerpt
from goblet.protocol.pktline import PktKind

OID_RE = re.compile(rb"[0-9a-f]{40}")
OID_SHA256_RE = re.compile(rb"[0-9a-f]{64}")

# v2 fetch arguments a full-mirror cache answers exactly like the upstream.
_V2_FLAG_ARGS = frozenset(
    {b"done", b"thin-pack", b"no-progress", b"include-tag", b"ofs-delta", b"deepen-relative",
     b"wait-for-done"}
)
_V2_VALUE_ARGS = frozenset({b"deepen", b"deepen-since", b"deepen-not", b"filter"})

# v2 request capabilities (the lines before the delim-pkt) the cache accepts.
_V2_CAPS_OK = frozenset({b"agent", b"session-id"})

# v0/v1 capabilities (on the first want line) the cache's upload-pack supports.
_V0_CAPS_OK = frozenset(
    {b"multi_ack", b"multi_ack_detailed", b"no-done", b"thin-pack", b"side-band",
     b"side-band-64k", b"ofs-delta", b"shallow", b"deepen-since", b"deepen-not",
     b"deepen-relative", b"no-progress", b"include-tag", b"allow-tip-sha1-in-want",
     b"allow-reachable-sha1-in-want", b"filter", b"agent", b"session-id"}
)
_V0_VALUE_ARGS = frozenset({b"deepen", b"deepen-since", b"deepen-not", b"filter"})

# What git's upload-pack takes as the end of one capability and the start of another,
# besides the space the list is split on (git never sends these inside one).
_SPACE_RE = re.compile(rb"[\t\n\v\f\r]")
_MAX_ARG_LEN = 4096
_MAX_OPTIONS = 64  # server options kept per request (more make it unservable)


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    """git's ``0000`` probe POST, sent before a body larger than http.postBuffer."""


@dataclass(frozen=True, slots=True)
class LsRefsRequest:
    """A v2 ``command=ls-refs`` request."""

    ref_prefixes: tuple[str, ...]
    peel: bool
    symrefs: bool
    unborn: bool
    # ``server-option=`` capability values, in order (``serveroptions.py`` reads them)
    server_options: tuple[str, ...] = field(default=(), compare=False)
    # why the cache cannot reproduce this answer (unknown arguments or capabilities)
    unservable: tuple[str, ...] = field(default=(), compare=False)


KEPT_PREFIXES = 1024  # ref-prefix lines an ls-refs keeps while its answer comes ...
KEPT_PREFIX_CHARS = 64 * 1024  # ... and their text
NO_REF_PREFIX = "\0"  # a ref-prefix no ref name starts with (names hold no NUL)


def small_question(prefixes: tuple[str, ...], lines: int, chars: int) -> bool:
    """Whether ``prefixes`` are at most ``lines`` lines of at most ``chars`` characters
    in all (the count is looked at first: a client may send millions, empty ones too)."""
    return len(prefixes) <= lines and sum(map(len, prefixes)) <= chars


def kept_question(req: LsRefsRequest) -> LsRefsRequest:
    """``req`` as it is kept while its answer comes: unchanged if its ``ref-prefix`` lines
    are few (``small_question`` of KEPT_PREFIXES, KEPT_PREFIX_CHARS), else with one no
    ref starts with (a client chooses them, up to the body cap: they would stay in
    memory): the answer is then read as listing refs of an unknown part of the repo (a
    partial view; no ref of the cache is taken for deleted)."""
    if small_question(req.ref_prefixes, KEPT_PREFIXES, KEPT_PREFIX_CHARS):
        return req
    return replace(req, ref_prefixes=(NO_REF_PREFIX,))


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """A v2 ``command=fetch`` or a v0/v1 upload-pack request.

    ``unservable`` lists why the cache must not answer it (empty: it may).
    ``done`` is true when the client ended negotiation (v2 ``done``, v0 ``done``).
    ``shaped`` is true when a ``deepen*`` or ``filter`` argument asks for less
    than every object the wants reach.
    """

    version: int
    wants: tuple[str, ...]
    haves: tuple[str, ...]
    shallows: tuple[str, ...]
    done: bool
    unservable: tuple[str, ...]
    shaped: bool = field(default=False, compare=False)  # derived from the arguments above
    server_options: tuple[str, ...] = field(default=(), compare=False)
    #: ``include-tag``: the answer adds the tag object of every tag of the serving repo
    #: that points into the pack, listed to the client or not (``decide.py`` rule 8)
    include_tag: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class OtherCommand:
    """A v2 command other than ls-refs and fetch (object-info, bundle-uri, …)."""

    command: str


V2Request = LsRefsRequest | FetchRequest | OtherCommand | ProbeRequest


def _oid(value: bytes, what: bytes, unservable: list[str]) -> str | None:
    """Validate an object id; sha256 ids are valid but unservable by a sha1 cache."""
    if OID_RE.fullmatch(value):
        return value.decode("ascii")
    if OID_SHA256_RE.fullmatch(value):
        unservable.append("sha256 object id")
        return None
    raise ProtocolError(f"bad object id in {what.decode()!r} line: {excerpt(value)!r}")


def _split(line: bytes) -> tuple[bytes, bytes | None]:
    key, sep, value = line.partition(b" ")
    return key, (value if sep else None)


def _check_text(line: bytes) -> None:
    if len(line) > _MAX_ARG_LEN:
        raise ProtocolError(f"request line of {len(line)} bytes is too long")
    if b"\0" in line or b"\n" in line:
        raise ProtocolError(f"control character in request line {excerpt(line)!r}")


def parse_v2(body: bytes) -> V2Request:
    """Parse a v2 upload-pack request body (already gunzipped).

    Packets are decoded as they are read, so a body that breaks the grammar
    early (a second flush-pkt, say) costs no more than its good prefix.
    """
    if body == pktline.FLUSH:
        return ProbeRequest()  # also v2's "empty request": both go upstream
    if not body:
        raise ProtocolError("empty request body")
    pkts = pktline.iter_decode(body)
    first = next(pkts)[0]
    if first.kind is not PktKind.DATA or not first.line.startswith(b"command="):
        raise ProtocolError("v2 request does not start with command=")
    command = first.line[len(b"command=") :]
    _check_text(first.line)

    caps: list[bytes] = []
    args: list[bytes] = []
    section = caps
    for p, end in pkts:
        if end == len(body) and p.kind is not PktKind.FLUSH:
            raise ProtocolError("v2 request does not end with a flush-pkt")
        if p.kind is PktKind.FLUSH:
            if end != len(body):
                raise ProtocolError("unexpected flush-pkt inside a v2 request")
            break
        if p.kind is PktKind.DELIM:
            if section is args:
                raise ProtocolError("two delim-pkts in one v2 request")
            section = args
            continue
        if p.kind is not PktKind.DATA:
            raise ProtocolError(f"unexpected {p.kind.value}-pkt inside a v2 request")
        _check_text(p.line)
        section.append(p.line)
    else:
        raise ProtocolError("v2 request does not end with a flush-pkt")

    if command == b"ls-refs":
        return _parse_ls_refs(caps, args)
    if command == b"fetch":
        return _parse_fetch_v2(caps, args)
    if not re.fullmatch(rb"[a-z][a-z0-9-]{0,63}", command):
        raise ProtocolError(f"bad v2 command {excerpt(command)!r}")
    return OtherCommand(command.decode("ascii"))


_LS_REFS_FLAGS = frozenset({b"peel", b"symrefs", b"unborn"})


def _parse_ls_refs(caps: list[bytes], args: list[bytes]) -> LsRefsRequest:
    prefixes: list[str] = []
    flags: set[bytes] = set()
    unservable = _Reasons()
    options = _check_caps(caps, _V2_CAPS_OK, unservable)
    for line in args:
        key, value = _split(line)
        if key == b"ref-prefix" and value is not None:
            prefixes.append(value.decode("utf-8", "replace"))
        else:
            flags.add(line)
            if line not in _LS_REFS_FLAGS:
                unservable.append("argument " + key.decode("ascii", "replace"))
    return LsRefsRequest(
        ref_prefixes=tuple(prefixes),
        peel=b"peel" in flags,
        symrefs=b"symrefs" in flags,
        unborn=b"unborn" in flags,
        server_options=options,
        unservable=tuple(unservable),
    )


def _check_caps(caps: list[bytes], allowed: frozenset[bytes],
                unservable: list[str]) -> tuple[str, ...]:
    """Note every capability the cache cannot honour in ``unservable``; return the
    ``server-option`` values. goblet's own options (``goblet-…``) leave a request
    servable; any other server option is the upstream's to read."""
    options: list[str] = []
    for cap in caps:
        key, _, value = cap.partition(b"=")
        if _SPACE_RE.search(cap):  # (git would read a second capability after it)
            unservable.append("capability with a control character")
        elif key == b"object-format":
            if value != b"sha1":
                unservable.append("object-format " + value.decode("ascii", "replace"))
        elif key == b"server-option" and len(options) < _MAX_OPTIONS:
            option = value.decode("utf-8", "replace")
            options.append(option)
            if not option.startswith(serveroptions.PREFIX):
                unservable.append("server option")
        elif key not in allowed:
            unservable.append("capability " + key.decode("ascii", "replace"))
    return tuple(options)


class _Reasons(list[str]):
    """Why a request is unservable: its first reasons only (for a log line; any
    one reason sends the request upstream), so junk arguments cost no memory."""

    def append(self, reason: str) -> None:
        if len(self) < 16:
            super().append(reason)


@dataclass(slots=True)
class _Collected:
    wants: list[str]
    haves: list[str]
    shallows: list[str]
    unservable: list[str]
    done: bool = False
    shaped: bool = False
    server_options: tuple[str, ...] = ()
    include_tag: bool = False

    def add_oid(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            raise ProtocolError(f"{key.decode()} line without an object id")
        oid = _oid(value, key, self.unservable)
        if oid is not None:
            {b"want": self.wants, b"have": self.haves, b"shallow": self.shallows}[key].append(oid)

    def result(self, version: int) -> FetchRequest:
        return FetchRequest(version, tuple(self.wants), tuple(self.haves),
                            tuple(self.shallows), self.done, tuple(self.unservable), self.shaped,
                            self.server_options, self.include_tag)


def _check_value_arg(key: bytes, value: bytes, unservable: list[str]) -> None:
    """Check an argument with a value; note in ``unservable`` what reads the cache's
    objects or refs by name: ``deepen-not <ref>``, and any filter but the plain ones
    (``servable_filter``): a ``sparse:oid=<blob-ish>`` filter shapes the answer by a
    blob, or a file on any ref, that the upstream may not serve this credential."""
    if key == b"deepen" and not value.isdigit():
        raise ProtocolError(f"bad deepen value {excerpt(value)!r}")
    if key == b"deepen-not":
        unservable.append("argument deepen-not")
    elif key == b"filter" and not servable_filter(value):
        unservable.append("filter other than blob:none, blob:limit, tree or object:type")


# Filters that name no object: they shape the answer by the wanted objects alone.
_PLAIN_FILTER_RE = re.compile(
    rb"blob:none|blob:limit=[0-9]{1,20}[kmgKMG]?|tree:[0-9]{1,10}"
    rb"|object:type=(?:blob|tree|commit|tag)")


def servable_filter(spec: bytes) -> bool:
    """Whether a ``filter`` spec is one the cache may apply: a plain filter, or a
    ``combine:`` of plain ones (git percent-decodes each of those first, so they are
    judged decoded). Anything else, ``sparse:`` included however it is spelled, is the
    upstream's."""
    if spec.startswith(b"combine:"):
        parts = spec[len(b"combine:"):].split(b"+")
        return all(_PLAIN_FILTER_RE.fullmatch(unquote_to_bytes(part)) for part in parts)
    return _PLAIN_FILTER_RE.fullmatch(spec) is not None


def _parse_fetch_v2(caps: list[bytes], args: list[bytes]) -> FetchRequest:
    got = _Collected([], [], [], _Reasons())
    got.server_options = _check_caps(caps, _V2_CAPS_OK, got.unservable)
    for line in args:
        key, value = _split(line)
        if key in (b"want", b"have", b"shallow"):
            got.add_oid(key, value)
        elif value is None and key in _V2_FLAG_ARGS:
            got.done = got.done or key == b"done"
            got.shaped = got.shaped or key == b"deepen-relative"
            got.include_tag = got.include_tag or key == b"include-tag"
        elif value is not None and key in _V2_VALUE_ARGS:
            _check_value_arg(key, value, got.unservable)
            got.shaped = True
        else:
            got.unservable.append("argument " + key.decode("ascii", "replace"))
    if not got.wants:
        got.unservable.append("no wants")
    return got.result(2)


def parse_v0(body: bytes, version: int = 0) -> FetchRequest | ProbeRequest:
    """Parse a v0/v1 stateless upload-pack request body (already gunzipped)."""
    if body == pktline.FLUSH:
        return ProbeRequest()
    if not body:
        raise ProtocolError("empty request body")
    got = _Collected([], [], [], _Reasons())
    flushes = 0
    for i, (p, _) in enumerate(pktline.iter_decode(body)):
        if p.kind is PktKind.FLUSH:
            flushes += 1
            if flushes > 2:
                raise ProtocolError("too many flush-pkts in a v0 request")
            continue
        if p.kind is not PktKind.DATA:
            raise ProtocolError(f"unexpected {p.kind.value}-pkt in a v0 request")
        if got.done:
            raise ProtocolError("data after 'done' in a v0 request")
        _check_text(p.line)
        if flushes:
            _v0_negotiation_line(p.line, got)
        else:
            _v0_want_list_line(p.line, i == 0, got)
    if not got.wants and not got.unservable:
        raise ProtocolError("v0 request without a want line")
    if flushes == 0:
        raise ProtocolError("v0 request does not end its want list with a flush-pkt")
    return got.result(version)


def _v0_negotiation_line(line: bytes, got: _Collected) -> None:
    key, value = _split(line)
    if key == b"have" and value is not None:
        got.add_oid(key, value)
    elif line == b"done":
        got.done = True
    else:
        raise ProtocolError(f"unexpected line {excerpt(line)!r} in v0 negotiation")


def _v0_want_list_line(line: bytes, first: bool, got: _Collected) -> None:
    key, value = _split(line)
    if key == b"want":
        if value is None:
            raise ProtocolError("want line without an object id")
        oid_part, _, caps = value.partition(b" ")
        if caps and not first:
            raise ProtocolError("capabilities on a want line other than the first")
        listed = [c for c in caps.split(b" ") if c]
        _check_caps(listed, _V0_CAPS_OK, got.unservable)
        got.include_tag = got.include_tag or any(_is_include_tag(c) for c in listed)
        got.add_oid(key, oid_part)
    elif key == b"shallow" and value is not None:
        got.add_oid(key, value)
    elif key in _V0_VALUE_ARGS and value is not None:
        _check_value_arg(key, value, got.unservable)
        got.shaped = True
    else:
        raise ProtocolError(f"unexpected line {excerpt(line)!r} in a v0 want list")


UNREADABLE_VERSION = -1  # a Git-Protocol header goblet passes on to no upload-pack of its own


def protocol_version(header: str | None) -> int:
    """The protocol version a ``Git-Protocol`` header asks for, read as git's server reads
    it: the highest of its ``version=`` items that git knows (1 or 2), else 0."""
    version = 0
    for item in (header or "").split(":"):
        key, sep, value = item.partition("=")
        if key == "version" and sep and value in ("1", "2"):
            version = max(version, int(value))
    return version


_VOLATILE = (b"agent=", b"session-id=")


def _is_include_tag(cap: bytes) -> bool:
    """Whether a v0/v1 capability asks for ``include-tag`` (git reads ``include-tag=…``
    as ``include-tag`` too)."""
    return cap.partition(b"=")[0] == b"include-tag"


def without_include_tag(body: bytes) -> bytes:
    """``body``, a fetch request that parsed (``FetchRequest.include_tag``), without its
    ``include-tag``: the v2 argument line, or the capability on the v0/v1 first want
    line. Every other packet is kept byte for byte."""
    out, start = bytearray(), 0
    for p, end in pktline.iter_decode(body):
        raw, start = body[start:end], end
        line = p.line if p.kind is PktKind.DATA else b""
        if line == b"include-tag":
            continue
        if line.startswith(b"want ") and b" " in line[5:]:
            oid, _, caps = line[5:].partition(b" ")
            kept = b" ".join(c for c in caps.split(b" ") if not _is_include_tag(c))
            raw = pktline.encode_data(b"want " + oid + (b" " + kept if kept else b"")
                                      + p.payload[len(line):])
        out += raw
    return bytes(out)


def cache_identity(body: bytes) -> bytes | None:
    """The parts of an upload-pack request that decide its answer, for the pack cache.

    Drops what differs between identical requests from different clients
    (``agent=`` and ``session-id=`` capabilities, in v2 capability lines or
    on a v0 first want line); keeps every argument and its order. Returns
    None if the body is not well-formed pkt-lines.
    """
    try:
        pkts = pktline.decode(body)
    except ProtocolError:
        return None
    out: list[bytes] = []
    for p in pkts:
        if p.kind is not PktKind.DATA:
            out.append(b"\0" + p.kind.value.encode())  # cannot collide with a text line
            continue
        line = p.line
        if line.startswith(_VOLATILE):
            continue
        if line.startswith(b"want ") and b" " in line[5:]:
            oid, _, caps = line[5:].partition(b" ")
            kept = [c for c in caps.split(b" ") if c and not c.startswith(_VOLATILE)]
            line = b"want " + oid + (b" " + b" ".join(kept) if kept else b"")
        out.append(line)
    return b"\n".join(out)
