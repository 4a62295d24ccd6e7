"""Red team: slowloris before the body — request heads that never end.

``goblet_request_body_timeout`` cuts off an upload-pack request whose *body* is slow.
Nothing cuts off a request whose *head* is slow: a client that sends a request line and
then one header byte every half second keeps its connection (and mitmproxy's state for
it) for as long as it likes; mitmproxy only drops connections idle for ten minutes, and
a trickle is never idle. Enough such connections exhaust the proxy's file descriptors
and every new client is refused. The same holds for the ``CONNECT`` request itself and
for the path-prefix port (``goblet_prefix_port``).

Required (safe behaviour): a request head that is not complete within a bounded time
(here: three times the body timeout) gets its connection closed, like a slow body.
The regression test checks that a slow *body* on the prefix port is cut off as in a
tunnel.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support.gitclient import GitClient
from tests.support.net import free_port
from tests.support.proxy import GobletProxy
from tests.support.tunnel import open_tunnel, wait_closed
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e

BODY_TIMEOUT = 2
GIVE_UP = 3 * BODY_TIMEOUT + 4  # a head still open after this long is never cut off
PREFIX_PORT = free_port()


PROXY_SETS = {"goblet_request_body_timeout": f"{BODY_TIMEOUT}s",
              "goblet_upstream_timeout": "10", "goblet_prefix_port": str(PREFIX_PORT)}


def trickle(sock: socket.socket, first: bytes, seconds: float) -> float | None:
    """Send ``first``, then one more header byte every half second; return the seconds
    until the proxy closed the connection, or None if it was still open after
    ``seconds``."""
    started = time.monotonic()
    sock.sendall(first)
    while time.monotonic() - started < seconds:
        sock.settimeout(0.5)
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except TimeoutError:
            pass
        except (ConnectionError, ssl.SSLError, OSError):
            return time.monotonic() - started
        try:
            sock.sendall(b"a")
        except (ConnectionError, ssl.SSLError, OSError):
            return time.monotonic() - started
    return None


def plain(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def test_a_trickled_request_head_in_a_tunnel_is_cut_off(
    proxy: GobletProxy, upstream: UpstreamServer, repos: Repos
) -> None:
    name = repos.create(commits=2)
    with open_tunnel(proxy.port, "127.0.0.1", upstream.port, ca_file=proxy.ca_cert) as sock:
        head = (f"POST /{name}/git-upload-pack HTTP/1.1\r\nHost: {upstream.host}\r\n"
                "Git-Protocol: version=2\r\nX-Pad: ").encode()
        closed = trickle(sock, head, GIVE_UP)
    assert closed is not None, f"a request head trickled for {GIVE_UP}s was never cut off"


def test_a_trickled_connect_request_is_cut_off(
    proxy: GobletProxy, upstream: UpstreamServer
) -> None:
    with plain(proxy.port) as sock:
        head = f"CONNECT {upstream.host} HTTP/1.1\r\nHost: {upstream.host}\r\nX-Pad: ".encode()
        closed = trickle(sock, head, GIVE_UP)
    assert closed is not None, f"a CONNECT head trickled for {GIVE_UP}s was never cut off"


def test_a_trickled_request_head_on_the_prefix_port_is_cut_off(
    proxy: GobletProxy, upstream: UpstreamServer, repos: Repos
) -> None:
    name = repos.create(commits=2)
    with plain(PREFIX_PORT) as sock:
        head = (f"GET /{upstream.host}/{name}/info/refs?service=git-upload-pack HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{PREFIX_PORT}\r\nX-Pad: ").encode()
        closed = trickle(sock, head, GIVE_UP)
    assert closed is not None, (
        f"a request head trickled for {GIVE_UP}s on the prefix port was never cut off")


def test_a_stalled_body_on_the_prefix_port_is_cut_off(
    proxy: GobletProxy, upstream: UpstreamServer, repos: Repos, git: GitClient, tmp_path: Path
) -> None:
    name = repos.create(commits=2)
    with plain(PREFIX_PORT) as sock:
        sock.sendall((f"POST /{upstream.host}/{name}/git-upload-pack HTTP/1.1\r\n"
                      f"Host: 127.0.0.1:{PREFIX_PORT}\r\nGit-Protocol: version=2\r\n"
                      "Content-Type: application/x-git-upload-pack-request\r\n"
                      "Content-Length: 100000\r\n\r\n").encode() + b"0014command=ls-refs\n")
        waited = wait_closed(sock, GIVE_UP)
    assert waited is not None, "a stalled body on the prefix port kept its connection"
    git.clone(f"http://127.0.0.1:{PREFIX_PORT}/{upstream.host}/{name}", tmp_path / "after")
