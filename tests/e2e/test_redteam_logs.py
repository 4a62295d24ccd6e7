"""Red team: getting a credential, a query string or terminal control bytes into the log.

* A header line without its colon — ``Authorization Bearer <token>``, as a typo in
  ``http.extraHeader`` produces — is rejected by mitmproxy's HTTP/1 parser, which logs
  the whole line, token included ("Invalid header line: b'…'"). The same for a proxy
  login line in the ``CONNECT`` request. The promise is that a credential appears in no
  log line, whatever the client sends.
* goblet's text access log writes the request path of non-git requests to a goblet host
  as it came; a path may hold ESC (0x1b) and other control bytes, so any client writes
  terminal escape sequences (colours, cursor moves that overwrite earlier lines, ...)
  into the operator's log.

Regression tests (the defence holds): tokens in query strings of info/refs, of other
requests and of refused repo paths are never logged.
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support.proxy import GobletProxy
from tests.support.tunnel import ResponseError, exchange, open_tunnel, read_response
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e

TOKEN = "dG9rZW4tc2VudGluZWwtNDQx"


def new_log(proxy: GobletProxy, seen: int) -> str:
    return proxy.log_text()[seen:]


def wait_new(proxy: GobletProxy, seen: int, needle: str, timeout: float = 10) -> None:
    """Wait until ``needle`` shows up in the log after offset ``seen``."""
    deadline = time.monotonic() + timeout
    while needle not in new_log(proxy, seen) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("where", ["tunnel", "connect"])
def test_a_credential_header_without_its_colon_is_not_logged(
    where: str, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy
) -> None:
    name = repos.create(commits=2)
    seen = len(proxy.log_text())
    if where == "tunnel":
        raw = (f"GET /{name}/info/refs?service=git-upload-pack HTTP/1.1\r\n"
               f"Host: {upstream.host}\r\nAuthorization Bearer {TOKEN}\r\n\r\n").encode()
        with contextlib.suppress(ResponseError, OSError):
            exchange(proxy.port, "127.0.0.1", upstream.port, raw, ca_file=proxy.ca_cert)
    else:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall((f"CONNECT {upstream.host} HTTP/1.1\r\nHost: {upstream.host}\r\n"
                          f"Proxy-Authorization Basic {TOKEN}\r\n\r\n").encode())
            with contextlib.suppress(ResponseError, OSError):
                read_response(sock)
    wait_new(proxy, seen, "client disconnect")
    leaked = [ln[:160] for ln in new_log(proxy, seen).splitlines() if TOKEN in ln]
    assert leaked == [], f"a credential reached mitmdump's log: {leaked}"


@pytest.mark.parametrize("how", ["bad-request-line", "closed-mid-headers"])
def test_what_mitmproxy_logs_of_a_broken_request_head_holds_no_credential(
    how: str, upstream: UpstreamServer, proxy: GobletProxy
) -> None:
    """mitmproxy logs a bad request line, and the head of a client that hung up before
    the end of its headers, as the bytes it got: the token in them is redacted."""
    seen = len(proxy.log_text())
    with open_tunnel(proxy.port, "127.0.0.1", upstream.port, ca_file=proxy.ca_cert,
                     timeout=10) as sock:
        if how == "bad-request-line":
            sock.sendall(f"GET /o/r.git/info/refs?access_token={TOKEN}\r\n"
                         f"Host: {upstream.host}\r\n\r\n".encode())
            with contextlib.suppress(ResponseError, OSError):
                read_response(sock)
        else:
            sock.sendall(f"GET /o/r.git/info/refs HTTP/1.1\r\nHost: {upstream.host}\r\n"
                         f"Authorization: Bearer {TOKEN}\r\n".encode())
            time.sleep(0.3)
    wait_new(proxy, seen, "client disconnect")
    time.sleep(0.2)
    log = new_log(proxy, seen)
    assert "<redacted>" in log, log[-2000:]
    leaked = [ln[:160] for ln in log.splitlines() if TOKEN in ln]
    assert leaked == [], f"a credential reached mitmdump's log: {leaked}"


def test_control_bytes_of_a_request_path_do_not_reach_the_log(
    repos: Repos, upstream: UpstreamServer, proxy: GobletProxy
) -> None:
    name = repos.create(commits=2)
    seen = len(proxy.log_text())
    raw = (f"GET /{name}/\x1b[2K\x1b[1Gfake-line HTTP/1.1\r\nHost: {upstream.host}\r\n\r\n"
           ).encode("latin-1")
    exchange(proxy.port, "127.0.0.1", upstream.port, raw, ca_file=proxy.ca_cert)
    wait_new(proxy, seen, f"/{name}")
    lines = [ln for ln in new_log(proxy, seen).splitlines() if f"/{name}/" in ln]
    assert lines, "no log line for the request"
    assert not any("\x1b" in ln for ln in lines), (
        f"a client wrote terminal escape sequences into the log: {lines[0][:120]!r}")


@pytest.mark.parametrize("target", [
    "/{name}/info/refs?service=git-upload-pack&access_token={token}",
    "/{name}/objects/info/packs?access_token={token}",
    "/{name}/../{name}/info/refs?service=git-upload-pack&access_token={token}",
])
def test_a_token_in_a_query_string_is_not_logged(
    target: str, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = repos.create(commits=2)
    seen = len(proxy.log_text())
    raw = (f"GET {target.format(name=name, token=TOKEN)} HTTP/1.1\r\n"
           f"Host: {upstream.host}\r\n\r\n").encode()
    exchange(proxy.port, "127.0.0.1", upstream.port, raw, ca_file=proxy.ca_cert)
    wait_new(proxy, seen, f"/{name}")
    log = new_log(proxy, seen)
    assert f"/{name}" in log
    assert TOKEN not in log, "a query-string token reached mitmdump's log"
