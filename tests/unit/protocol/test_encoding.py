"""Capped decoding of request bodies: whole, across step boundaries, bombs, bad streams."""

from __future__ import annotations

import gzip
import zlib

import pytest
from goblet.protocol.encoding import BodyTooLarge, decode_capped, inspectable
from goblet.protocol.errors import ProtocolError
from hypothesis import given, settings
from hypothesis import strategies as st

BODY = b"0032want " + b"1" * 40 + b"\n" + b"0009done\n0000"


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize("enc", [None, "", "identity", " Identity "])
def test_identity_is_the_body_itself(enc: str | None) -> None:
    assert decode_capped(BODY, enc, len(BODY)) == BODY
    with pytest.raises(BodyTooLarge):
        decode_capped(BODY, enc, len(BODY) - 1)


@pytest.mark.parametrize(("enc", "pack"), [
    ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("GZIP", gzip.compress),
    ("deflate", zlib.compress), ("deflate", raw_deflate),
])
def test_compressed_bodies_decode_exactly_up_to_the_cap(enc: str, pack: object) -> None:
    assert callable(pack)
    data = BODY * 5000  # larger than one step, so the stream is fed in pieces
    raw = pack(data)
    assert len(raw) > 0
    assert decode_capped(raw, enc, len(data)) == data
    with pytest.raises(BodyTooLarge):
        decode_capped(raw, enc, len(data) - 1)


def test_a_bomb_stops_at_the_cap() -> None:
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    bomb = b"".join(c.compress(chunk) for _ in range(256)) + c.flush()  # 256 MiB of zeros
    assert len(bomb) < 1 << 20
    with pytest.raises(BodyTooLarge):
        decode_capped(bomb, "gzip", 1 << 20)


@pytest.mark.parametrize("cut", [1, 10, 30, -8, -1])
def test_truncated_gzip_is_the_clients_fault(cut: int) -> None:
    raw = gzip.compress(BODY * 100)
    with pytest.raises(ProtocolError) as err:
        decode_capped(raw[:cut], "gzip", 1 << 20)
    assert err.value.culprit == "client"


@pytest.mark.parametrize(("enc", "raw"), [
    ("gzip", gzip.compress(BODY, mtime=0) + b"trailing"),
    ("gzip", gzip.compress(BODY, mtime=0) * 2),  # a second member: not git's
    ("gzip", b"not gzip at all"),
    ("deflate", b"\xff\xfe not deflate"),
], ids=["trailing-bytes", "two-members", "not-gzip", "not-deflate"])
def test_garbage_and_trailing_data_are_refused(enc: str, raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_capped(raw, enc, 1 << 20)


@pytest.mark.parametrize("enc", ["br", "zstd", "compress", "gzip, gzip", "gzip, br"])
def test_encodings_git_never_sends_are_not_inspected(enc: str) -> None:
    assert not inspectable(enc)
    with pytest.raises(ValueError, match="cannot decode"):
        decode_capped(b"x", enc, 10)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=2048), enc=st.sampled_from(["gzip", "deflate", "identity"]),
       cap=st.integers(min_value=0, max_value=4096))
def test_any_input_decodes_or_raises_our_errors(raw: bytes, enc: str, cap: int) -> None:
    try:
        out = decode_capped(raw, enc, cap)
    except (BodyTooLarge, ProtocolError):
        return
    assert len(out) <= cap


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=4096), enc=st.sampled_from(["gzip", "deflate"]))
def test_round_trip(data: bytes, enc: str) -> None:
    raw = gzip.compress(data) if enc == "gzip" else zlib.compress(data)
    assert decode_capped(raw, enc, len(data)) == data
