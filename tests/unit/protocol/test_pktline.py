"""pkt-line framing: each stream whole, byte by byte, split anywhere, and with trailing data."""

from __future__ import annotations

import pytest
from goblet.protocol import pktline
from goblet.protocol.errors import ProtocolError
from goblet.protocol.pktline import (
    DELIM_PKT,
    FLUSH_PKT,
    MAX_PAYLOAD,
    RESPONSE_END_PKT,
    Pkt,
    PktDecoder,
    PktKind,
)


def data(payload: bytes) -> Pkt:
    return Pkt(PktKind.DATA, payload)


def feed_bytewise(stream: bytes, culprit: pktline.Culprit = "client") -> list[Pkt]:
    decoder = PktDecoder(culprit)
    out: list[Pkt] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    decoder.close()
    return out


# (stream, packets) — every stream here is complete and valid.
VALID = [
    pytest.param(b"", [], id="empty-stream"),
    pytest.param(b"0000", [FLUSH_PKT], id="flush"),
    pytest.param(b"0001", [DELIM_PKT], id="delim"),
    pytest.param(b"0002", [RESPONSE_END_PKT], id="response-end"),
    pytest.param(b"0004", [data(b"")], id="empty-data-pkt"),
    pytest.param(b"0005a", [data(b"a")], id="one-byte-payload"),
    pytest.param(b"0006a\n", [data(b"a\n")], id="text-line"),
    pytest.param(b"000Ahello\n", [data(b"hello\n")], id="upper-case-hex"),
    pytest.param(b"000ahello\n", [data(b"hello\n")], id="lower-case-hex"),
    pytest.param(b"000500000", [data(b"0"), FLUSH_PKT], id="payload-looks-like-length"),
    pytest.param(b"00080000", [data(b"0000")], id="payload-is-a-flush-pkt"),
    pytest.param(b"0005\x00", [data(b"\x00")], id="nul-payload"),
    pytest.param(
        b"0011command=fetch0014agent=git/2.39.500010009done\n0000",
        [data(b"command=fetch"), data(b"agent=git/2.39.5"), DELIM_PKT, data(b"done\n"),
         FLUSH_PKT],
        id="git-2.39-fetch-without-lf",
    ),
    pytest.param(
        b"0000000100020000", [FLUSH_PKT, DELIM_PKT, RESPONSE_END_PKT, FLUSH_PKT],
        id="only-special",
    ),
    pytest.param(
        b"fff0" + b"x" * MAX_PAYLOAD, [data(b"x" * MAX_PAYLOAD)], id="largest-pkt-65520",
    ),
]

# (stream, message fragment) — framing defects, each detected at a precise place.
INVALID = [
    pytest.param(b"0003", "invalid pkt-line length 3 at byte 0", id="length-3"),
    pytest.param(b"0000" + b"0003", "invalid pkt-line length 3 at byte 4", id="length-3-later"),
    pytest.param(b"000g", "bad pkt-line length '000g' at byte 0", id="non-hex"),
    pytest.param(b"0x10abcdefghijkl", "bad pkt-line length", id="0x-prefix"),
    pytest.param(b" 005a", "bad pkt-line length", id="leading-space"),
    pytest.param(b"+005a", "bad pkt-line length", id="plus-sign"),
    pytest.param(b"-001", "bad pkt-line length", id="minus-sign"),
    pytest.param(b"0006a\n00zz", "bad pkt-line length '00zz' at byte 6", id="bad-second-header"),
    pytest.param(b"\xff\xfe\xfd\xfc", "bad pkt-line length", id="binary-header"),
    pytest.param(b"0", "truncated pkt-line at byte 0 (1 bytes left)", id="one-byte"),
    pytest.param(b"000", "truncated pkt-line at byte 0 (3 bytes left)", id="three-bytes"),
    pytest.param(b"0006a", "truncated pkt-line at byte 0 (5 bytes left)", id="short-payload"),
    pytest.param(b"00000006a", "truncated pkt-line at byte 4 (5 bytes left)",
                 id="short-payload-after-flush"),
    pytest.param(b"0005", "truncated pkt-line at byte 0 (4 bytes left)", id="header-only"),
]


@pytest.mark.parametrize(("stream", "expected"), VALID)
def test_decode_whole(stream: bytes, expected: list[Pkt]) -> None:
    assert pktline.decode(stream) == expected


@pytest.mark.parametrize(("stream", "expected"), VALID)
def test_decode_byte_by_byte(stream: bytes, expected: list[Pkt]) -> None:
    assert feed_bytewise(stream) == expected


@pytest.mark.parametrize(("stream", "expected"), VALID)
def test_decode_split_at_every_offset(stream: bytes, expected: list[Pkt]) -> None:
    for cut in range(0, len(stream) + 1, max(1, len(stream) // 50)):
        decoder = PktDecoder()
        got = decoder.feed(stream[:cut])
        got += decoder.feed(stream[cut:])
        decoder.close()
        assert got == expected, cut


@pytest.mark.parametrize(("stream", "expected"), VALID)
def test_encode_round_trip(stream: bytes, expected: list[Pkt]) -> None:
    assert pktline.decode(pktline.encode(expected)) == expected
    # Canonical (lower-case hex) streams re-encode to the very same bytes.
    if stream == stream.lower():
        assert pktline.encode(expected) == stream


@pytest.mark.parametrize(("stream", "expected"), VALID)
def test_incomplete_trailing_packet_is_rejected(stream: bytes, expected: list[Pkt]) -> None:
    tail = b"0009done"  # a data packet announcing 9 bytes, 8 present
    with pytest.raises(ProtocolError, match=r"truncated pkt-line .*\(8 bytes left\)"):
        pktline.decode(stream + tail)
    decoder = PktDecoder()
    assert decoder.feed(stream + tail) == expected
    assert decoder.pending == len(tail)
    assert decoder.feed(b"\n") == [data(b"done\n")]
    assert decoder.pending == 0
    decoder.close()


@pytest.mark.parametrize(("stream", "message"), INVALID)
def test_invalid_whole(stream: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as err:
        pktline.decode(stream)
    assert message in str(err.value)
    assert err.value.culprit == "client"
    assert str(err.value).isascii() and str(err.value).isprintable()  # safe to show a user


@pytest.mark.parametrize(("stream", "message"), INVALID)
def test_invalid_byte_by_byte(stream: bytes, message: str) -> None:
    """Fed one byte at a time, the error and its byte offset are the same."""
    with pytest.raises(ProtocolError) as err:
        feed_bytewise(stream)
    assert message in str(err.value)


@pytest.mark.parametrize("culprit", ["client", "upstream"])
def test_culprit_is_carried(culprit: pktline.Culprit) -> None:
    with pytest.raises(ProtocolError) as err:
        pktline.decode(b"0003", culprit)
    assert err.value.culprit == culprit
    with pytest.raises(ProtocolError) as err:
        pktline.decode(b"0009x", culprit)
    assert err.value.culprit == culprit


def test_pending_counts_buffered_bytes_of_an_incomplete_packet() -> None:
    decoder = PktDecoder()
    assert decoder.pending == 0
    assert decoder.feed(b"00") == []
    assert decoder.pending == 2
    assert decoder.feed(b"0a") == []  # header complete, payload missing
    assert decoder.pending == 4
    assert decoder.feed(b"hello") == []
    assert decoder.pending == 9
    assert decoder.feed(b"\n0000000") == [data(b"hello\n"), FLUSH_PKT]
    assert decoder.pending == 3
    with pytest.raises(ProtocolError, match=r"truncated pkt-line at byte 14 \(3 bytes left\)"):
        decoder.close()


def test_error_offset_counts_bytes_of_earlier_feeds() -> None:
    decoder = PktDecoder()
    decoder.feed(b"0006a\n00")
    with pytest.raises(ProtocolError, match="at byte 6"):
        decoder.feed(b"zz")


def test_packet_of_65520_bytes_is_the_largest_accepted() -> None:
    assert len(pktline.decode(b"fff0" + b"x" * (0xFFF0 - 4))[0].payload) == MAX_PAYLOAD


# Regression: pkt-lens fff1..ffff used to be accepted although the grammar caps a
# data-pkt at 65520 bytes (and encode_data refuses to produce one).
@pytest.mark.parametrize("size", [0xFFF1, 0xFFFF], ids=["65521", "65535"])
def test_packet_longer_than_65520_bytes_is_rejected(size: int) -> None:
    stream = b"%04x" % size + b"x" * (size - 4)
    with pytest.raises(ProtocolError, match=f"invalid pkt-line length {size} at byte 0"):
        pktline.decode(stream)
    with pytest.raises(ProtocolError, match=f"invalid pkt-line length {size}"):
        PktDecoder().feed(stream[:4])  # refused from the header alone, before the payload


def test_line_strips_exactly_one_lf() -> None:
    assert data(b"want x\n").line == b"want x"
    assert data(b"want x").line == b"want x"
    assert data(b"a\n\n").line == b"a\n"
    assert data(b"\n").line == b""
    assert data(b"a\r\n").line == b"a\r"
    assert FLUSH_PKT.line == b""


@pytest.mark.parametrize(
    ("payload", "encoded"),
    [
        pytest.param(b"", b"0004", id="empty"),
        pytest.param(b"a", b"0005a", id="one"),
        pytest.param(b"x" * 12, b"0010" + b"x" * 12, id="hex-rollover-16"),
        pytest.param(b"x" * MAX_PAYLOAD, b"fff0" + b"x" * MAX_PAYLOAD, id="largest"),
    ],
)
def test_encode_data(payload: bytes, encoded: bytes) -> None:
    assert pktline.encode_data(payload) == encoded


def test_encode_data_refuses_one_byte_too_many() -> None:
    with pytest.raises(ValueError, match="65517 bytes exceeds 65516"):
        pktline.encode_data(b"x" * (MAX_PAYLOAD + 1))


def test_encode_line_adds_lf_and_utf8() -> None:
    assert pktline.encode_line("done") == b"0009done\n"
    assert pktline.encode_line("é") == b"0007\xc3\xa9\n"


@pytest.mark.parametrize(
    ("message", "expected_line"),
    [
        pytest.param("repository not cached", b"ERR repository not cached", id="plain"),
        pytest.param("two\nlines", b"ERR two lines", id="lf-flattened"),
        pytest.param("cr\rlf\r\n", b"ERR cr lf", id="cr-flattened-and-stripped"),
        pytest.param("\x1b[31mred\x1b[0m", b"ERR [31mred [0m", id="terminal-escape-removed"),
        pytest.param("nul\x00byte", b"ERR nul byte", id="nul"),
        pytest.param("  padded  ", b"ERR padded", id="stripped"),
        pytest.param("0000", b"ERR 0000", id="looks-like-flush"),
        pytest.param("naïve ✓", "ERR naïve ✓".encode(), id="utf8-kept"),
    ],
)
def test_error_packet_is_one_printable_line(message: str, expected_line: bytes) -> None:
    encoded = pktline.error_packet(message)
    assert pktline.decode(encoded) == [data(expected_line + b"\n")]


def test_error_packet_truncates_to_one_packet() -> None:
    encoded = pktline.error_packet("x" * 100_000)
    (pkt,) = pktline.decode(encoded)
    assert len(encoded) <= pktline.MAX_PKT_LEN
    assert pkt.payload.startswith(b"ERR xxx")
    assert pkt.payload.endswith(b"x\n")
