"""A tunnel to a goblet host whose first bytes do not look like HTTP.

mitmproxy tells HTTP from other protocols by the first bytes a client sends inside
a tunnel; bytes it does not take for HTTP (a request line with no end in the first
read, say) would be relayed to the host as raw TCP, past every check goblet makes
on requests. goblet relays nothing of such a tunnel to a host it caches and closes
it. Tunnels to other hosts are left to mitmproxy (git over ssh through the proxy,
for one).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time

import pytest

from tests.support.proxy import GobletProxy
from tests.support.tunnel import open_tunnel
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e

TOKEN = "cmF3LXRjcC1zZW50aW5lbC0xOTM"


def test_a_tunnel_to_a_goblet_host_that_is_not_http_relays_nothing(
    upstream: UpstreamServer, proxy: GobletProxy
) -> None:
    seen = len(proxy.log_text())
    got = b""
    with open_tunnel(proxy.port, "127.0.0.1", upstream.port, ca_file=proxy.ca_cert,
                     timeout=10) as sock:
        with contextlib.suppress(OSError, ssl.SSLError):
            sock.sendall(f"GET /o/r.git/info/refs?t={TOKEN}&".encode() + b"a" * 70_000)
        deadline = time.monotonic() + 5
        with contextlib.suppress(OSError, ssl.SSLError, socket.timeout):
            while time.monotonic() < deadline:
                data = sock.recv(65536)
                if not data:
                    break
                got += data
    assert got == b"", f"the upstream answered a relayed tunnel: {got[:200]!r}"
    assert proxy.wait_for_log("not HTTP", timeout=5), proxy.log_text()[seen:][-2000:]
    assert TOKEN not in proxy.log_text()[seen:]
