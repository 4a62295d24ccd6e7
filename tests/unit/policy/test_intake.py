"""How a request body is received: streamed past the cap, timed when goblet reads it."""

from __future__ import annotations

import pytest
from goblet.policy.bodies import Intake, intake
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
