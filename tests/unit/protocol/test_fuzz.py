"""Hypothesis: one invariant per test. Any input parses or raises ProtocolError, never else.

Inputs mix raw bytes with well-framed packet streams built from protocol words, so the
parsers are exercised past the framing layer, and a grammar of v2 fetch requests reaches
the argument checks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from goblet.protocol import pktline, refs, request, routes
from goblet.protocol.errors import ProtocolError
from goblet.protocol.pktline import DELIM_PKT, FLUSH_PKT, RESPONSE_END_PKT, Pkt, PktDecoder, PktKind
from goblet.protocol.request import FetchRequest
from hypothesis import example, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=300, deadline=None, database=None)

HEX = "0123456789abcdef"
oid1 = st.text(HEX, min_size=40, max_size=40).map(str.encode)
oid256 = st.text(HEX, min_size=64, max_size=64).map(str.encode)
near_oid = st.text(HEX + "ABCDEFg", min_size=38, max_size=66).map(str.encode)
any_oid = st.one_of(oid1, oid1, oid256, near_oid)

WORDS = [
    b"command=fetch", b"command=ls-refs", b"command=object-info", b"command=", b"agent=git/2.39.5",
    b"object-format=sha1", b"object-format=sha256", b"session-id=1", b"server-option=x",
    b"want", b"have", b"shallow", b"done", b"thin-pack", b"no-progress", b"include-tag",
    b"ofs-delta", b"deepen", b"deepen-since", b"deepen-not", b"deepen-relative", b"filter",
    b"want-ref", b"sideband-all", b"packfile-uris", b"wait-for-done", b"peel", b"symrefs",
    b"unborn", b"ref-prefix", b"# service=git-upload-pack", b"# service=git-receive-pack",
    b"version 1", b"version 2", b"HEAD", b"refs/heads/main", b"refs/tags/v1^{}",
    b"capabilities^{}", b"symref=HEAD:refs/heads/main", b"symref-target:refs/heads/main",
    b"peeled:", b"multi_ack_detailed", b"side-band-64k", b"1", b"blob:none", b"\x00", b"\xff",
    b"", b" ",
]
word = st.one_of(st.sampled_from(WORDS), any_oid, st.binary(max_size=8))
line = st.builds(
    lambda words, sep, lf: sep.join(words) + (b"\n" if lf else b""),
    st.lists(word, min_size=1, max_size=5),
    st.sampled_from([b" ", b" ", b"\x00", b"=", b":", b""]),
    st.booleans(),
)
packet = st.one_of(
    st.builds(Pkt, st.just(PktKind.DATA), line),
    st.builds(Pkt, st.just(PktKind.DATA), st.binary(max_size=40)),
    st.sampled_from([FLUSH_PKT, FLUSH_PKT, DELIM_PKT, RESPONSE_END_PKT]),
)
packets = st.lists(packet, max_size=14)
# Raw bytes, a well-framed stream of protocol words, or such a stream cut or extended.
wire = st.one_of(
    st.binary(max_size=300),
    packets.map(pktline.encode),
    st.tuples(packets.map(pktline.encode), st.integers(0, 400), st.binary(max_size=6)).map(
        lambda t: t[0][: t[1]] + t[2]
    ),
)

Parser = Callable[[bytes], object]
PARSERS: list[Parser] = [
    pktline.decode, request.parse_v2, request.parse_v0, refs.parse_info_refs, refs.parse_ls_refs,
]
PARSER_IDS = ["decode", "parse_v2", "parse_v0", "parse_info_refs", "parse_ls_refs"]


@pytest.mark.parametrize("parse", PARSERS, ids=PARSER_IDS)
@FUZZ
@given(data=wire)
@example(data=b"0000")
@example(data=b"0003")
@example(data=b"0011command=fetch0001000ddone\n0000")
def test_any_bytes_parse_or_raise_protocol_error(parse: Parser, data: bytes) -> None:
    try:
        parse(data)
    except ProtocolError as e:
        assert e.culprit in ("client", "upstream")
        assert "\n" not in e.reason


@FUZZ
@given(pkts=packets)
def test_encode_then_decode_is_identity(pkts: list[Pkt]) -> None:
    assert pktline.decode(pktline.encode(pkts)) == pkts


@FUZZ
@given(pkts=packets, cuts=st.lists(st.integers(0, 600), max_size=6))
def test_chunking_does_not_change_decoded_packets(pkts: list[Pkt], cuts: list[int]) -> None:
    stream = pktline.encode(pkts)
    decoder = PktDecoder()
    got: list[Pkt] = []
    start = 0
    for cut in sorted(c for c in cuts if c <= len(stream)):
        got += decoder.feed(stream[start:cut])
        start = cut
    got += decoder.feed(stream[start:])
    decoder.close()
    assert got == pkts


methods = st.sampled_from(["GET", "POST", "PUT", "HEAD", "get", ""])
route_path = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda prefix, middle, suffix: prefix + middle + suffix,
        st.sampled_from(["/", "//", "", "/org/", "/%2e%2e/", "/./"]),
        st.text(st.characters(codec="utf-8"), max_size=40),
        st.sampled_from(["/info/refs?service=git-upload-pack", "/git-upload-pack",
                         "/info/refs?service=git-receive-pack", "/git-receive-pack",
                         "/info/refs", "/info/refs?service=git-upload-pack&service="]),
    ),
)


@FUZZ
@given(method=methods, path=route_path)
def test_classify_any_text_returns_route_or_protocol_error(method: str, path: str) -> None:
    try:
        result = routes.classify(method, path)
    except ProtocolError:
        return
    assert isinstance(result, routes.GitTarget)
    if result.kind in (routes.Service.INFO_REFS, routes.Service.UPLOAD_PACK):
        assert path.startswith(result.repo_path)  # kept exactly, never rewritten


# What mitmproxy's Request.path holds: the raw target decoded with surrogateescape.
raw_target = st.builds(
    lambda middle, suffix: (b"/org/" + middle + suffix).decode("utf-8", "surrogateescape"),
    st.binary(max_size=20),
    st.sampled_from([b"/git-upload-pack", b"/info/refs?service=git-upload-pack"]),
)


@FUZZ
@given(path=raw_target)
@example(path="/org/\udcff/git-upload-pack")
def test_classify_any_raw_request_target_returns_route_or_protocol_error(path: str) -> None:
    method = "GET" if "/info/refs" in path else "POST"
    with contextlib.suppress(ProtocolError):
        routes.classify(method, path)


# ---------------------------------------------------------------------- v2 fetch grammar

FLAGS = [b"done", b"thin-pack", b"no-progress", b"include-tag", b"ofs-delta", b"deepen-relative",
         b"wait-for-done"]
OK_CAPS = [b"agent=git/2.39.5", b"session-id=abc", b"object-format=sha1"]
# deepen-not and sparse filters name refs or blobs of the cache the upstream may no
# longer serve: they go upstream too.
NOT_ALLOWED = [b"want-ref refs/heads/main", b"sideband-all", b"packfile-uris https",
               b"server-option", b"done now", b"filter", b"no-such-arg", b"deepen-since",
               b"deepen-not refs/heads/old", b"deepen-not v1.0",
               b"filter sparse:oid=" + b"a" * 40, b"filter combine:blob:none+sparse:oid=x"]

want_line = oid1.map(lambda o: b"want " + o)
allowed_line = st.one_of(
    want_line,
    oid1.map(lambda o: b"have " + o),
    oid1.map(lambda o: b"shallow " + o),
    st.sampled_from(FLAGS),
    st.integers(0, 2**31).map(lambda n: b"deepen %d" % n),
    st.integers(0, 2**40).map(lambda n: b"deepen-since %d" % n),
    st.sampled_from([b"filter blob:none", b"filter tree:0", b"filter blob:limit=1k"]),
)
# Syntactically plausible lines, some malformed (bad oids, bad depths, NULs, junk).
any_arg_line = st.one_of(
    allowed_line,
    st.sampled_from(NOT_ALLOWED),
    st.builds(lambda k, o: k + b" " + o, st.sampled_from([b"want", b"have", b"shallow"]), any_oid),
    st.builds(lambda v: b"deepen " + v, st.binary(max_size=6)),
    line,
)


def v2_fetch(caps: list[bytes], args: list[bytes], lfs: list[bool]) -> bytes:
    terminated = [a + b"\n" if lf else a for a, lf in zip(args, lfs + [True] * len(args),
                                                           strict=False)]
    return pktline.encode([Pkt(PktKind.DATA, b"command=fetch"),
                           *(Pkt(PktKind.DATA, c + b"\n") for c in caps), DELIM_PKT,
                           *(Pkt(PktKind.DATA, a) for a in terminated), FLUSH_PKT])


@FUZZ
@given(
    caps=st.lists(st.sampled_from([*OK_CAPS, b"object-format=sha256", b"server-option=x"]),
                  max_size=3),
    args=st.lists(any_arg_line, max_size=12),
    lfs=st.lists(st.booleans(), max_size=12),
)
def test_v2_fetch_grammar_parses_or_raises_protocol_error(
    caps: list[bytes], args: list[bytes], lfs: list[bool]
) -> None:
    try:
        result = request.parse_v2(v2_fetch(caps, args, lfs))
    except ProtocolError:
        return
    assert isinstance(result, FetchRequest)


@FUZZ
@given(
    caps=st.lists(st.sampled_from(OK_CAPS), max_size=3),
    first_want=want_line,
    args=st.lists(allowed_line, max_size=12),
    lfs=st.lists(st.booleans(), max_size=13),
)
def test_v2_fetch_of_allowlisted_args_is_servable(
    caps: list[bytes], first_want: bytes, args: list[bytes], lfs: list[bool]
) -> None:
    all_args = [first_want, *args]
    result = request.parse_v2(v2_fetch(caps, all_args, lfs))
    assert result == FetchRequest(
        2,
        wants=tuple(a[5:].decode() for a in all_args if a.startswith(b"want ")),
        haves=tuple(a[5:].decode() for a in all_args if a.startswith(b"have ")),
        shallows=tuple(a[8:].decode() for a in all_args if a.startswith(b"shallow ")),
        done=b"done" in all_args,
        unservable=(),
    )


@FUZZ
@given(
    args=st.lists(allowed_line, min_size=1, max_size=10),
    extra=st.sampled_from([*NOT_ALLOWED, b"want " + b"a" * 64]),
    position=st.integers(0, 10),
)
def test_v2_fetch_with_any_unknown_arg_is_unservable(
    args: list[bytes], extra: bytes, position: int
) -> None:
    args.insert(position, extra)
    result = request.parse_v2(v2_fetch([], args, []))
    assert isinstance(result, FetchRequest)
    assert result.unservable
