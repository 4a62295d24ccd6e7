"""The upstream's ref answers (info/refs, ls-refs) and the cache-staleness comparison."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from goblet.protocol import pktline, refs
from goblet.protocol.errors import ProtocolError
from goblet.protocol.pktline import DELIM_PKT, FLUSH_PKT, Pkt, PktDecoder, PktKind
from goblet.protocol.refs import RefAdvertisement

if TYPE_CHECKING:
    from tests.unit.conftest import GitWire

A = "7aa2146a29940f8769e70f62eaa723fa0ff72a4f"
B = "24dcde016213df9b5392b4fba262860090130afa"
C = "7d8352aeb13f809a13ed9d94287fe96fab03e626"
S256 = "1c11b0b897f2dab4ab14bceaa6969f5f39fd6d2d2b111353af99e4eb0a6a0917"
ZERO = "0" * 40
SERVICE = b"# service=git-upload-pack\n"


def body(*items: bytes | Pkt) -> bytes:
    return pktline.encode(i if isinstance(i, Pkt) else Pkt(PktKind.DATA, i) for i in items)


def parse_bytewise(parse: Callable[[bytes], RefAdvertisement], data: bytes) -> RefAdvertisement:
    """Decode ``data`` one byte at a time, then parse the re-framed packets."""
    decoder = PktDecoder("upstream")
    pkts: list[Pkt] = []
    for i in range(len(data)):
        pkts += decoder.feed(data[i : i + 1])
    decoder.close()
    assert pkts == pktline.decode(data)
    return parse(pktline.encode(pkts))


def adv(version: int, refs_: dict[str, str] | None = None, peeled: dict[str, str] | None = None,
        symrefs: dict[str, str] | None = None, caps: tuple[str, ...] = ()) -> RefAdvertisement:
    return RefAdvertisement(version, refs_ or {}, peeled or {}, symrefs or {}, caps)


# ---------------------------------------------------------------------------- info/refs

FIRST = f"{A} HEAD\0multi_ack symref=HEAD:refs/heads/main agent=git/2.39.5\n".encode()
CAPS = ("multi_ack", "symref=HEAD:refs/heads/main", "agent=git/2.39.5")
V0_REFS = {"HEAD": A, "refs/heads/main": A}

INFO_VALID = [
    pytest.param(body(SERVICE, FLUSH_PKT, FIRST, f"{A} refs/heads/main\n".encode(), FLUSH_PKT),
                 adv(0, V0_REFS, symrefs={"HEAD": "refs/heads/main"}, caps=CAPS),
                 id="v0-smart-http"),
    pytest.param(body(FIRST, f"{A} refs/heads/main\n".encode(), FLUSH_PKT),
                 adv(0, V0_REFS, symrefs={"HEAD": "refs/heads/main"}, caps=CAPS),
                 id="v0-without-service-preamble"),
    pytest.param(body(SERVICE, FLUSH_PKT, b"version 1\n", FIRST, FLUSH_PKT),
                 adv(1, {"HEAD": A}, symrefs={"HEAD": "refs/heads/main"}, caps=CAPS),
                 id="v1"),
    pytest.param(body(SERVICE, FLUSH_PKT, FLUSH_PKT), adv(0), id="v0-empty-repo-git-2.39"),
    pytest.param(body(SERVICE, FLUSH_PKT, f"{ZERO} capabilities^{{}}\0ofs-delta\n".encode(),
                      FLUSH_PKT),
                 adv(0, caps=("ofs-delta",)), id="v0-empty-repo-capabilities-line"),
    pytest.param(body(FIRST, f"{B} refs/tags/v1\n".encode(), f"{C} refs/tags/v1^{{}}\n".encode(),
                      FLUSH_PKT),
                 adv(0, {"HEAD": A, "refs/tags/v1": B}, {"refs/tags/v1": C},
                     {"HEAD": "refs/heads/main"}, CAPS),
                 id="peeled-tag"),
    pytest.param(body(f"{A} HEAD\0symref=HEAD:refs/heads/x symref=refs/remotes/o/HEAD:"
                      f"refs/remotes/o/main\n".encode(), FLUSH_PKT),
                 adv(0, {"HEAD": A}, symrefs={"HEAD": "refs/heads/x",
                                              "refs/remotes/o/HEAD": "refs/remotes/o/main"},
                     caps=("symref=HEAD:refs/heads/x",
                           "symref=refs/remotes/o/HEAD:refs/remotes/o/main")),
                 id="two-symrefs"),
    pytest.param(body(f"{A} refs/heads/main\0\n".encode(), FLUSH_PKT),
                 adv(0, {"refs/heads/main": A}), id="empty-capability-list"),
    pytest.param(body(f"{A} refs/heads/main\0".encode(), FLUSH_PKT),
                 adv(0, {"refs/heads/main": A}), id="no-lf"),
    pytest.param(body(f"{S256} HEAD\0object-format=sha256\n".encode(), FLUSH_PKT),
                 adv(0, {"HEAD": S256}, caps=("object-format=sha256",)), id="sha256-oid"),
    pytest.param(body(b"version 2\n", b"agent=git/2.39.5\n", b"ls-refs=unborn\n", FLUSH_PKT),
                 adv(2, caps=("agent=git/2.39.5", "ls-refs=unborn")), id="v2"),
    pytest.param(body(b"version 2\n", FLUSH_PKT), adv(2), id="v2-no-capabilities"),
]


@pytest.mark.parametrize(("data", "expected"), INFO_VALID)
def test_parse_info_refs_whole(data: bytes, expected: RefAdvertisement) -> None:
    assert refs.parse_info_refs(data) == expected


@pytest.mark.parametrize(("data", "expected"), INFO_VALID)
def test_parse_info_refs_byte_by_byte(data: bytes, expected: RefAdvertisement) -> None:
    assert parse_bytewise(refs.parse_info_refs, data) == expected


@pytest.mark.parametrize(("data", "expected"), INFO_VALID)
def test_parse_info_refs_rejects_truncation(data: bytes, expected: RefAdvertisement) -> None:
    with pytest.raises(ProtocolError, match="truncated") as err:
        refs.parse_info_refs(data[:-1])
    assert err.value.culprit == "upstream"


INFO_INVALID = [
    pytest.param(b"", "without a flush-pkt", id="empty-body"),
    pytest.param(body(b"# service=git-receive-pack\n", FLUSH_PKT, FIRST, FLUSH_PKT),
                 "unexpected service line", id="receive-pack-service"),
    pytest.param(body(b"# service=git-upload-pack2\n", FLUSH_PKT, FIRST, FLUSH_PKT),
                 "unexpected service line", id="service-suffix"),
    pytest.param(body(SERVICE), "service line not followed by a flush-pkt",
                 id="service-only"),
    pytest.param(body(SERVICE, FIRST, FLUSH_PKT), "service line not followed by a flush-pkt",
                 id="service-then-ref"),
    pytest.param(body(SERVICE, FLUSH_PKT), "without a flush-pkt", id="service-then-nothing"),
    pytest.param(body(f"{A} HEAD\n".encode(), FLUSH_PKT), "has no capability list",
                 id="first-ref-without-nul"),
    pytest.param(body(FIRST, f"{A}\n".encode(), FLUSH_PKT), "malformed ref line",
                 id="ref-without-name"),
    pytest.param(body(FIRST, f"{A} \n".encode(), FLUSH_PKT), "malformed ref line",
                 id="ref-with-empty-name"),
    pytest.param(body(f"{A[:-1]} HEAD\0caps\n".encode(), FLUSH_PKT), "bad object id",
                 id="oid-39-hex"),
    pytest.param(body(FIRST, f"{A}0 refs/heads/x\n".encode(), FLUSH_PKT), "bad object id",
                 id="oid-41-hex"),
    pytest.param(body(FIRST, f"{A.upper()} refs/heads/x\n".encode(), FLUSH_PKT),
                 "bad object id", id="oid-upper-case"),
    pytest.param(body(FIRST, f"{S256[:-1]} refs/heads/x\n".encode(), FLUSH_PKT),
                 "bad object id", id="oid-63-hex"),
    pytest.param(body(FIRST), "without a flush-pkt", id="no-final-flush"),
    pytest.param(body(FIRST, DELIM_PKT, FLUSH_PKT), "unexpected special packet", id="delim"),
    pytest.param(body(FIRST, FLUSH_PKT, f"{A} refs/heads/x\n".encode()),
                 "data after the ref advertisement", id="data-after-flush"),
    pytest.param(body(FIRST, FLUSH_PKT, FLUSH_PKT), "data after the ref advertisement",
                 id="flush-after-flush"),
    pytest.param(body(b"version 2\n", b"agent=git\n"), "without a flush-pkt",
                 id="v2-no-flush"),
    pytest.param(body(b"version 2\n", DELIM_PKT, FLUSH_PKT), "unexpected special packet",
                 id="v2-delim"),
    pytest.param(body(b"version 2\n", b"agent=\xff\n", FLUSH_PKT), "non-UTF-8",
                 id="v2-non-utf8"),
    pytest.param(b"0003", "invalid pkt-line length", id="bad-framing"),
    # two names differing only in bytes that are not UTF-8 would read as one
    pytest.param(body(FIRST, f"{A} refs/tags/\xfe\n".encode("latin-1"), FLUSH_PKT), "non-UTF-8",
                 id="v0-non-utf8-name"),
]


@pytest.mark.parametrize(("data", "message"), INFO_INVALID)
def test_parse_info_refs_rejects(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as err:
        refs.parse_info_refs(data)
    assert err.value.culprit == "upstream"


# Regression: the v2 capability list used to ignore whatever followed its flush-pkt.
def test_v2_capabilities_reject_data_after_flush() -> None:
    with pytest.raises(ProtocolError, match="after"):
        refs.parse_info_refs(body(b"version 2\n", b"agent=x\n", FLUSH_PKT, b"junk\n"))


# ---------------------------------------------------------------------------- ls-refs

LS_VALID = [
    pytest.param(b"0000", adv(2), id="no-refs"),
    pytest.param(body(f"{A} HEAD symref-target:refs/heads/main\n".encode(),
                      f"{A} refs/heads/main\n".encode(),
                      f"{B} refs/tags/v1 peeled:{C}\n".encode(), FLUSH_PKT),
                 adv(2, {"HEAD": A, "refs/heads/main": A, "refs/tags/v1": B},
                     {"refs/tags/v1": C}, {"HEAD": "refs/heads/main"}),
                 id="as-git-clone"),
    pytest.param(body(b"unborn HEAD symref-target:refs/heads/main\n", FLUSH_PKT),
                 adv(2, symrefs={"HEAD": "refs/heads/main"}), id="unborn-head"),
    pytest.param(body(b"unborn HEAD\n", FLUSH_PKT), adv(2), id="unborn-without-target"),
    pytest.param(body(f"{A} refs/heads/x".encode(), FLUSH_PKT), adv(2, {"refs/heads/x": A}),
                 id="no-lf"),
    pytest.param(body(f"{A} refs/heads/x future-attr:1\n".encode(), FLUSH_PKT),
                 adv(2, {"refs/heads/x": A}), id="unknown-attribute-ignored"),
    pytest.param(body(f"{S256} refs/heads/x peeled:{S256}\n".encode(), FLUSH_PKT),
                 adv(2, {"refs/heads/x": S256}, {"refs/heads/x": S256}), id="sha256"),
    pytest.param(body(f"{A} refs/remotes/o/HEAD symref-target:refs/remotes/o/main\n".encode(),
                      FLUSH_PKT),
                 adv(2, {"refs/remotes/o/HEAD": A},
                     symrefs={"refs/remotes/o/HEAD": "refs/remotes/o/main"}),
                 id="non-head-symref"),
]


@pytest.mark.parametrize(("data", "expected"), LS_VALID)
def test_parse_ls_refs_whole(data: bytes, expected: RefAdvertisement) -> None:
    assert refs.parse_ls_refs(data) == expected


@pytest.mark.parametrize(("data", "expected"), LS_VALID)
def test_parse_ls_refs_byte_by_byte(data: bytes, expected: RefAdvertisement) -> None:
    assert parse_bytewise(refs.parse_ls_refs, data) == expected


@pytest.mark.parametrize(("data", "expected"), LS_VALID)
def test_parse_ls_refs_rejects_trailing_data(data: bytes, expected: RefAdvertisement) -> None:
    for tail, message in ((f"{A} refs/heads/y\n".encode(), "data after"),
                          (b"0000", "data after"), (b"00", "truncated")):
        tail_pkt = body(tail) if tail.startswith(A.encode()) else tail
        with pytest.raises(ProtocolError, match=message) as err:
            refs.parse_ls_refs(data + tail_pkt)
        assert err.value.culprit == "upstream"


LS_INVALID = [
    pytest.param(b"", "without a flush-pkt", id="empty-body"),
    pytest.param(body(f"{A} refs/heads/x\n".encode()), "without a flush-pkt", id="no-flush"),
    pytest.param(body(f"{A}\n".encode(), FLUSH_PKT), "malformed ls-refs line", id="oid-only"),
    pytest.param(body(f"{A} \n".encode(), FLUSH_PKT), "malformed ls-refs line", id="empty-name"),
    pytest.param(body(f"{A}  refs/heads/x\n".encode(), FLUSH_PKT), "malformed ls-refs line",
                 id="double-space"),
    pytest.param(body(f"{A[:-1]} refs/heads/x\n".encode(), FLUSH_PKT), "bad object id",
                 id="oid-39-hex"),
    pytest.param(body(b"born refs/heads/x\n", FLUSH_PKT), "bad object id",
                 id="oid-word"),
    pytest.param(body(f"{A} refs/tags/v peeled:{C[:-1]}\n".encode(), FLUSH_PKT),
                 "bad object id", id="bad-peeled"),
    pytest.param(body(f"{A} refs/tags/v peeled:\n".encode(), FLUSH_PKT), "bad object id",
                 id="empty-peeled"),
    pytest.param(body(f"{A} refs/heads/\xff\n".encode("latin-1"), FLUSH_PKT), "non-UTF-8",
                 id="non-utf8"),
    pytest.param(body(DELIM_PKT, FLUSH_PKT), "unexpected special packet", id="delim"),
    pytest.param(body(f"{A} refs/heads/x\n".encode(), FLUSH_PKT, FLUSH_PKT), "data after",
                 id="two-flushes"),
]


@pytest.mark.parametrize(("data", "message"), LS_INVALID)
def test_parse_ls_refs_rejects(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as err:
        refs.parse_ls_refs(data)
    assert err.value.culprit == "upstream"


# ---------------------------------------------------------------------------- real git 2.39

Expect = Callable[[dict[str, str]], RefAdvertisement]
V2_CAPS = ("agent=git/2.39.5", "ls-refs=unborn", "fetch=shallow wait-for-done filter",
           "server-option", "object-format=sha1", "object-info")
V0_CAPS = ("multi_ack", "thin-pack", "side-band", "side-band-64k", "ofs-delta", "shallow",
           "deepen-since", "deepen-not", "deepen-relative", "no-progress", "include-tag",
           "multi_ack_detailed", "no-done", "symref=HEAD:refs/heads/main")

REAL_INFO: list[tuple[str, Expect]] = [
    ("v0-clone", lambda o: adv(
        0, {"HEAD": o["c2"], "refs/heads/main": o["c2"], "refs/tags/v1": o["v1"]},
        {"refs/tags/v1": o["c1"]}, {"HEAD": "refs/heads/main"},
        (*V0_CAPS, "filter", "object-format=sha1", "agent=git/2.39.5"))),
    ("v0-incremental", lambda o: adv(
        0, {"HEAD": o["c3"], "refs/heads/main": o["c3"], "refs/tags/v1": o["v1"]},
        {"refs/tags/v1": o["c1"]}, {"HEAD": "refs/heads/main"},
        (*V0_CAPS, "filter", "object-format=sha1", "agent=git/2.39.5"))),
    ("v0-sha256", lambda o: adv(
        0, {"HEAD": o["sha256"], "refs/heads/main": o["sha256"]}, {},
        {"HEAD": "refs/heads/main"}, (*V0_CAPS, "object-format=sha256", "agent=git/2.39.5"))),
    ("v0-empty", lambda o: adv(0)),
    ("v2-clone", lambda o: adv(2, caps=V2_CAPS)),
    ("v2-sha256", lambda o: adv(2, caps=(
        "agent=git/2.39.5", "ls-refs=unborn", "fetch=shallow wait-for-done", "server-option",
        "object-format=sha256", "object-info"))),
    ("v2-ref-in-want", lambda o: adv(2, caps=(
        "agent=git/2.39.5", "ls-refs=unborn", "fetch=shallow wait-for-done ref-in-want",
        "server-option", "object-format=sha1", "object-info"))),
]

REAL_LS_REFS: list[tuple[str, Expect]] = [
    ("v2-clone", lambda o: adv(
        2, {"HEAD": o["c2"], "refs/heads/main": o["c2"], "refs/tags/v1": o["v1"]},
        {"refs/tags/v1": o["c1"]}, {"HEAD": "refs/heads/main"})),
    ("v2-incremental", lambda o: adv(
        2, {"refs/heads/main": o["c3"], "refs/tags/v1": o["v1"]}, {"refs/tags/v1": o["c1"]})),
    ("v2-sha256", lambda o: adv(
        2, {"HEAD": o["sha256"], "refs/heads/main": o["sha256"]},
        symrefs={"HEAD": "refs/heads/main"})),
    ("v2-empty", lambda o: adv(2, symrefs={"HEAD": "refs/heads/main"})),
]


@pytest.mark.parametrize(("session", "expect"), REAL_INFO, ids=[n for n, _ in REAL_INFO])
def test_real_git_info_refs(git_wire: GitWire, session: str, expect: Expect) -> None:
    exchange = git_wire.info_refs(session)
    assert exchange.status == 200
    expected = expect(git_wire.oids)
    assert refs.parse_info_refs(exchange.response) == expected
    assert parse_bytewise(refs.parse_info_refs, exchange.response) == expected
    with pytest.raises(ProtocolError, match="truncated"):
        refs.parse_info_refs(exchange.response[:-2])


@pytest.mark.parametrize(("session", "expect"), REAL_INFO, ids=[n for n, _ in REAL_INFO])
def test_real_git_info_refs_rejects_trailing_data(
    git_wire: GitWire, session: str, expect: Expect
) -> None:
    with pytest.raises(ProtocolError, match="data after"):
        refs.parse_info_refs(git_wire.info_refs(session).response + body(b"extra\n"))


@pytest.mark.parametrize(("session", "expect"), REAL_LS_REFS, ids=[n for n, _ in REAL_LS_REFS])
def test_real_git_ls_refs(git_wire: GitWire, session: str, expect: Expect) -> None:
    (exchange,) = [e for e in git_wire.posts(session) if b"command=ls-refs" in e.body]
    expected = expect(git_wire.oids)
    assert refs.parse_ls_refs(exchange.response) == expected
    assert parse_bytewise(refs.parse_ls_refs, exchange.response) == expected
    with pytest.raises(ProtocolError, match="data after"):
        refs.parse_ls_refs(exchange.response + body(f"{A} refs/heads/y\n".encode()))


@pytest.mark.parametrize(
    ("git_protocol", "version"), [(None, 0), ("version=1", 1), ("version=2", 2)],
    ids=["unset", "version=1", "version=2"],
)
def test_real_upload_pack_advertisement_without_service_preamble(
    git_wire: GitWire, git_protocol: str | None, version: int
) -> None:
    """What ``git upload-pack --stateless-rpc --advertise-refs`` prints for each GIT_PROTOCOL."""
    env = dict(git_wire.env)
    if git_protocol:
        env["GIT_PROTOCOL"] = git_protocol
    out = git_wire.git("upload-pack", "--stateless-rpc", "--advertise-refs",
                       str(git_wire.root / "plain.git"), env=env).stdout
    parsed = refs.parse_info_refs(out)
    assert parsed.version == version
    assert parsed.object_format == "sha1"
    if version < 2:
        assert parsed.refs["refs/heads/main"] == git_wire.oids["c3"]
        assert parsed.symrefs == {"HEAD": "refs/heads/main"}
    else:
        assert parsed.refs == {}
        assert "object-format=sha1" in parsed.capabilities


# ---------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        pytest.param((), "sha1", id="default"),
        pytest.param(("agent=x", "object-format=sha256"), "sha256", id="sha256"),
        pytest.param(("object-format=sha1",), "sha1", id="explicit-sha1"),
        pytest.param(("object-format",), "sha1", id="no-equals-is-not-the-cap"),
        pytest.param(("xobject-format=sha256",), "sha1", id="prefix-must-match"),
    ],
)
def test_object_format(caps: tuple[str, ...], expected: str) -> None:
    assert adv(0, caps=caps).object_format == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("refs/heads/main", True),
        ("refs/tags/v1", True),
        ("HEAD", False),
        ("refs/pull/1/head", False),
        ("refs/notes/commits", False),
        ("refs/heads", False),
        ("refs/remotes/origin/main", False),
    ],
)
def test_mirrored(name: str, expected: bool) -> None:
    assert refs.mirrored(name) is expected


MAIN, DEV, TAG = "refs/heads/main", "refs/heads/dev", "refs/tags/v1"

DIFFER = [
    pytest.param({}, {}, (), False, id="both-empty"),
    pytest.param({MAIN: A, TAG: B}, {MAIN: A, TAG: B}, (), False, id="identical"),
    pytest.param({MAIN: A}, {MAIN: C}, (), True, id="branch-moved"),
    pytest.param({TAG: A}, {TAG: B}, (), True, id="tag-moved"),
    pytest.param({MAIN: A, DEV: B}, {MAIN: A}, (), True, id="new-upstream-branch"),
    pytest.param({MAIN: A}, {MAIN: A, DEV: B}, (), True, id="branch-deleted-upstream"),
    pytest.param({MAIN: A}, {}, (), True, id="cache-empty"),
    pytest.param({}, {MAIN: A}, (), True, id="upstream-empty-full-view"),
    pytest.param({"HEAD": A, "refs/pull/1/head": B, MAIN: A}, {MAIN: A}, (), False,
                 id="unmirrored-upstream-refs-ignored"),
    pytest.param({MAIN: A}, {MAIN: A, "refs/notes/x": B}, (), False,
                 id="unmirrored-cache-refs-ignored"),
    pytest.param({MAIN: A}, {MAIN: A, DEV: B}, ("refs/heads/main",), False,
                 id="cache-ref-outside-partial-view"),
    pytest.param({MAIN: A}, {MAIN: A, "refs/heads/main-old": B}, ("refs/heads/main",), True,
                 id="prefix-matches-by-string"),
    pytest.param({MAIN: A}, {MAIN: A, TAG: B}, ("refs/heads/", "refs/tags/"), True,
                 id="cache-tag-deleted-in-view"),
    pytest.param({}, {MAIN: A}, ("refs/tags/",), False, id="empty-partial-view"),
    pytest.param({MAIN: C}, {MAIN: A}, ("refs/tags/",), True,
                 id="listed-ref-compared-even-outside-prefixes"),
    pytest.param({MAIN: A}, {MAIN: A}, ("HEAD",), False, id="head-only-view"),
]


@pytest.mark.parametrize(("upstream", "cache", "prefixes", "expected"), DIFFER)
def test_refs_differ(upstream: dict[str, str], cache: dict[str, str],
                     prefixes: tuple[str, ...], expected: bool) -> None:
    assert refs.refs_differ(upstream, cache, prefixes) is expected


def test_starts_with_any_agrees_with_str_startswith() -> None:
    rng = random.Random(7)
    alphabet = "rehfa/s-"
    for _ in range(300):
        prefixes = ["".join(rng.choices(alphabet, k=rng.randrange(0, 9)))
                    for _ in range(rng.randrange(1, 6))]
        asked = refs.starts_with_any(prefixes)
        for _ in range(20):
            name = "".join(rng.choices(alphabet, k=rng.randrange(0, 12)))
            assert asked(name) is any(name.startswith(p) for p in prefixes), (prefixes, name)


def test_a_partial_view_of_git_s_most_prefixes_is_compared_ref_by_ref() -> None:
    """git takes up to 65,535 ``ref-prefix`` lines; the comparison of such a view with a
    cache of many refs looks each ref up (it once tried every prefix on every ref)."""
    cache = {f"refs/heads/b{i}": A for i in range(1500)}
    prefixes = tuple(f"refs/tags/x{i}" for i in range(65_535))
    assert not refs.refs_differ({}, cache, prefixes)
    assert refs.refs_differ({}, cache, (*prefixes, "refs/heads/b14"))  # b14, b140…: deleted
