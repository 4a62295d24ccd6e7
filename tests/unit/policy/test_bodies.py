"""read_body and read_answer: which bodies goblet reads, decodes off the loop, or leaves alone."""

from __future__ import annotations

import asyncio
import gzip
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from goblet.policy.bodies import PASSED_ON, BodyVerdict, read_answer, read_body

CAP = 1000
BODY = b"0014command=ls-refs\n0000" * 10  # 250 bytes


def gz(data: bytes) -> bytes:
    """gzip with a fixed timestamp: test ids must be the same in every xdist worker."""
    return gzip.compress(data, mtime=0)


class Recording(ThreadPoolExecutor):
    """A worker pool that notes the threads its jobs ran in."""

    def __init__(self) -> None:
        super().__init__(1)
        self.threads: list[int] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def noted() -> Any:
            self.threads.append(threading.get_ident())
            return fn(*args, **kwargs)
        return super().submit(noted)


@pytest.fixture
def recording() -> Iterator[Recording]:
    with Recording() as executor:
        yield executor


def read(raw: bytes | None, enc: str | None, pool: Recording, cap: int = CAP) -> BodyVerdict:
    return asyncio.run(read_body(raw, enc, cap, pool))


@pytest.mark.parametrize("enc", [None, "", "identity", " Identity "])
def test_identity_bodies_are_taken_as_they_are_on_the_loop(enc: str | None,
                                                           recording: Recording) -> None:
    assert read(BODY, enc, recording) == BodyVerdict("inspected", BODY)
    assert read(b"x" * CAP, enc, recording).result == "inspected"  # at the cap
    assert recording.threads == []  # nothing to decode: no worker needed


@pytest.mark.parametrize(("enc", "encode"), [
    ("gzip", gz), ("x-gzip", gz), ("GZIP", gz),
    ("deflate", zlib.compress),
])
def test_compressed_bodies_are_decoded_in_the_executor(
        enc: str, encode: Callable[[bytes], bytes], recording: Recording) -> None:
    assert read(encode(BODY), enc, recording) == BodyVerdict("inspected", BODY)
    assert len(recording.threads) == 1 and recording.threads[0] != threading.get_ident()


def test_a_streamed_body_is_too_large(recording: Recording) -> None:
    assert read(None, "gzip", recording) == BodyVerdict("too_large", reason=PASSED_ON)
    assert recording.threads == []


@pytest.mark.parametrize(("raw", "enc"), [
    (b"x" * (CAP + 1), None),
    (gz(b"\0" * (CAP + 1)), "gzip"),
    (zlib.compress(b"\0" * (CAP + 1)), "deflate"),
])
def test_past_the_cap_a_body_passes_through(raw: bytes, enc: str | None,
                                            recording: Recording) -> None:
    assert read(raw, enc, recording) == BodyVerdict("too_large", reason=PASSED_ON)


def test_a_bomb_is_abandoned_at_the_cap(recording: Recording) -> None:
    """64 MiB of zeros in 64 KiB of gzip: decoding stops near the cap, not at 64 MiB."""
    c = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    bomb = b"".join(c.compress(block) for _ in range(64)) + c.flush()
    cap = 1024 * 1024
    tracemalloc.start()
    try:
        got = read(bomb, "gzip", recording, cap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == BodyVerdict("too_large", reason=PASSED_ON)
    assert peak < 8 * cap


@pytest.mark.parametrize("enc", ["br", "zstd", "gzip, gzip", "compress"])
def test_encodings_git_never_sends_are_not_decoded(enc: str, recording: Recording) -> None:
    got = read(gz(BODY), enc, recording)
    assert (got.result, got.body) == ("not_decoded", None) and got.reason
    assert recording.threads == []


@pytest.mark.parametrize(("raw", "enc"), [
    (gz(BODY)[:-4], "gzip"),  # truncated: its trailer cut off
    (gz(BODY)[:20], "gzip"),
    (gz(BODY) + b"junk", "gzip"),  # data after its end
    (b"not gzip at all", "gzip"),
    (b"", "gzip"),
    (b"\xff" * 40, "deflate"),
    (zlib.compress(BODY)[:-6], "deflate"),
])
def test_corrupt_or_truncated_compressed_bodies_are_invalid(raw: bytes, enc: str,
                                                            recording: Recording) -> None:
    got = read(raw, enc, recording)
    assert (got.result, got.body) == ("invalid", None)
    assert got.reason.startswith("goblet: undecodable request body: ")
    assert "\n" not in got.reason


@pytest.mark.parametrize(("raw", "enc", "expected"), [
    (gz(BODY), "gzip", BODY),
    (BODY, None, BODY),
    (None, None, None),  # streamed
    (b"x" * (CAP + 1), None, None),  # too large
    (gz(BODY)[:-4], "gzip", None),  # invalid
    (BODY, "br", None),  # not decoded
])
def test_read_answer_is_the_decoded_body_or_none(raw: bytes | None, enc: str | None,
                                                 expected: bytes | None,
                                                 recording: Recording) -> None:
    assert asyncio.run(read_answer(raw, enc, CAP, recording)) == expected
