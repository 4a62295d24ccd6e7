"""How a request body is received: streamed past the cap, timed when goblet reads it."""

from __future__ import annotations

import pytest
from goblet.policy.bodies import Discard, Intake, intake, may_have_body
from goblet.policy.flows import Kind

CAP = 1000


@pytest.mark.parametrize(("kind", "length", "streamed", "expected"), [
    (Kind.UPLOAD_PACK, "", False, Intake(stream=False, timed=True)),  # chunked: read, timed
    (Kind.UPLOAD_PACK, "1000", False, Intake(stream=False, timed=True)),  # at the cap
    (Kind.UPLOAD_PACK, "1001", False, Intake(stream=True, timed=False)),  # past it
    (Kind.UPLOAD_PACK, "10", True, Intake(stream=True, timed=False)),  # mitmproxy streams
    (Kind.UPLOAD_PACK, "-5", False, Intake(stream=False, timed=True)),  # not a length
    (Kind.UPLOAD_PACK, "1e9", False, Intake(stream=False, timed=True)),
    (Kind.INFO_REFS, "", False, Intake(stream=False, timed=False)),  # GET: nothing to wait for
    (Kind.INFO_REFS, "5000", False, Intake(stream=True, timed=False)),
])
def test_intake(kind: Kind, length: str, streamed: bool, expected: Intake) -> None:
    assert intake(kind, length, CAP, streamed) == expected


def test_any_body_goblet_holds_is_timed() -> None:
    assert intake(Kind.INFO_REFS, "500", CAP, False, body=True) == Intake(False, True)
    assert intake(Kind.INFO_REFS, "5000", CAP, False, body=True) == Intake(True, False)


@pytest.mark.parametrize(("version", "headers", "expected"), [
    ("HTTP/1.1", [], False),
    ("HTTP/1.1", [(b"Content-Length", b"0")], False),
    ("HTTP/1.1", [(b"content-length", b"1")], True),
    ("HTTP/1.1", [(b"Transfer-Encoding", b"chunked")], True),
    ("HTTP/1.1", [(b"Content-Length", b"0"), (b"transfer-encoding", b"gzip")], True),
    ("HTTP/1.0", [(b"Content-Length", b"x")], True),  # not a length: maybe a body
    ("HTTP/2.0", [], True),  # frames its body itself
    ("HTTP/2.0", [(b"content-length", b"0")], False),
])
def test_may_have_body(version: str, headers: list[tuple[bytes, bytes]],
                       expected: bool) -> None:
    assert may_have_body(version, headers) is expected


def test_discard_drops_everything_and_calls_over_once() -> None:
    calls: list[int] = []
    drop = Discard(10, lambda: calls.append(1))
    assert drop(b"x" * 10) == [] and calls == []
    assert drop(b"x") == [] and calls == [1]
    assert drop(b"x" * 100) == [] and drop(b"") == [] and calls == [1]
