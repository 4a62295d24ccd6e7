"""upload-pack request bodies → typed requests; what the cache may answer (``unservable``);
what decides an answer for the pack cache (``cache_identity``).

Real bodies come from the ``git_wire`` fixture (git 2.39 talking to git http-backend);
the literal tables below reach every branch, and each valid body is also fed byte by
byte and with trailing data.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from goblet.protocol import pktline, request
from goblet.protocol.errors import ProtocolError
from goblet.protocol.pktline import DELIM_PKT, FLUSH_PKT, RESPONSE_END_PKT, Pkt, PktDecoder, PktKind
from goblet.protocol.request import (
    FetchRequest,
    LsRefsRequest,
    OtherCommand,
    ProbeRequest,
)
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.support.packs import objects_in
from tests.support.repos import clean_env, git, make_bare_repo

if TYPE_CHECKING:
    from tests.unit.conftest import GitWire

A = "7aa2146a29940f8769e70f62eaa723fa0ff72a4f"
FILTER = "filter other than blob:none, blob:limit, tree or object:type"
B = "24dcde016213df9b5392b4fba262860090130afa"
C = "7d8352aeb13f809a13ed9d94287fe96fab03e626"
S256 = "1c11b0b897f2dab4ab14bceaa6969f5f39fd6d2d2b111353af99e4eb0a6a0917"
AGENT = b"agent=git/2.39.5"
SHA1 = b"object-format=sha1"
V0_CAPS = (b"multi_ack_detailed no-done side-band-64k thin-pack no-progress ofs-delta "
           b"deepen-since deepen-not agent=git/2.39.5")

Line = bytes | Pkt


def body(*items: Line) -> bytes:
    """Frame ``items``: bytes become data packets (LF written out where git sends one)."""
    return pktline.encode(i if isinstance(i, Pkt) else Pkt(PktKind.DATA, i) for i in items)


def fetch_v2(*args: bytes, caps: tuple[bytes, ...] = (AGENT, SHA1)) -> bytes:
    """A v2 fetch as git 2.39 frames it: ``command=fetch`` without LF, args with LF."""
    return body(b"command=fetch", *caps, DELIM_PKT, *(a + b"\n" for a in args), FLUSH_PKT)


def ls_refs(*args: bytes) -> bytes:
    return body(b"command=ls-refs\n", AGENT, SHA1, DELIM_PKT, *(a + b"\n" for a in args),
                FLUSH_PKT)


def fetch(
    wants: tuple[str, ...] = (A,),
    haves: tuple[str, ...] = (),
    shallows: tuple[str, ...] = (),
    done: bool = False,
    unservable: tuple[str, ...] = (),
    version: int = 2,
) -> FetchRequest:
    return FetchRequest(version, wants, haves, shallows, done, unservable)


def bytewise_pkts(data: bytes) -> list[Pkt]:
    decoder = PktDecoder()
    out: list[Pkt] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    decoder.close()
    return out


# ---------------------------------------------------------------------------- v2, valid

V2_VALID = [
    pytest.param(b"0000", ProbeRequest(), id="probe-flush-only"),
    pytest.param(
        ls_refs(b"peel", b"symrefs", b"unborn", b"ref-prefix HEAD", b"ref-prefix refs/heads/",
                b"ref-prefix refs/tags/"),
        LsRefsRequest(("HEAD", "refs/heads/", "refs/tags/"), peel=True, symrefs=True,
                      unborn=True),
        id="ls-refs-as-git-clone",
    ),
    pytest.param(ls_refs(b"peel", b"symrefs", b"unborn"),
                 LsRefsRequest((), peel=True, symrefs=True, unborn=True), id="ls-refs-ls-remote"),
    pytest.param(body(b"command=ls-refs\n", FLUSH_PKT),
                 LsRefsRequest((), peel=False, symrefs=False, unborn=False), id="ls-refs-bare"),
    pytest.param(ls_refs(b"symrefs"),
                 LsRefsRequest((), peel=False, symrefs=True, unborn=False), id="ls-refs-one-flag"),
    pytest.param(ls_refs(b"ref-prefix"),
                 LsRefsRequest((), peel=False, symrefs=False, unborn=False),
                 id="ls-refs-prefix-without-value-is-no-prefix"),
    pytest.param(ls_refs(b"ref-prefix refs/heads/caf\xc3\xa9"),
                 LsRefsRequest(("refs/heads/café",), False, False, False), id="ls-refs-utf8"),
    pytest.param(ls_refs(b"peel now"), LsRefsRequest((), False, False, False),
                 id="ls-refs-flag-with-value-is-not-the-flag"),
    pytest.param(fetch_v2(b"thin-pack", b"no-progress", b"ofs-delta", b"want " + A.encode(),
                          b"done"),
                 fetch(done=True), id="fetch-as-git-clone"),
    pytest.param(body(b"command=fetch\n", AGENT, SHA1, DELIM_PKT, b"want " + A.encode() + b"\n",
                      b"done\n", FLUSH_PKT),
                 fetch(done=True), id="fetch-command-with-lf"),
    pytest.param(body(b"command=fetch", DELIM_PKT, b"want " + A.encode(), b"done", FLUSH_PKT),
                 fetch(done=True), id="fetch-no-caps-no-lf-anywhere"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"want " + A.encode(), b"want " + B.encode()),
                 fetch(wants=(A, A, B)), id="fetch-duplicate-wants-kept-in-order"),
    pytest.param(fetch_v2(b"thin-pack", b"no-progress", b"include-tag", b"ofs-delta",
                          b"deepen-relative", b"wait-for-done", b"want " + A.encode()),
                 fetch(), id="fetch-every-flag-arg"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"deepen 1"), fetch(), id="fetch-deepen-1"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"deepen 2147483647"), fetch(),
                 id="fetch-deepen-large"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"deepen-since 1700000000"), fetch(),
                 id="fetch-deepen-since"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"deepen-not refs/heads/old"),
                 fetch(unservable=("argument deepen-not",)), id="fetch-deepen-not"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"filter sparse:oid=" + B.encode()),
                 fetch(unservable=(FILTER,)), id="fetch-filter-sparse"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"filter blob:none"), fetch(),
                 id="fetch-filter-blob-none"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"have " + B.encode(), b"have " + C.encode()),
                 fetch(haves=(B, C)), id="fetch-negotiation-round"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"shallow " + B.encode(), b"deepen 1", b"done"),
                 fetch(shallows=(B,), done=True), id="fetch-shallow"),
    pytest.param(fetch_v2(b"want " + A.encode(), caps=(AGENT, b"session-id=abc", SHA1)),
                 fetch(), id="fetch-session-id-cap"),
    pytest.param(fetch_v2(b"want " + A.encode(), caps=()), fetch(), id="fetch-no-caps"),
    # --- valid, but the cache must leave them to the upstream
    pytest.param(fetch_v2(b"thin-pack", b"want-ref refs/heads/main", b"done"),
                 fetch(wants=(), done=True, unservable=("argument want-ref", "no wants")),
                 id="want-ref-unservable"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"sideband-all"),
                 fetch(unservable=("argument sideband-all",)), id="sideband-all-unservable"),
    pytest.param(fetch_v2(b"packfile-uris https", b"want " + A.encode()),
                 fetch(unservable=("argument packfile-uris",)), id="packfile-uris-unservable"),
    pytest.param(fetch_v2(b"want " + A.encode(), caps=(AGENT, SHA1, b"server-option=x")),
                 fetch(unservable=("server option",)), id="server-option-unservable"),
    pytest.param(fetch_v2(b"want " + A.encode(), caps=(AGENT, b"server-option=goblet-max-age=0")),
                 fetch(), id="goblet-server-option-servable"),
    pytest.param(fetch_v2(b"want " + S256.encode(), b"done",
                          caps=(AGENT, b"object-format=sha256")),
                 fetch(wants=(), done=True,
                       unservable=("object-format sha256", "sha256 object id", "no wants")),
                 id="sha256-unservable"),
    pytest.param(fetch_v2(b"want " + A.encode(), caps=(AGENT, b"object-format")),
                 fetch(unservable=("object-format ",)), id="object-format-without-value"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"frobnicate"),
                 fetch(unservable=("argument frobnicate",)), id="unknown-flag-unservable"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"done please", b"thin-pack yes"),
                 fetch(unservable=("argument done", "argument thin-pack")),
                 id="flag-args-with-a-value-unservable"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"filter", b"deepen-since"),
                 fetch(unservable=("argument filter", "argument deepen-since")),
                 id="value-args-without-value-unservable"),
    pytest.param(fetch_v2(b"have " + A.encode(), b"done"),
                 fetch(wants=(), haves=(A,), done=True, unservable=("no wants",)),
                 id="no-wants-unservable"),
    pytest.param(body(b"command=fetch", b"want " + A.encode() + b"\n", FLUSH_PKT),
                 fetch(wants=(), unservable=(f"capability want {A}", "no wants")),
                 id="args-without-delim-are-caps"),
    pytest.param(body(b"command=object-info\n", AGENT, DELIM_PKT, b"size\n", FLUSH_PKT),
                 OtherCommand("object-info"), id="object-info"),
    pytest.param(body(b"command=bundle-uri", FLUSH_PKT), OtherCommand("bundle-uri"),
                 id="bundle-uri"),
    pytest.param(body(b"command=a" + b"b" * 63, FLUSH_PKT), OtherCommand("a" + "b" * 63),
                 id="command-name-64-chars"),
]


@pytest.mark.parametrize(("data", "expected"), V2_VALID)
def test_parse_v2_whole(data: bytes, expected: request.V2Request) -> None:
    assert request.parse_v2(data) == expected


@pytest.mark.parametrize(("data", "expected"), V2_VALID)
def test_parse_v2_same_packets_byte_by_byte(data: bytes, expected: request.V2Request) -> None:
    pkts = bytewise_pkts(data)
    assert pkts == pktline.decode(data)
    assert request.parse_v2(pktline.encode(pkts)) == expected


@pytest.mark.parametrize(("data", "expected"), V2_VALID)
def test_parse_v2_rejects_trailing_data(data: bytes, expected: request.V2Request) -> None:
    for tail in (b"0009done\n", b"0000", b"00", b"0009do"):
        with pytest.raises(ProtocolError):
            request.parse_v2(data + tail)


def test_flush_only_body_is_a_probe() -> None:
    # git's 0000 probe and the v2 "empty request" are the same bytes; both go upstream.
    assert request.parse_v2(b"0000") == ProbeRequest()


# ---------------------------------------------------------------------------- v2, invalid

LONG_OK = b"deepen-not " + b"r" * (4096 - len(b"deepen-not "))

V2_INVALID = [
    pytest.param(b"", "empty request body", id="empty-body"),
    pytest.param(body(b"command=fetch", DELIM_PKT, b"want " + A.encode()),
                 "does not end with a flush-pkt", id="no-final-flush"),
    pytest.param(body(b"command=fetch", DELIM_PKT, b"done\n", DELIM_PKT),
                 "does not end with a flush-pkt", id="ends-with-delim"),
    pytest.param(body(AGENT, b"command=fetch", FLUSH_PKT), "does not start with command=",
                 id="command-not-first"),
    pytest.param(body(DELIM_PKT, FLUSH_PKT), "does not start with command=", id="delim-first"),
    pytest.param(body(b" command=fetch", FLUSH_PKT), "does not start with command=",
                 id="leading-space"),
    pytest.param(body(b"command=fetch", DELIM_PKT, b"done\n", DELIM_PKT, FLUSH_PKT),
                 "two delim-pkts", id="two-delims"),
    pytest.param(body(b"command=fetch", DELIM_PKT, FLUSH_PKT, b"done\n", FLUSH_PKT),
                 "unexpected flush-pkt inside", id="flush-inside"),
    pytest.param(body(b"command=fetch", DELIM_PKT, RESPONSE_END_PKT, FLUSH_PKT),
                 "unexpected response-end-pkt inside", id="response-end-inside"),
    pytest.param(fetch_v2(b"want"), "want line without an object id", id="want-no-oid"),
    pytest.param(fetch_v2(b"have"), "have line without an object id", id="have-no-oid"),
    pytest.param(fetch_v2(b"shallow"), "shallow line without an object id", id="shallow-no-oid"),
    pytest.param(fetch_v2(b"want "), "bad object id in 'want' line", id="want-empty-oid"),
    pytest.param(fetch_v2(b"want " + A[:-1].encode()), "bad object id", id="oid-39-hex"),
    pytest.param(fetch_v2(b"want " + A.encode() + b"0"), "bad object id", id="oid-41-hex"),
    pytest.param(fetch_v2(b"want " + S256[:-1].encode()), "bad object id", id="oid-63-hex"),
    pytest.param(fetch_v2(b"want " + A.upper().encode()), "bad object id", id="oid-upper-case"),
    pytest.param(fetch_v2(b"want " + b"g" * 40), "bad object id", id="oid-non-hex"),
    pytest.param(fetch_v2(b"want  " + A.encode()), "bad object id", id="oid-double-space"),
    pytest.param(fetch_v2(b"have " + A.encode() + b" extra"), "bad object id",
                 id="oid-trailing-word"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"deepen abc"), "bad deepen value",
                 id="deepen-not-a-number"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"deepen -1"), "bad deepen value",
                 id="deepen-negative"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"deepen "), "bad deepen value",
                 id="deepen-empty"),
    pytest.param(fetch_v2(b"want " + A.encode(), "deepen \u0661".encode()), "bad deepen value",
                 id="deepen-non-ascii-digit"),
    pytest.param(fetch_v2(b"want " + A.encode(), b"done\x00"), "control character",
                 id="nul-in-arg"),
    pytest.param(fetch_v2(b"want " + A.encode() + b"\nwant " + B.encode()), "control character",
                 id="lf-inside-arg"),
    pytest.param(fetch_v2(b"want " + A.encode(), caps=(b"agent=a\x00b",)), "control character",
                 id="nul-in-cap"),
    pytest.param(body(b"command=fetch\x00", FLUSH_PKT), "control character", id="nul-in-command"),
    pytest.param(fetch_v2(LONG_OK + b"r"), "4097 bytes is too long", id="arg-4097-bytes"),
    pytest.param(body(b"command=" + b"x" * 4089, FLUSH_PKT), "4097 bytes is too long",
                 id="command-line-4097-bytes"),
    pytest.param(body(b"command=", FLUSH_PKT), "bad v2 command", id="empty-command"),
    pytest.param(body(b"command=Fetch", FLUSH_PKT), "bad v2 command", id="command-case"),
    pytest.param(body(b"command=-x", FLUSH_PKT), "bad v2 command", id="command-leading-dash"),
    pytest.param(body(b"command=a" + b"b" * 64, FLUSH_PKT), "bad v2 command",
                 id="command-name-65-chars"),
    pytest.param(body(b"command=ls refs", FLUSH_PKT), "bad v2 command", id="command-space"),
    pytest.param(b"0003", "invalid pkt-line length", id="bad-framing"),
    pytest.param(b"00", "truncated", id="truncated-framing"),
]


@pytest.mark.parametrize(("data", "message"), V2_INVALID)
def test_parse_v2_rejects(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as err:
        request.parse_v2(data)
    assert err.value.culprit == "client"


def test_arg_of_exactly_4096_bytes_is_accepted() -> None:
    assert request.parse_v2(fetch_v2(b"want " + A.encode(), LONG_OK)) == fetch(
        unservable=("argument deepen-not",))


# ---------------------------------------------------------------------------- v0, valid

W = b"want " + A.encode()
V0_VALID = [
    pytest.param(b"0000", ProbeRequest(), id="probe"),
    pytest.param(body(W + b" " + V0_CAPS + b"\n", b"want " + B.encode() + b"\n", FLUSH_PKT,
                      b"done\n"),
                 fetch(wants=(A, B), done=True, version=0), id="clone-as-git"),
    pytest.param(body(W + b"\n", FLUSH_PKT, b"done\n"), fetch(done=True, version=0),
                 id="no-caps"),
    pytest.param(body(W + b"\n", FLUSH_PKT), fetch(version=0), id="want-list-only"),
    pytest.param(body(W, FLUSH_PKT, b"have " + B.encode(), FLUSH_PKT),
                 fetch(haves=(B,), version=0), id="negotiation-round-no-lf"),
    pytest.param(body(W + b"\n", FLUSH_PKT, b"have " + B.encode() + b"\n",
                      b"have " + C.encode() + b"\n", b"done\n"),
                 fetch(haves=(B, C), done=True, version=0), id="haves-then-done"),
    pytest.param(body(W + b"\n", FLUSH_PKT, b"done\n", FLUSH_PKT),
                 fetch(done=True, version=0), id="flush-after-done"),
    pytest.param(body(W + b" shallow\n", b"shallow " + B.encode() + b"\n", b"deepen 1\n",
                      FLUSH_PKT, b"done\n"),
                 fetch(shallows=(B,), done=True, version=0), id="shallow-deepen"),
    pytest.param(body(W + b" deepen-since\n", b"deepen-since 1700000000\n",
                      b"deepen-not refs/tags/v1\n", FLUSH_PKT),
                 fetch(version=0, unservable=("argument deepen-not",)), id="deepen-since-not"),
    pytest.param(body(W + b" filter\n", b"filter blob:none\n", FLUSH_PKT),
                 fetch(version=0), id="filter"),
    pytest.param(body(W + b" object-format=sha1 session-id=x agent=git/2.39.5\n", FLUSH_PKT),
                 fetch(version=0), id="sha1-object-format"),
    pytest.param(body(W + b"  thin-pack  \n", FLUSH_PKT), fetch(version=0),
                 id="extra-spaces-between-caps"),
    pytest.param(body(W + b" report-status\n", FLUSH_PKT),
                 fetch(unservable=("capability report-status",), version=0),
                 id="unknown-cap-unservable"),
    pytest.param(body(W + b" object-format=sha256\n", FLUSH_PKT),
                 fetch(unservable=("object-format sha256",), version=0),
                 id="sha256-format-cap-unservable"),
    pytest.param(body(W + b" wait-for-done sideband-all\n", FLUSH_PKT),
                 fetch(unservable=("capability wait-for-done", "capability sideband-all"),
                       version=0),
                 id="v2-only-caps-unservable"),
]


@pytest.mark.parametrize(("data", "expected"), V0_VALID)
def test_parse_v0_whole(data: bytes, expected: FetchRequest | ProbeRequest) -> None:
    assert request.parse_v0(data) == expected


@pytest.mark.parametrize(("data", "expected"), V0_VALID)
def test_parse_v0_same_packets_byte_by_byte(
    data: bytes, expected: FetchRequest | ProbeRequest
) -> None:
    pkts = bytewise_pkts(data)
    assert pkts == pktline.decode(data)
    assert request.parse_v0(pktline.encode(pkts)) == expected


@pytest.mark.parametrize(("data", "expected"), V0_VALID)
def test_parse_v0_rejects_incomplete_trailing_packet(
    data: bytes, expected: FetchRequest | ProbeRequest
) -> None:
    for tail in (b"0", b"0009done"):
        with pytest.raises(ProtocolError, match="truncated"):
            request.parse_v0(data + tail)


@pytest.mark.parametrize("version", [0, 1])
def test_parse_v0_reports_the_version_it_was_given(version: int) -> None:
    parsed = request.parse_v0(body(W + b"\n", FLUSH_PKT), version)
    assert isinstance(parsed, FetchRequest)
    assert parsed.version == version


# ---------------------------------------------------------------------------- v0, invalid

V0_INVALID = [
    pytest.param(b"", "empty request body", id="empty-body"),
    pytest.param(b"00000000", "without a want line", id="two-flushes-only"),
    pytest.param(body(W + b"\n"), "does not end its want list with a flush-pkt", id="no-flush"),
    pytest.param(body(W, FLUSH_PKT, FLUSH_PKT, FLUSH_PKT), "too many flush-pkts",
                 id="three-flushes"),
    pytest.param(body(W, DELIM_PKT, FLUSH_PKT), "unexpected delim-pkt", id="delim"),
    pytest.param(body(W, FLUSH_PKT, RESPONSE_END_PKT), "unexpected response-end-pkt",
                 id="response-end"),
    pytest.param(body(W, FLUSH_PKT, b"done\n", b"have " + B.encode()), "data after 'done'",
                 id="data-after-done"),
    pytest.param(body(W, FLUSH_PKT, b"done", FLUSH_PKT, b"done"), "data after 'done'",
                 id="done-twice"),
    pytest.param(body(W + b"\n", b"want " + B.encode() + b" thin-pack\n", FLUSH_PKT),
                 "capabilities on a want line other than the first", id="caps-on-second-want"),
    pytest.param(body(b"want\n", FLUSH_PKT), "want line without an object id", id="want-no-oid"),
    pytest.param(body(b"want  thin-pack\n", FLUSH_PKT), "bad object id", id="want-empty-oid"),
    pytest.param(body(b"want " + A[:-1].encode() + b"\n", FLUSH_PKT), "bad object id",
                 id="want-39-hex"),
    pytest.param(body(W, FLUSH_PKT, b"have " + B[:-1].encode()), "bad object id",
                 id="have-39-hex"),
    pytest.param(body(W, FLUSH_PKT, b"have"), "unexpected line 'have' in v0 negotiation",
                 id="have-no-oid"),
    pytest.param(body(W, FLUSH_PKT, b"want " + B.encode()), "in v0 negotiation",
                 id="want-after-flush"),
    pytest.param(body(W, FLUSH_PKT, b"done now"), "in v0 negotiation", id="done-with-value"),
    pytest.param(body(b"have " + B.encode(), FLUSH_PKT), "in a v0 want list",
                 id="have-in-want-list"),
    pytest.param(body(W, b"shallow", FLUSH_PKT), "in a v0 want list", id="shallow-no-oid"),
    pytest.param(body(W, b"deepen", FLUSH_PKT), "in a v0 want list", id="deepen-no-value"),
    pytest.param(body(W, b"deepen 1x", FLUSH_PKT), "bad deepen value", id="deepen-not-a-number"),
    pytest.param(body(W, b"frobnicate", FLUSH_PKT), "in a v0 want list", id="unknown-line"),
    pytest.param(body(b"command=fetch", FLUSH_PKT), "in a v0 want list", id="v2-body"),
    pytest.param(body(W + b"\x00thin-pack", FLUSH_PKT), "control character", id="nul"),
    pytest.param(body(W, FLUSH_PKT, b"have " + B.encode() + b"\n\n"), "control character",
                 id="two-lfs"),
    pytest.param(body(W + b" " + b"c" * 4100, FLUSH_PKT), "too long", id="line-too-long"),
]


@pytest.mark.parametrize(("data", "message"), V0_INVALID)
def test_parse_v0_rejects(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as err:
        request.parse_v0(data)
    assert err.value.culprit == "client"


# ---------------------------------------------------------------------------- real git 2.39

Expect = Callable[[dict[str, str]], object]

# (session, index of the POST, expected result built from the upstream's oids)
REAL_V2: list[tuple[str, int, Expect]] = [
    ("v2-clone", 0, lambda o: LsRefsRequest(("HEAD", "refs/heads/", "refs/tags/"), True, True,
                                             True)),
    ("v2-clone", 1, lambda o: fetch(wants=(o["c2"], o["c2"], o["v1"]), done=True)),
    ("v2-ls-remote", 0, lambda o: LsRefsRequest((), True, True, True)),
    ("v2-shallow", 1, lambda o: fetch(wants=(o["c2"], o["c2"]), done=True)),
    ("v2-filter", 1, lambda o: fetch(wants=(o["c2"], o["c2"], o["v1"]), done=True)),
    ("v2-incremental", 0, lambda o: LsRefsRequest(
        ("refs/heads/", "refs/heads/main", "refs/tags/"), True, True, True)),
    # haves: newest commit first (the fixture's commits have increasing dates)
    ("v2-incremental", 1, lambda o: fetch(wants=(o["c3"],), haves=(o["c2"], o["c1"]))),
    ("v2-ref-in-want", 1, lambda o: fetch(wants=(), done=True,
                                          unservable=("argument want-ref",) * 3 + ("no wants",))),
    ("v2-extras", 1, lambda o: fetch(
        wants=(o["c2"], o["c2"], o["v1"]), done=True,
        unservable=("argument sideband-all", "argument packfile-uris"))),
    ("v2-sha256", 1, lambda o: fetch(
        wants=(), done=True,
        unservable=("object-format sha256", "sha256 object id", "sha256 object id",
                    "no wants"))),
    ("v2-empty", 0, lambda o: LsRefsRequest(("HEAD", "refs/heads/", "refs/tags/"), True, True,
                                             True)),
]

REAL_V0: list[tuple[str, int, Expect]] = [
    ("v0-clone", 0, lambda o: fetch(wants=(o["c2"], o["v1"]), done=True, version=0)),
    ("v0-shallow", 0, lambda o: fetch(wants=(o["c2"],), version=0)),
    ("v0-shallow", 1, lambda o: fetch(wants=(o["c2"],), done=True, version=0)),
    ("v0-incremental", 0, lambda o: fetch(wants=(o["c3"],), haves=(o["c2"], o["c1"]),
                                          done=True, version=0)),
]


def _ids(table: list[tuple[str, int, Expect]]) -> list[str]:
    return [f"{name}-post{i}" for name, i, _ in table]


@pytest.mark.parametrize(("session", "index", "expect"), REAL_V2, ids=_ids(REAL_V2))
def test_real_git_v2_requests(git_wire: GitWire, session: str, index: int, expect: Expect) -> None:
    exchange = git_wire.posts(session)[index]
    assert dict(exchange.headers)["Git-Protocol"] == "version=2"
    assert request.parse_v2(exchange.body) == expect(git_wire.oids)
    assert request.parse_v2(pktline.encode(bytewise_pkts(exchange.body))) == expect(git_wire.oids)
    with pytest.raises(ProtocolError):
        request.parse_v2(exchange.body + b"0009done\n")
    with pytest.raises(ProtocolError, match="truncated"):
        request.parse_v2(exchange.body[:-1])


@pytest.mark.parametrize(("session", "index", "expect"), REAL_V0, ids=_ids(REAL_V0))
def test_real_git_v0_requests(git_wire: GitWire, session: str, index: int, expect: Expect) -> None:
    exchange = git_wire.posts(session)[index]
    assert "Git-Protocol" not in dict(exchange.headers)
    assert request.parse_v0(exchange.body) == expect(git_wire.oids)
    assert request.parse_v0(pktline.encode(bytewise_pkts(exchange.body))) == expect(git_wire.oids)
    with pytest.raises(ProtocolError, match="truncated"):
        request.parse_v0(exchange.body + b"0009don")


@pytest.mark.parametrize(("session", "index", "parse", "follows"), [
    ("v2-clone", 1, request.parse_v2, False),  # a clone wants its tags by name
    ("v2-incremental", 1, request.parse_v2, True),  # a fetch follows tags (include-tag)
    ("v0-clone", 0, request.parse_v0, False),
    ("v0-incremental", 0, request.parse_v0, True),
])
def test_real_git_tag_following_is_noted(git_wire: GitWire, session: str, index: int,
                                         parse: Callable[[bytes], object], follows: bool) -> None:
    exchange = git_wire.posts(session)[index]
    assert (b"include-tag" in exchange.body) is follows
    parsed = parse(exchange.body)
    assert isinstance(parsed, FetchRequest) and parsed.include_tag is follows


def test_real_git_v2_fetch_is_sent_without_lf_after_command(git_wire: GitWire) -> None:
    first = pktline.decode(git_wire.posts("v2-clone")[1].body)[0]
    assert first.payload == b"command=fetch"  # the reason parsing must not require the LF


def test_real_git_v0_shallow_first_round_has_no_done(git_wire: GitWire) -> None:
    first, second = git_wire.posts("v0-shallow")
    assert b"deepen 1" in first.body
    assert not request.parse_v0(first.body).done  # type: ignore[union-attr]
    assert request.parse_v0(second.body).done  # type: ignore[union-attr]


# Regression: git 2.39 sends no object-format capability in a v0 sha256 request, so the
# only sign is the 64-hex want; parse_v0 used to drop it and then call the body malformed.
def test_real_git_v0_sha256_request_is_unservable_not_malformed(git_wire: GitWire) -> None:
    (exchange,) = git_wire.posts("v0-sha256")
    assert b"object-format" not in exchange.body
    assert request.parse_v0(exchange.body) == fetch(
        wants=(), done=True, unservable=("sha256 object id",), version=0)


# -- cache_identity: what decides an answer, for the pack cache --------------------------
#
# The spec: two requests share an identity exactly when they are the same request once
# the ``agent=`` and ``session-id=`` capabilities are set aside (in v2 capability lines
# and on a v0 first want line); every other line, its order and every special packet
# count. A body that is not whole pkt-lines has none.

IDENTITY_SESSIONS = [("v2-clone", 1), ("v2-shallow", 1), ("v2-filter", 1),
                     ("v2-incremental", 1), ("v0-clone", 0), ("v0-shallow", 0),
                     ("v0-shallow", 1), ("v0-incremental", 0)]


def other_client(body_: bytes) -> bytes:
    """The same request from another git: other agent, and a session id."""
    pkts = []
    for p in pktline.decode(body_):
        payload = p.payload.replace(b"agent=git/2.39.5", b"agent=git/2.47.1-custom")
        if payload.startswith(b"agent="):
            pkts.append(Pkt(PktKind.DATA, b"session-id=a1b2c3"))
        pkts.append(Pkt(p.kind, payload))
    return pktline.encode(pkts)


@pytest.mark.parametrize(("session", "index"), IDENTITY_SESSIONS,
                         ids=[f"{s}-{i}" for s, i in IDENTITY_SESSIONS])
def test_the_same_request_from_another_client_has_the_same_identity(
    git_wire: GitWire, session: str, index: int
) -> None:
    sent = git_wire.posts(session)[index].body
    assert b"agent=git/2.39.5" in sent
    again = other_client(sent)
    assert again != sent
    identity = request.cache_identity(sent)
    assert identity is not None and b"agent=" not in identity
    assert request.cache_identity(again) == identity
    assert request.cache_identity(pktline.encode(bytewise_pkts(sent))) == identity


def test_different_real_requests_have_different_identities(git_wire: GitWire) -> None:
    bodies = {git_wire.posts(s)[i].body for s, i in IDENTITY_SESSIONS}
    assert len({request.cache_identity(b) for b in bodies}) == len(bodies)


@pytest.mark.parametrize(("session", "index"), IDENTITY_SESSIONS[:1] + IDENTITY_SESSIONS[4:5],
                         ids=["v2", "v0"])
def test_trailing_data_or_a_cut_never_passes_for_the_whole(git_wire: GitWire, session: str,
                                                           index: int) -> None:
    sent = git_wire.posts(session)[index].body
    identity = request.cache_identity(sent)
    assert request.cache_identity(sent + b"garbage") is None
    assert request.cache_identity(sent + b"00") is None
    assert request.cache_identity(sent + b"0000") not in (None, identity)  # another request
    for cut in range(len(sent)):
        assert request.cache_identity(sent[:cut]) != identity


def test_v0_capabilities_other_than_agent_and_session_count() -> None:
    def first_want(caps: bytes) -> bytes | None:
        return request.cache_identity(body(W0 + b" " + caps + b"\n", FLUSH_PKT,
                                           b"done\n"))

    base = first_want(b"side-band-64k ofs-delta agent=git/2.39.5")
    assert base == first_want(b"side-band-64k ofs-delta session-id=x agent=git/9")
    assert base == first_want(b"side-band-64k  ofs-delta agent=a")  # blank caps are no caps
    assert base != first_want(b"ofs-delta side-band-64k agent=git/2.39.5")  # order counts
    assert base != first_want(b"side-band ofs-delta agent=git/2.39.5")
    only_volatile = first_want(b"agent=git/2.39.5 session-id=s")
    assert only_volatile == request.cache_identity(body(W0 + b"\n", FLUSH_PKT, b"done\n"))


W0 = b"want " + A.encode()
TEXT_LINE = st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\0" not in b)
VOLATILE = st.sampled_from([b"agent=", b"session-id="]).flatmap(
    lambda key: TEXT_LINE.map(lambda value: key + value))
SPECIAL = st.sampled_from([FLUSH_PKT, DELIM_PKT, RESPONSE_END_PKT])


@given(lines=st.lists(st.one_of(TEXT_LINE, SPECIAL), max_size=12),
       volatile=st.lists(st.tuples(st.integers(0, 12), VOLATILE), max_size=4),
       lf=st.booleans())
def test_adding_volatile_capabilities_never_changes_the_identity(
    lines: list[bytes | Pkt], volatile: list[tuple[int, bytes]], lf: bool
) -> None:
    kept = [line for line in lines if not isinstance(line, bytes)
            or not line.startswith((b"agent=", b"session-id="))]
    plain = body(*kept)
    noisy = list(kept)
    for at, line in volatile:
        noisy.insert(min(at, len(noisy)), line + (b"\n" if lf else b""))
    assert request.cache_identity(body(*noisy)) == request.cache_identity(plain) is not None


@given(lines=st.lists(st.one_of(TEXT_LINE, SPECIAL), min_size=1, max_size=12),
       at=st.integers(0, 11), other=st.one_of(TEXT_LINE, SPECIAL))
def test_changing_any_other_line_changes_the_identity(lines: list[bytes | Pkt], at: int,
                                                      other: bytes | Pkt) -> None:
    def volatile(line: bytes | Pkt) -> bool:
        return isinstance(line, bytes) and (line.startswith((b"agent=", b"session-id="))
                                            or line.startswith(b"want "))
    at %= len(lines)
    assume(not volatile(lines[at]) and not volatile(other) and other != lines[at])
    changed = [*lines[:at], other, *lines[at + 1:]]
    assert request.cache_identity(body(*changed)) != request.cache_identity(body(*lines))


@pytest.mark.parametrize(("arg", "shaped"), [
    (b"deepen 1", True), (b"deepen-since 1700000000", True), (b"deepen-relative", True),
    (b"filter blob:none", True), (b"thin-pack", False), (b"include-tag", False),
])
def test_shaping_arguments_are_noted(arg: bytes, shaped: bool) -> None:
    got = request.parse_v2(fetch_v2(b"want " + A.encode(), arg))
    assert isinstance(got, FetchRequest) and got.shaped is shaped


# ------------------------------------------------------------------------ tag following

FOLLOWING = [  # (capabilities, whether git's upload-pack follows tags for them)
    ("include-tag", True), ("include-tag=1", True),
    ("agent=git/2.39.5\tinclude-tag", True), ("session-id=x\rinclude-tag", True),
    ("agent=git/2.39.5\x0binclude-tag", False), ("agent=git/2.39.5\x0cinclude-tag", False),
]


@pytest.mark.parametrize(("cap", "follows"), FOLLOWING)
def test_tag_following_is_never_left_in_what_the_cache_answers(tmp_path: Path, cap: str,
                                                                follows: bool) -> None:
    """Oracle: git's own upload-pack on a repo with an annotated tag. Whatever spelling of
    ``include-tag`` git honours, goblet either leaves the request to the upstream or
    takes it out of the body the cache answers."""
    repo = tmp_path / "r.git"
    make_bare_repo(repo, commits=3, annotated_tags=("v1",))
    tag = git("rev-parse", "refs/tags/v1", cwd=repo)
    head = git("rev-parse", "refs/heads/main", cwd=repo)
    body = (pktline.encode_data(f"want {head} multi_ack_detailed ofs-delta {cap}\n".encode())
            + b"0000" + pktline.encode_data(b"done\n"))

    def objects(answer_to: bytes) -> set[str]:
        out = subprocess.run(["git", "upload-pack", "--stateless-rpc", str(repo)],
                             input=answer_to, capture_output=True, check=True,
                             env=clean_env()).stdout
        return set(objects_in(out[out.index(b"PACK"):]))

    assert (tag in objects(body)) is follows
    parsed = request.parse_v0(body)
    assert isinstance(parsed, FetchRequest)
    if parsed.unservable:
        return  # the upstream answers
    assert parsed.include_tag or not follows
    served = request.without_include_tag(body)
    assert tag not in objects(served) and head in objects(served)


W_A = b"want " + A.encode()


@pytest.mark.parametrize(("sent", "served"), [
    (fetch_v2(b"thin-pack", b"include-tag", b"ofs-delta", W_A, b"done"),
     fetch_v2(b"thin-pack", b"ofs-delta", W_A, b"done")),
    (body(W_A + b"  include-tag  thin-pack\n", FLUSH_PKT, b"done\n"),
     body(W_A + b"   thin-pack\n", FLUSH_PKT, b"done\n")),
    (body(W_A + b" include-tag=1\n", b"want " + B.encode() + b"\n", FLUSH_PKT,
          b"have " + C.encode() + b"\n", b"done\n"),
     body(W_A + b"\n", b"want " + B.encode() + b"\n", FLUSH_PKT, b"have " + C.encode() + b"\n",
          b"done\n")),
    (body(W_A + b" ofs-delta include-tag", FLUSH_PKT), body(W_A + b" ofs-delta", FLUSH_PKT)),
], ids=["v2", "v0-spacing-kept", "v0-with-value-more-wants", "v0-no-lf"])
def test_without_include_tag_keeps_every_other_byte(sent: bytes, served: bytes) -> None:
    assert request.without_include_tag(sent) == served
    parse = request.parse_v2 if b"command=fetch" in sent else request.parse_v0
    before, after = parse(sent), parse(served)
    assert isinstance(before, FetchRequest) and isinstance(after, FetchRequest)
    assert before == after and before.include_tag and not after.include_tag


@pytest.mark.parametrize(("spec", "servable"), [
    (b"blob:none", True), (b"blob:limit=1k", True), (b"blob:limit=200", True),
    (b"tree:0", True), (b"object:type=blob", True),
    (b"combine:blob:none+tree:3", True), (b"combine:blob%3Anone+tree%3A3", True),
    (b"sparse:oid=" + B.encode(), False), (b"SPARSE:oid=x", False),
    (b"combine:tree:9+sparse%3Aoid%3D" + B.encode(), False),  # git decodes each part
    (b"combine:tree:9+sparse%3aoid%3dmain%3aREADME", False),
    (b"combine:blob:none+combine%3Atree%3A1", False),  # nested: the upstream's
    (b"blob:limit=-1", False), (b"tree:", False), (b"object:type=note", False), (b"", False),
])
def test_only_filters_that_name_no_object_are_servable(spec: bytes, servable: bool) -> None:
    assert request.servable_filter(spec) is servable
    parsed = request.parse_v2(fetch_v2(b"want " + A.encode(), b"filter " + spec))
    assert isinstance(parsed, FetchRequest)
    assert (FILTER not in parsed.unservable) is servable
