"""NoticeInserter on real upload-pack answers: whole, byte at a time, split anywhere, with
trailing data; and on any bytes at all (hypothesis).

The spec: the output is the answer with one band-2 packet inserted right before its
first side-band packet, or the answer unchanged if it has none (before the first bytes
that are not a pkt-line header); how the answer is split into chunks changes nothing.
"""

from __future__ import annotations

import http.client
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from goblet.protocol import pktline
from goblet.protocol.pktline import MAX_PAYLOAD, PktKind
from goblet.protocol.sideband import NoticeInserter, band2_packet
from hypothesis import given, settings
from hypothesis import strategies as st

if TYPE_CHECKING:
    from tests.unit.conftest import GitWire

NOTICE = "goblet: served from the cache while the upstream is unreachable"
PACKET = band2_packet(NOTICE)


def through(answer: bytes, sizes: list[int] | None = None) -> bytes:
    """``answer`` fed in chunks of ``sizes`` (the rest at once; None: whole), then closed."""
    inserter = NoticeInserter(NOTICE)
    out, at = b"", 0
    for size in sizes or []:
        out += inserter.feed(answer[at:at + size])
        at += size
    return out + inserter.feed(answer[at:]) + inserter.close()


def bytewise(answer: bytes) -> bytes:
    return through(answer, [1] * len(answer))


def first_band_packet(answer: bytes) -> int:
    """Where the first side-band packet of an all-pkt-line answer starts."""
    at = 0
    for pkt in pktline.decode(answer, "upstream"):
        if pkt.kind is PktKind.DATA and pkt.payload[:1] in (b"\x01", b"\x02", b"\x03"):
            return at
        at += 4 + len(pkt.payload)
    raise AssertionError("no side-band packet")


def fetch_answer(wire: GitWire, session: str) -> bytes:
    [*_, last] = wire.posts(session)
    assert last.status == 200
    return last.response


SIDEBAND_SESSIONS = ["v2-clone", "v2-shallow", "v2-incremental", "v0-clone", "v0-incremental"]


@pytest.mark.parametrize("session", SIDEBAND_SESSIONS)
def test_the_notice_goes_right_before_the_first_band_packet(git_wire: GitWire,
                                                             session: str) -> None:
    answer = fetch_answer(git_wire, session)
    at = first_band_packet(answer)
    expected = answer[:at] + PACKET + answer[at:]
    assert through(answer) == expected
    assert bytewise(answer) == expected
    assert through(answer, [at, 1]) == expected  # cut right at the band packet's header
    assert through(answer, [at + 4]) == expected  # ... and between header and band byte


@pytest.mark.parametrize("session", ["v2-clone", "v0-clone"])
def test_what_follows_the_notice_passes_untouched(git_wire: GitWire, session: str) -> None:
    answer = fetch_answer(git_wire, session)
    at = first_band_packet(answer)
    trailing = b"not pkt-lines at all \x00\xff" + answer
    expected = answer[:at] + PACKET + answer[at:] + trailing
    assert through(answer + trailing) == expected
    assert bytewise(answer + trailing) == expected


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_split_of_a_real_answer_gives_the_same_output(git_wire: GitWire,
                                                          data: st.DataObject) -> None:
    answer = fetch_answer(git_wire, data.draw(st.sampled_from(SIDEBAND_SESSIONS)))
    sizes = data.draw(st.lists(st.integers(0, 300), max_size=30))
    assert through(answer, sizes) == through(answer)


def raw_v0_answer(wire: GitWire) -> bytes:
    """A v0 answer without side-band: ``NAK`` then the raw pack."""
    want = wire.posts("v0-clone")[-1].body[9:49]  # the oid of its first want line
    body = pktline.encode_data(b"want " + want + b"\n") + pktline.FLUSH
    body += pktline.encode_data(b"done\n")
    parts = urlsplit(wire.base_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request("POST", "/plain.git/git-upload-pack", body=body,
                     headers={"Content-Type": "application/x-git-upload-pack-request"})
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read()
    finally:
        conn.close()


def test_an_answer_without_side_band_passes_unchanged(git_wire: GitWire) -> None:
    answer = raw_v0_answer(git_wire)
    assert answer.startswith(b"0008NAK\nPACK")
    assert through(answer) == answer
    assert bytewise(answer) == answer
    assert through(answer, [8, 4]) == answer


@pytest.mark.parametrize("answer", [
    b"",
    b"0000",
    b"003f" + b"a" * 40 + b" refs/heads/main\n" + b"0000",  # an ls-refs answer: no bands
    b"0014acknowledgments\n0008NAK\n0000",
    pktline.error_packet("upstream is down"),
], ids=["empty", "flush", "ls-refs", "acks-only", "ERR"])
def test_an_answer_that_ends_before_any_band_packet_passes_unchanged(answer: bytes) -> None:
    assert through(answer) == answer
    assert bytewise(answer) == answer


def test_a_cut_answer_is_flushed_by_close() -> None:
    inserter = NoticeInserter(NOTICE)
    assert inserter.feed(b"0008NAK\n00") == b"0008NAK\n"  # holds the half header back
    assert inserter.close() == b"00"


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=200), sizes=st.lists(st.integers(0, 50), max_size=20))
def test_any_bytes_come_out_whole_with_the_notice_at_most_once(data: bytes,
                                                               sizes: list[int]) -> None:
    whole = through(data)
    assert through(data, sizes) == whole
    assert whole == data or any(whole == data[:k] + PACKET + data[k:]
                                for k in range(len(data) + 1))


@settings(max_examples=200, deadline=None)
@given(head=st.lists(st.sampled_from([b"0000", b"0001", b"0002", b"0008NAK\n",
                                      b"000dpackfile\n", b"0014acknowledgments\n"]),
                     max_size=6),
       band=st.sampled_from([b"\x01", b"\x02", b"\x03"]), rest=st.binary(max_size=40))
def test_generated_answers_get_the_notice_before_their_first_band(head: list[bytes],
                                                                  band: bytes,
                                                                  rest: bytes) -> None:
    prefix = b"".join(head)
    answer = prefix + pktline.encode_data(band + b"x") + rest
    assert through(answer) == prefix + PACKET + answer[len(prefix):]


@pytest.mark.parametrize(("message", "line"), [
    ("served from cache", b"served from cache"),
    ("two\nlines\r\x1b[31m", b"two lines  [31m"),
    ("  padded  ", b"padded"),
])
def test_the_notice_is_one_printable_progress_line(message: str, line: bytes) -> None:
    [pkt] = pktline.decode(band2_packet(message))
    assert pkt.payload == b"\x02" + line + b"\n"


def test_a_long_notice_still_fits_one_packet() -> None:
    [pkt] = pktline.decode(band2_packet("x" * 100_000))
    assert len(pkt.payload) <= MAX_PAYLOAD and pkt.payload.startswith(b"\x02xxx")
