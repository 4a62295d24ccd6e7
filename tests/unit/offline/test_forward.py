"""Forwarder: goblet's own requests, replayed to a tiny upstream on 127.0.0.1 (HTTP and HTTPS).

Requests go as they came (hop-by-hop headers excepted, the body as received), answers
come back as they are (not decoded, redirects not followed), and anything short of an
HTTP answer is ``UpstreamUnreachable``.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import socket
import ssl
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from goblet.offline.forward import Forwarder, UpstreamAnswer, UpstreamUnreachable, tls_context

from tests.support.upstream_http import TlsThreadingHTTPServer
from tests.support.upstream_tls import write_self_signed_cert

ADV = "application/x-git-upload-pack-advertisement"
GZIPPED = gzip.compress(b"0000" * 100)
# path -> (status, headers, body) the upstream answers
ANSWERS: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {
    "/refs": (200, [("Content-Type", ADV), ("WWW-Authenticate", 'Basic realm="a"'),
                    ("WWW-Authenticate", 'Bearer realm="b"'), ("X-Upstream", "yes"),
                    ("Keep-Alive", "timeout=5"), ("Proxy-Authenticate", "Basic"),
                    ("Trailer", "X-Sum"), ("Upgrade", "h2c")], b"0000"),
    "/gzip": (200, [("Content-Type", ADV), ("Content-Encoding", "gzip")], GZIPPED),
    "/redirect": (302, [("Location", "/refs")], b""),
    "/missing": (404, [("Content-Type", "text/plain")], b"no such repo\n"),
    "/broken": (500, [("Content-Type", "text/plain")], b"oops\n"),
}


@dataclass(frozen=True)
class Seen:
    """One request as the upstream received it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Handler(BaseHTTPRequestHandler):
    """Notes each request; answers from ANSWERS, 200 for anything else, or hangs up."""

    protocol_version = "HTTP/1.1"
    server: Upstream.Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle_one_request(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline or not self.parse_request():
            self.close_connection = True
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append(Seen(self.command, self.path, list(self.headers.items()), body))
        if self.path == "/hangup":  # no answer at all
            self.close_connection = True
            return
        status, headers, payload = ANSWERS.get(self.path, (200, [], b"ok"))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()


@dataclass
class Upstream:
    """A loopback upstream and the requests it received."""

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        seen: list[Seen]

    class TlsServer(TlsThreadingHTTPServer):
        seen: list[Seen]

    base: str
    seen: list[Seen] = field(default_factory=list)
    cert: Path | None = None

    def url(self, path: str) -> str:
        return self.base + path


def serve(server: ThreadingHTTPServer, scheme: str, cert: Path | None = None
          ) -> Iterator[Upstream]:
    up = Upstream(f"{scheme}://127.0.0.1:{server.server_address[1]}", cert=cert)
    server.seen = up.seen  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield up
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    yield from serve(Upstream.Server(("127.0.0.1", 0), Handler), "http")


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[Upstream]:
    cert, key = write_self_signed_cert(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    yield from serve(Upstream.TlsServer(("127.0.0.1", 0), Handler, ctx), "https", cert)


@functools.cache
def certifi_context() -> ssl.SSLContext:
    """goblet's default context (certifi's bundle), built once: loading it takes a while."""
    return tls_context(None, False)


def send(method: str, url: str, headers: Iterable[tuple[str, str]] = (),
         body: bytes | None = None, *, context: ssl.SSLContext | None = None,
         timeout: float = 30.0) -> UpstreamAnswer:
    """One ``Forwarder.send`` on a fresh forwarder (closed afterwards)."""
    async def go() -> UpstreamAnswer:
        forwarder = Forwarder(context or certifi_context(), timeout)
        try:
            return await forwarder.send(method, url, headers, body)
        finally:
            forwarder.close()
    return asyncio.run(go())


# ------------------------------------------------------------------------------ requests


def test_a_request_is_replayed_with_its_headers_and_raw_body(upstream: Upstream) -> None:
    raw = gzip.compress(b"0014command=ls-refs\n0000")
    headers = [("Authorization", "Bearer t0k"), ("Git-Protocol", "version=2"),
               ("Content-Type", "application/x-git-upload-pack-request"),
               ("Content-Encoding", "gzip"), ("X-Extra", "one"), ("X-Extra", "two")]
    send("POST", upstream.url("/r.git/git-upload-pack"), headers, raw)
    (seen,) = upstream.seen
    assert (seen.method, seen.path, seen.body) == ("POST", "/r.git/git-upload-pack", raw)
    for name, value in headers:
        assert value in seen.header(name)
    assert seen.header("X-Extra") == ["one", "two"]
    assert seen.header("Content-Length") == [str(len(raw))]


def test_hop_by_hop_headers_stay_behind(upstream: Upstream) -> None:
    send("POST", upstream.url("/r.git/git-upload-pack"), [
        ("Host", "evil.example"), ("Content-Length", "999"), ("Transfer-Encoding", "chunked"),
        ("Connection", "X-Secret"), ("Keep-Alive", "timeout=99"), ("TE", "trailers"),
        ("Trailer", "X-Sum"), ("Upgrade", "h2c"), ("Proxy-Authorization", "Basic cHJveHk="),
        ("Proxy-Connection", "keep-alive"), ("Proxy-Authenticate", "Basic"),
        ("Authorization", "Bearer t0k")], b"body")
    (seen,) = upstream.seen
    assert seen.body == b"body" and seen.header("Authorization") == ["Bearer t0k"]
    assert seen.header("Host") == [upstream.base.removeprefix("http://")]
    assert seen.header("Content-Length") == ["4"] and seen.header("Transfer-Encoding") == []
    assert "X-Secret" not in seen.header("Connection")
    for name in ("Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Authorization",
                 "Proxy-Connection", "Proxy-Authenticate"):
        assert seen.header(name) == [], name


def test_only_a_post_carries_a_body(upstream: Upstream) -> None:
    send("GET", upstream.url("/r.git/info/refs?service=git-upload-pack"), [], b"ignored")
    (seen,) = upstream.seen
    assert (seen.method, seen.path) == ("GET", "/r.git/info/refs?service=git-upload-pack")
    assert seen.body == b"" and seen.header("Content-Length") in ([], ["0"])


@pytest.mark.parametrize("header", [
    ("X-Token", "s3cret\r\nInjected: 1"), ("X-Token", "s3cret\nInjected: 1"),
    ("X-Token", "s3cret\0"), ("X Token", "s3cret"), ("X-Token:", "s3cret"),
    ("X-Token\r\nInjected", "s3cret"),
])
def test_a_header_that_cannot_be_sent_as_it_is_is_refused_unsent(
        upstream: Upstream, header: tuple[str, str]) -> None:
    with pytest.raises(ValueError) as refused:
        send("GET", upstream.url("/refs"), [("Authorization", "Bearer t0k"), header])
    assert "s3cret" not in str(refused.value) and "Injected" not in str(refused.value)
    assert upstream.seen == []


# ------------------------------------------------------------------------------ answers


def test_the_answer_comes_back_as_it_came_without_hop_by_hop_headers(
        upstream: Upstream) -> None:
    got = send("GET", upstream.url("/refs"))
    assert (got.status, got.reason, got.body) == (200, "OK", b"0000")
    names = [k.lower() for k, _ in got.headers]
    assert ("Content-Type", ADV) in got.headers and ("X-Upstream", "yes") in got.headers
    assert [v for k, v in got.headers if k == "Www-Authenticate"] == [
        'Basic realm="a"', 'Bearer realm="b"']
    for hop in ("keep-alive", "proxy-authenticate", "trailer", "upgrade", "content-length",
                "connection", "transfer-encoding"):
        assert hop not in names, hop


def test_an_encoded_answer_stays_encoded(upstream: Upstream) -> None:
    got = send("GET", upstream.url("/gzip"))
    assert got.body == GZIPPED and ("Content-Encoding", "gzip") in got.headers


def test_a_redirect_is_an_answer_not_followed(upstream: Upstream) -> None:
    got = send("GET", upstream.url("/redirect"))
    assert got.status == 302 and ("Location", "/refs") in got.headers
    assert [s.path for s in upstream.seen] == ["/redirect"]


@pytest.mark.parametrize(("path", "status", "body"), [
    ("/missing", 404, b"no such repo\n"), ("/broken", 500, b"oops\n")])
def test_error_statuses_are_answers(upstream: Upstream, path: str, status: int,
                                    body: bytes) -> None:
    got = send("GET", upstream.url(path))
    assert (got.status, got.body) == (status, body)


# ------------------------------------------------------------------------------ no answer


def test_a_refused_connection_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(UpstreamUnreachable):
        send("GET", f"http://127.0.0.1:{port}/r.git/info/refs")


def test_a_hang_up_without_an_answer_is_unreachable(upstream: Upstream) -> None:
    with pytest.raises(UpstreamUnreachable):
        send("GET", upstream.url("/hangup"))
    assert [s.path for s in upstream.seen] == ["/hangup"]


def test_an_upstream_that_never_answers_is_unreachable_after_the_deadline() -> None:
    with socket.socket() as s:  # accepts connections (the kernel does), never reads them
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        with pytest.raises(UpstreamUnreachable):
            send("GET", f"http://127.0.0.1:{s.getsockname()[1]}/r.git/info/refs",
                 timeout=0.5)


# ------------------------------------------------------------------------------ TLS


def test_tls_is_verified_against_the_ca_file_given(tls_upstream: Upstream) -> None:
    assert tls_upstream.cert is not None
    got = send("GET", tls_upstream.url("/refs"),
               context=tls_context(str(tls_upstream.cert), False))
    assert got.status == 200 and got.body == b"0000"


def test_an_untrusted_certificate_is_unreachable(tls_upstream: Upstream) -> None:
    with pytest.raises(UpstreamUnreachable):
        send("GET", tls_upstream.url("/refs"), context=certifi_context())
    assert tls_upstream.seen == []  # the request never left goblet


def test_insecure_trusts_any_certificate(tls_upstream: Upstream) -> None:
    got = send("GET", tls_upstream.url("/refs"), context=tls_context(None, True))
    assert got.status == 200
