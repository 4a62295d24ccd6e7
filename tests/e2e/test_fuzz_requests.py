"""Random requests through a real mitmdump to the real upstream: answered, never crashed on.

Paths and bodies, and request bodies in every Content-Encoding git or anyone might
send (identity, gzip, deflate, br, zstd), chunked or not, whole or truncated.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import brotli
import pytest
import zstandard
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


def assert_tidy(resp: rawhttp.RawResponse) -> None:
    """No traceback in an answer, and goblet's own refusals are one line."""
    assert b"Traceback" not in resp.body
    if resp.status == 400 and resp.body.startswith(b"goblet:"):
        assert resp.body.count(b"\n") == 1


def assert_survived(proxy: GobletProxy) -> None:
    """mitmdump still runs and never logged a traceback or an addon error."""
    assert proxy.proc is not None and proxy.proc.poll() is None
    log = proxy.log_text()
    assert "Traceback" not in log and "Addon error" not in log


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
        assert_tidy(resp)

    case()
    assert_survived(proxy)


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data)


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODERS = {
    "identity": lambda b: b, "gzip": lambda b: gzip.compress(b, mtime=0), "deflate": _deflate,
    "deflate-raw": _raw_deflate, "br": brotli.compress, "zstd": zstandard.compress,
}
request_bodies = st.lists(st.sampled_from([
    rawhttp.pkt(b"command=fetch"), rawhttp.pkt(b"command=ls-refs"), b"0001", b"0000", b"0005a",
    rawhttp.pkt("want " + "a" * 40), rawhttp.pkt("done"), rawhttp.pkt("thin-pack"),
    rawhttp.pkt("filter blob:none"), b"zzzz",
]), max_size=12).map(b"".join)


def test_random_encoded_bodies_are_answered_and_the_proxy_survives(
    repos: Repos, upstream: UpstreamServer, proxy: GobletProxy
) -> None:
    """Every Content-Encoding (and none), chunked or not, whole or cut short."""
    name = repos.create(commits=2)

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(request_bodies, st.sampled_from(sorted(ENCODERS)), st.booleans(),
           st.integers(min_value=0, max_value=100))
    def case(body: bytes, encoding: str, chunked: bool, keep_percent: int) -> None:
        encoded = ENCODERS[encoding](body)
        if keep_percent < 100:  # a truncated stream
            encoded = encoded[: len(encoded) * keep_percent // 100]
        headers = {"Content-Type": "application/x-git-upload-pack-request",
                   "Git-Protocol": "version=2"}
        if encoding != "identity":
            headers["Content-Encoding"] = encoding.split("-", maxsplit=1)[0]
        resp = rawhttp.request(
            proxy_port=proxy.port, ca_file=proxy.ca_cert, host="127.0.0.1", port=upstream.port,
            method="POST", path=f"/{name}/git-upload-pack", headers=headers,
            body=iter([encoded]) if chunked else encoded)
        assert resp.status < 500 or resp.headers.get("x-served-by") is not None, resp.status
        assert_tidy(resp)

    case()
    assert_survived(proxy)
