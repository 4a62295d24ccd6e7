"""The pure parts of goblet's own upstream requests: what counts as a grant or a yes."""

from __future__ import annotations

import asyncio

import pytest
from goblet.auth.credentials import Credential
from goblet.offline.ask import Finding, UpstreamAsker, answer_is_grant, served, serves_body
from goblet.offline.forward import UpstreamUnreachable
from goblet.offline.state import UpstreamState
from goblet.protocol import pktline, request

from tests.unit.offline.fakes import ADV, FakeForwarder, answer

RES = "application/x-git-upload-pack-result"
OID = "a" * 40
V0 = (pktline.encode_line("# service=git-upload-pack") + pktline.FLUSH
      + pktline.encode_data(f"{OID} HEAD\0multi_ack symref=HEAD:refs/heads/main\n".encode())
      + pktline.encode_line(f"{OID} refs/heads/main") + pktline.FLUSH)
V2 = pktline.encode_line("version 2") + pktline.encode_line("ls-refs") + pktline.FLUSH
LS = pktline.encode_line(f"{OID} refs/heads/main") + pktline.FLUSH
ERR = pktline.error_packet("access denied")


@pytest.mark.parametrize(("status", "ctype", "body", "ls_refs", "grant"), [
    (200, ADV, V0, False, True),
    (200, ADV + "; charset=x", V2, False, True),
    (200, RES, LS, True, True),
    (200, RES, pktline.FLUSH, True, True),  # an empty repo
    (200, ADV, ERR, False, False),  # a 200 carrying an ERR packet proves nothing
    (200, RES, ERR, True, False),
    (200, "text/html", V0, False, False),
    (200, RES, V0[:-3], True, False),
    (200, ADV, LS, True, False),  # wrong content type for ls-refs
    (203, ADV, V0, False, False),
    (401, ADV, V0, False, False),
])
def test_what_counts_as_a_grant(status: int, ctype: str, body: bytes, ls_refs: bool,
                                grant: bool) -> None:
    assert answer_is_grant(status, ctype, body, ls_refs=ls_refs) is grant


def test_the_v0_serves_probe_is_a_valid_v0_request() -> None:
    parsed = request.parse_v0(serves_body([OID], version=0))
    assert isinstance(parsed, request.FetchRequest)
    assert parsed.wants == (OID,) and parsed.haves == (OID,) and parsed.done


@pytest.mark.parametrize(("body", "yes"), [
    (pktline.encode_line(f"ACK {OID}") + b"PACK", True),
    (pktline.encode_line("NAK") + b"PACK", True),
    (pktline.error_packet(f"upload-pack: not our ref {OID}"), False),
    (pktline.encode_line("packfile"), False),
])
def test_what_counts_as_yes_in_v0(body: bytes, yes: bool) -> None:
    assert served(200, body, version=0) is yes


def test_the_serves_probe_is_a_valid_v2_fetch_that_has_what_it_wants() -> None:
    body = serves_body([OID, "b" * 40])
    parsed = request.parse_v2(body)
    assert isinstance(parsed, request.FetchRequest)
    assert parsed.wants == (OID, "b" * 40) and parsed.haves == parsed.wants and parsed.done
    assert not parsed.unservable


@pytest.mark.parametrize(("status", "body", "yes"), [
    (200, pktline.encode_line("packfile") + pktline.encode_data(b"\x01PACK"), True),
    (200, pktline.error_packet("upload-pack: not our ref " + OID), False),
    (200, b"", False),
    (200, b"zzzz", False),
    (200, pktline.encode_line("acknowledgments") + pktline.FLUSH, False),
    (404, pktline.encode_line("packfile"), False),
])
def test_what_counts_as_yes(status: int, body: bytes, yes: bool) -> None:
    assert served(status, body) is yes


# ------------------------------------------------------------ UpstreamAsker over a fake transport

CRED = Credential((("authorization", "Bearer t"),))
URL = "https://h/r.git"


def ask(fwd: FakeForwarder) -> tuple[UpstreamAsker, UpstreamState]:
    state = UpstreamState()
    return UpstreamAsker(fwd, state), state  # type: ignore[arg-type]


def test_a_failure_the_client_could_have_caused_is_no_outage() -> None:
    for failure in (answer(500), UpstreamUnreachable("timed out")):
        asker, state = ask(FakeForwarder(failure, answer(401)))
        probe = asyncio.run(asker.refs("h", URL, CRED))
        assert probe.finding is Finding.UNKNOWN and state.down_since("h", 10) is None
        assert asyncio.run(asker.serves("h", URL, CRED, [OID])) is False


def test_a_5xx_without_the_credential_too_is_an_outage() -> None:
    fwd = FakeForwarder(answer(503), answer(503))
    asker, state = ask(fwd)
    assert asyncio.run(asker.refs("h", URL, CRED)).finding is Finding.OUTAGE
    assert state.down_since("h", 10) is not None
    assert fwd.sent[-1] == (URL + "/info/refs?service=git-upload-pack",
                            [("User-Agent", "git/goblet")])  # nothing of the client's
    assert asyncio.run(asker.serves("h", URL, CRED, [OID])) is None


def test_no_answer_to_goblets_own_requests_is_an_outage_and_any_answer_ends_it() -> None:
    fwd = FakeForwarder(UpstreamUnreachable("refused"), UpstreamUnreachable("refused"))
    asker, state = ask(fwd)
    assert asyncio.run(asker.refs("h", URL, CRED)).finding is Finding.OUTAGE
    assert state.down_since("h", 10) is not None
    assert len(fwd.sent) == 3  # the client-shaped probe, then goblet's own twice
    fwd.answers[False] = answer(200, V0)
    assert asyncio.run(asker.confirm_outage("h", URL)) is False
    assert state.down_since("h", 10) is None


def test_a_failure_of_a_forwarded_request_alone_records_nothing() -> None:
    asker, state = ask(FakeForwarder(UpstreamUnreachable("timed out"), answer(200, V0)))
    with pytest.raises(UpstreamUnreachable):
        asyncio.run(asker.forward("h", "GET", URL, list(CRED.headers), None))
    assert state.down_since("h", 10) is None


def test_a_grant_brings_the_refs_it_listed() -> None:
    asker, _ = ask(FakeForwarder(answer(200, V0), answer(401)))
    probe = asyncio.run(asker.refs("h", URL, CRED))
    assert probe.finding is Finding.GRANTED and probe.advertisement is not None
    assert probe.advertisement.refs == {"HEAD": OID, "refs/heads/main": OID}
    asker, _ = ask(FakeForwarder(answer(200, ERR), answer(401)))
    assert asyncio.run(asker.refs("h", URL, CRED)).finding is Finding.DENIED
    asker, _ = ask(FakeForwarder(answer(404), answer(404)))
    assert asyncio.run(asker.refs("h", URL, CRED)).status == 404
