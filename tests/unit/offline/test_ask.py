"""The pure parts of goblet's own upstream requests: what counts as a grant or a yes."""

from __future__ import annotations

import pytest
from goblet.offline.ask import answer_is_grant, served, serves_body
from goblet.protocol import pktline, request

ADV = "application/x-git-upload-pack-advertisement"
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
