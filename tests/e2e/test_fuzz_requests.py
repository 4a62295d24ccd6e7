"""Random requests through a real mitmdump to the real upstream: answered, never crashed on."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import Repos
from tests.support import rawhttp
from tests.support.proxy import GobletProxy
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.slow

segments = st.sampled_from(["r.git", "..", ".", "", "%2e%2e", "%2F", "%5c", "a%20b", "%c0%ae",
                            "x" * 200, "info", "~u", "%C3%A9", "%ff"])
suffixes = st.sampled_from(["/info/refs?service=git-upload-pack", "/git-upload-pack",
                            "/info/refs?service=git-receive-pack", "/git-receive-pack", "/x"])
bodies = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([
        rawhttp.pkt(b"command=fetch"), rawhttp.pkt(b"command=ls-refs"), b"0001", b"0000",
        rawhttp.pkt("want " + "a" * 40), rawhttp.pkt("done"), rawhttp.pkt("want-ref refs/x"),
        rawhttp.pkt("deepen 1"), rawhttp.pkt(b"\xff\xfe"), b"zzzz", rawhttp.pkt("have 12"),
    ]), max_size=8).map(b"".join),
)


def test_random_requests_are_answered_and_the_proxy_survives(
    repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = repos.create(commits=2)

    @settings(max_examples=250, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(segments, max_size=3), suffixes, bodies,
           st.sampled_from(["version=2", "version=1", "", "bogus"]))
    def case(parts: list[str], suffix: str, body: bytes, protocol: str) -> None:
        path = "/" + "/".join([*parts, name]) + suffix
        method = "GET" if "info/refs" in suffix else "POST"
        headers = {"Content-Type": "application/x-git-upload-pack-request"}
        if protocol:
            headers["Git-Protocol"] = protocol
        resp = rawhttp.request(
            proxy_port=proxy.port, ca_file=proxy.ca_cert, host="127.0.0.1", port=upstream.port,
            method=method, path=path, headers=headers, body=body if method == "POST" else None,
        )
        assert resp.status < 500, (path, resp.status, resp.body[:200])
        assert b"Traceback" not in resp.body
        if resp.status == 400 and resp.body.startswith(b"goblet:"):
            assert resp.body.count(b"\n") == 1

    case()
    assert proxy.proc is not None and proxy.proc.poll() is None
    log = proxy.log_text()
    assert "Traceback" not in log and "Addon error" not in log
