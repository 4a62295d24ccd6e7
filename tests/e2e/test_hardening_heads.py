"""Request heads are bounded: one still incomplete after 64 KiB gets 431 and a one-line
reason, and its connection is closed (mitmproxy alone buffers a head without limit).

Inside a tunnel (the git request itself) and on the proxy port (the CONNECT); a large
but complete head (a big token, say) still goes through.
"""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.e2e.conftest import Repos
from tests.support.proxy import GobletProxy
from tests.support.tunnel import open_tunnel
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e

KiB = 1024
PAD = b"X-Pad: " + b"a" * 1000 + b"\r\n"


def answer_after(sock: socket.socket | ssl.SSLSocket, head: bytes, pad_bytes: int) -> bytes:
    """Send ``head`` then header lines of ``pad_bytes`` in all (never the blank line that
    would end the head), in pieces; what came back until the connection closed."""
    sent = 0
    try:
        sock.sendall(head)
        while sent < pad_bytes:
            sock.sendall(PAD * 16)
            sent += len(PAD) * 16
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass  # (closed by the proxy: it reads no further)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (ConnectionResetError, ssl.SSLError, TimeoutError):
        pass
    return got


def test_a_request_head_without_end_gets_431_inside_a_tunnel(
    proxy: GobletProxy, upstream: UpstreamServer, repos: Repos
) -> None:
    name = repos.create(commits=1)
    with open_tunnel(proxy.port, "127.0.0.1", upstream.port, ca_file=proxy.ca_cert,
                     timeout=20) as sock:
        got = answer_after(sock, (f"GET /{name}/info/refs?service=git-upload-pack HTTP/1.1\r\n"
                                  f"Host: 127.0.0.1:{upstream.port}\r\n").encode(), 8 * 1024 * KiB)
    assert got.startswith(b"HTTP/1.1 431 "), got[:200]
    assert got.endswith(b"\r\n\r\ngoblet: request head over 64 KiB\n"), got[-200:]
    assert not any(r["path"].startswith(f"/{name}/") for r in upstream.stats()["requests"])


def test_a_connect_head_without_end_gets_431(proxy: GobletProxy, upstream: UpstreamServer
                                              ) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
        got = answer_after(sock, (f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\n"
                                  f"Host: 127.0.0.1:{upstream.port}\r\n").encode(), 8 * 1024 * KiB)
    assert got.startswith(b"HTTP/1.1 431 "), got[:200]
    assert proxy.proc is not None and proxy.proc.poll() is None


def test_a_large_complete_head_goes_through(proxy: GobletProxy, upstream: UpstreamServer,
                                            repos: Repos) -> None:
    name = repos.create(commits=1)
    head = (f"GET /{name}/info/refs?service=git-upload-pack HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{upstream.port}\r\nGit-Protocol: version=2\r\n").encode()
    with open_tunnel(proxy.port, "127.0.0.1", upstream.port, ca_file=proxy.ca_cert,
                     timeout=20) as sock:
        sock.sendall(head + PAD * 40 + b"Connection: close\r\n\r\n")  # ~40 KiB, in pieces
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 200 "), got[:200]
    assert b"version 2" in got
