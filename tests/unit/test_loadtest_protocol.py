"""loadtest/protocol.py: the load generator's requests are real git, its checks are strict.

- every body it builds parses with goblet's own request parser as a request the
  cache can serve, and real ``git upload-pack`` (behind ``git http-backend``)
  answers it with something the checks accept;
- the checks accept what real git 2.39 exchanged (recorded by ``git_wire``) and
  refuse ERR packets, sideband errors and every truncation of a real pack;
- any bytes either pass a check or raise ProtocolError, never anything else.
"""

from __future__ import annotations

import contextlib
import http.client
from urllib.parse import urlsplit

import pytest
from goblet.protocol import request as goblet_request
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest import protocol
from tests.unit.conftest import GitWire


def post(wire: GitWire, repo: str, body: bytes) -> tuple[int, str, bytes]:
    """POST a v2 upload-pack body to the recording http-backend server."""
    parts = urlsplit(wire.base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", f"/{repo}/git-upload-pack", body=body, headers={
            "Git-Protocol": "version=2",
            "Content-Type": "application/x-git-upload-pack-request"})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


# -- building ----------------------------------------------------------------------


def test_pkt_line_lengths_count_themselves() -> None:
    assert protocol.pkt_line("done") == b"0009done\n"
    assert protocol.pkt_line(b"command=fetch") == b"0011command=fetch"
    with pytest.raises(ValueError):
        protocol.pkt_line(b"")
    with pytest.raises(ValueError):
        protocol.pkt_line(b"x" * 65517)


def test_bodies_parse_as_servable_requests_with_goblets_parser() -> None:
    ls = goblet_request.parse_v2(protocol.ls_refs_request())
    assert isinstance(ls, goblet_request.LsRefsRequest)
    assert ls.peel and ls.symrefs and ls.ref_prefixes == ("HEAD", "refs/heads/", "refs/tags/")
    for depth in (0, 3):
        fetch = goblet_request.parse_v2(protocol.fetch_request(["a" * 40, "b" * 40], depth=depth))
        assert isinstance(fetch, goblet_request.FetchRequest)
        assert fetch.wants == ("a" * 40, "b" * 40) and fetch.done
        assert fetch.unservable == (), "the cache must be able to answer what we send"


def test_fetch_refuses_bad_wants() -> None:
    with pytest.raises(ValueError):
        protocol.fetch_request([])
    with pytest.raises(ValueError):
        protocol.fetch_request(["HEAD"])


def test_bodies_are_byte_for_byte_what_git_sends(git_wire: GitWire) -> None:
    """Same bytes as git's own clone requests (LF or not, line by line)."""
    ls_exchange, fetch_exchange = git_wire.posts("v2-clone")[:2]
    wants = [p.payload[5:-1].decode() for p in protocol.read_packets(fetch_exchange.body)
             if p.payload.startswith(b"want ")]
    assert protocol.fetch_request(wants) == fetch_exchange.body
    assert protocol.ls_refs_request() == ls_exchange.body.replace(b"000bunborn\n", b"")


# -- real git answers ----------------------------------------------------------------


def test_real_http_backend_accepts_our_requests(git_wire: GitWire) -> None:
    status, ctype, body = post(git_wire, "plain.git", protocol.ls_refs_request())
    assert (status, ctype) == (200, protocol.RESULT_TYPE)
    listed = protocol.check_ls_refs(body)
    assert listed.tip() == listed.refs["refs/heads/main"]
    assert listed.head_target == "refs/heads/main"
    for depth in (0, 1):
        status, ctype, body = post(git_wire, "plain.git",
                                   protocol.fetch_request([listed.tip()], depth=depth))
        assert status == 200, body[:200]
        summary = protocol.check_fetch(body)
        assert summary.objects > 0
        assert ("shallow-info" in summary.sections) == (depth > 0)


def test_checks_accept_recorded_git_traffic(git_wire: GitWire) -> None:
    assert protocol.check_info_refs(git_wire.info_refs("v2-clone").response).version == 2
    advert = protocol.check_info_refs(git_wire.info_refs("v0-clone").response)
    assert advert.version == 0 and advert.refs["refs/heads/main"] == git_wire.oids["main"]
    for session in ("v2-clone", "v2-shallow", "v2-filter"):
        ls, fetch = git_wire.posts(session)[:2]
        assert protocol.check_ls_refs(ls.response).refs
        assert protocol.check_fetch(fetch.response).pack_bytes > 0


def test_empty_repository_has_no_tip(git_wire: GitWire) -> None:
    ls = git_wire.posts("v2-empty")[0]
    with pytest.raises(protocol.ProtocolError, match="no refs"):
        protocol.check_ls_refs(ls.response).tip()


# -- failures that must count as failures ----------------------------------------------


def test_err_packets_fail_every_check() -> None:
    err = protocol.pkt_line("ERR goblet: upstream unreachable")
    with pytest.raises(protocol.ProtocolError, match="git error: goblet: upstream"):
        protocol.check_fetch(err)
    with pytest.raises(protocol.ProtocolError, match="git error"):
        protocol.check_ls_refs(err + protocol.FLUSH)
    with pytest.raises(protocol.ProtocolError, match="git error"):
        protocol.check_info_refs(protocol.pkt_line("version 2") + err + protocol.FLUSH)


def test_sideband_error_fails_the_fetch() -> None:
    body = (protocol.pkt_line("packfile") + protocol.pkt_line(b"\x02counting\n")
            + protocol.pkt_line(b"\x03upload-pack: not our ref\n") + protocol.FLUSH)
    with pytest.raises(protocol.ProtocolError, match="sideband error: upload-pack: not our"):
        protocol.check_fetch(body)


def test_every_truncation_of_a_real_fetch_answer_fails(git_wire: GitWire) -> None:
    body = git_wire.posts("v2-clone")[1].response
    protocol.check_fetch(body)
    for cut in range(len(body)):
        with pytest.raises(protocol.ProtocolError):
            protocol.check_fetch(body[:cut])


def test_a_corrupted_pack_byte_fails_the_checksum(git_wire: GitWire) -> None:
    body = bytearray(git_wire.posts("v2-clone")[1].response)
    start = body.index(b"PACK") + 40
    body[start] ^= 0xFF
    with pytest.raises(protocol.ProtocolError, match="checksum"):
        protocol.check_fetch(bytes(body))


def test_trailing_data_after_the_flush_fails(git_wire: GitWire) -> None:
    body = git_wire.posts("v2-clone")[1].response
    with pytest.raises(protocol.ProtocolError, match="after the final flush"):
        protocol.check_fetch(body + protocol.pkt_line("extra"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_pass_or_raise_protocol_error(data: bytes) -> None:
    for check in (protocol.check_info_refs, protocol.check_ls_refs, protocol.check_fetch):
        with contextlib.suppress(protocol.ProtocolError):
            check(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=8))
def test_pkt_framed_garbage_passes_or_raises_protocol_error(payloads: list[bytes]) -> None:
    data = b"".join(protocol.pkt_line(p) for p in payloads) + protocol.FLUSH
    for check in (protocol.check_info_refs, protocol.check_ls_refs, protocol.check_fetch):
        with contextlib.suppress(protocol.ProtocolError):
            check(data)
