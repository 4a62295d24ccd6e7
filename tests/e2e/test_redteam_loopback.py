"""Red team: the proxy as a way into the proxy host itself.

Clients must be able to reach hosts outside ``goblet_hosts`` through goblet (they set
``HTTPS_PROXY`` for everything; those connections are relayed untouched). Nothing limits
*which* hosts: a client can name the proxy host's own loopback addresses, and reach
services that listen there for the host alone — here goblet's own serving backend
(``127.0.0.1:<backend>``, which answers anyone holding a serve token), and in a cloud
deployment the instance metadata service (``169.254.169.254``) with the proxy host's
credentials.

Required (safe behaviour): requests and tunnels to loopback or link-local addresses that
are not goblet hosts are refused; the backend never answers a client of the proxy.
"""

from __future__ import annotations

import re
import socket

import pytest

from tests.support.proxy import GobletProxy
from tests.support.tunnel import ResponseError, read_response

pytestmark = pytest.mark.e2e


def backend_port(proxy: GobletProxy) -> int:
    m = re.search(r"backend=127\.0\.0\.1:(\d+)", proxy.log_text())
    assert m, "no backend address in the ready line"
    return int(m.group(1))


def answer(proxy: GobletProxy, raw: bytes, *, connect_to: str | None = None) -> bytes:
    """Send ``raw`` to the proxy (inside ``CONNECT connect_to`` if given); the answer's
    body, or b"" if the proxy refused or closed."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        if connect_to is not None:
            sock.sendall(f"CONNECT {connect_to} HTTP/1.1\r\nHost: {connect_to}\r\n\r\n".encode())
            try:
                head = read_response(sock, head_only=True)
            except (ResponseError, OSError):
                return b""
            if head.status != 200:
                return b""
        sock.sendall(raw)
        try:
            return read_response(sock).body
        except (ResponseError, OSError):
            return b""


@pytest.mark.parametrize("how", ["absolute-form", "connect"])
def test_goblets_own_backend_is_not_reachable_through_the_proxy(
    how: str, proxy: GobletProxy
) -> None:
    target = f"127.0.0.1:{backend_port(proxy)}"
    if how == "absolute-form":
        body = answer(proxy, f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    else:
        body = answer(proxy, f"GET / HTTP/1.1\r\nHost: {target}\r\n\r\n".encode(),
                      connect_to=target)
    assert b"serve token" not in body, (
        f"a client reached goblet's loopback backend through the proxy ({how}): {body[:80]!r}")
