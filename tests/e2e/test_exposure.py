"""Who can reach goblet: the open-proxy refusal, and requests addressed to goblet itself.

Real mitmdump processes. Nothing here listens beyond loopback on this machine:
the start-up tests that bind every interface run mitmdump in a network
namespace of their own (``unshare -n``: only its own loopback exists), and the
test of a DNS name that resolves to goblet gives mitmdump a private
``/etc/hosts`` (``unshare -m`` and a bind mount) naming ``goblet-self.test``
127.0.0.1, while the proxy itself listens on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from tests.support.netns import in_own_network, run_until_ready, unshare_binary
from tests.support.proxy import ADDON, GobletProxy, mitmdump_binary

pytestmark = pytest.mark.e2e

SELF_NAME = "goblet-self.test"


def start_up(tmp_path: Path, confdir: Path, *args: str,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run mitmdump with ``args`` in its own network until it exits or is ready.

    A ready mitmdump is stopped with SIGTERM. Returns its exit status and output.
    """
    return run_until_ready(in_own_network(
        [mitmdump_binary(), "-s", str(ADDON), "-p", "0", "--set", f"confdir={confdir}",
         "--set", f"goblet_cache_dir={tmp_path / 'cache'}",
         "--set", "goblet_hosts=git.example.com", *args]), tmp_path, timeout)


@pytest.mark.parametrize("listen", [["--listen-host", "0.0.0.0"], [], ["--listen-host", "::"]],
                         ids=["0.0.0.0", "default", "::"])
def test_an_open_proxy_is_refused_in_one_line(listen: list[str], tmp_path: Path,
                                              confdir: Path) -> None:
    res = start_up(tmp_path, confdir, *listen)
    out = res.stdout
    assert res.returncode == 1, out
    refusal = [line for line in out.splitlines() if "refusing to start" in line]
    assert len(refusal) == 1, out
    assert "no proxyauth" in refusal[0] and "goblet_allow_open_proxy=on" in refusal[0]
    assert "goblet ready" not in out
    assert "Traceback" not in out and "listening at" not in out, out  # nothing was bound


def test_the_opt_in_starts_with_a_warning(tmp_path: Path, confdir: Path) -> None:
    res = start_up(tmp_path, confdir, "--listen-host", "0.0.0.0",
                   "--set", "goblet_allow_open_proxy=on")
    out = res.stdout
    assert "goblet ready" in out, out
    warning = [line for line in out.splitlines() if "open proxy on regular@0.0.0.0:" in line]
    assert len(warning) == 1, out
    assert "refusing" not in out


def test_proxyauth_needs_no_opt_in(tmp_path: Path, confdir: Path) -> None:
    res = start_up(tmp_path, confdir, "--listen-host", "0.0.0.0", "--set", "proxyauth=ci:s3cret")
    assert "goblet ready" in res.stdout, res.stdout
    assert "open proxy" not in res.stdout and "refusing" not in res.stdout


def test_the_path_prefix_port_alone_may_listen_everywhere(tmp_path: Path,
                                                          confdir: Path) -> None:
    """It serves only /<goblet host>/<repo> URLs; the proxy port stays on loopback."""
    res = start_up(tmp_path, confdir, "--listen-host", "0.0.0.0",
                   "--mode", "regular@127.0.0.1:8080", "--set", "goblet_prefix_port=8081")
    assert "goblet ready" in res.stdout, res.stdout
    assert "listening at *:8081" in res.stdout and "listening at 127.0.0.1:8080" in res.stdout
    assert "open proxy" not in res.stdout and "refusing" not in res.stdout


def test_proxyauth_any_is_no_authentication(tmp_path: Path, confdir: Path) -> None:
    res = start_up(tmp_path, confdir, "--listen-host", "0.0.0.0", "--set", "proxyauth=any")
    assert res.returncode == 1 and "proxyauth=any checks no password" in res.stdout, res.stdout


def test_a_bad_opt_in_value_stops_start_up(tmp_path: Path, confdir: Path) -> None:
    res = start_up(tmp_path, confdir, "--listen-host", "127.0.0.1",
                   "--set", "goblet_allow_open_proxy=sure")
    assert res.returncode == 1 and "goblet_allow_open_proxy must be true or false" in \
        res.stdout, res.stdout


# -- requests addressed to goblet itself ---------------------------------------------------


class NamedProxy(GobletProxy):
    """goblet on 127.0.0.1 in a mount namespace whose /etc/hosts names it SELF_NAME."""

    def __init__(self, workdir: Path, confdir: Path, sets: dict[str, str] | None = None) -> None:
        super().__init__(workdir, hosts=["git.example.com"], upstream_ca=None, confdir=confdir,
                         sets=sets)
        self.hosts_file = workdir / "hosts"

    def command(self) -> list[str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hosts_file.write_text(f"127.0.0.1 localhost\n127.0.0.1 {SELF_NAME}\n"
                                   "::1 localhost ip6-localhost\n")
        return [unshare_binary(), "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
                str(self.hosts_file), *super().command()]


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory, confdir: Path) -> Iterator[NamedProxy]:
    with NamedProxy(tmp_path_factory.mktemp("named"), confdir) as px:
        yield px


def connects(px: GobletProxy) -> int:
    """How many client connections mitmdump has accepted so far."""
    return px.log_text().count("client connect")


def send(port: int, method: str, target: str, host: str,
         timeout: float = 10) -> tuple[int, dict[str, str], str]:
    """One plain-HTTP request to 127.0.0.1:port with this request target and Host."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, target, headers={"Host": host})
        resp = conn.getresponse()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        return resp.status, headers, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def test_the_name_resolves_to_goblet_only_inside_its_namespace(named: NamedProxy) -> None:
    """The test's premise: goblet resolves the name to itself; this process cannot."""
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo(SELF_NAME, named.port)
    assert named.proc is not None
    hosts = Path(f"/proc/{named.proc.pid}/root/etc/hosts").read_text()
    assert f"127.0.0.1 {SELF_NAME}" in hosts


@pytest.mark.parametrize("form", ["origin", "absolute"])
@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz"])
def test_endpoints_answer_by_a_dns_name_of_the_proxy(named: NamedProxy, form: str,
                                                     path: str) -> None:
    authority = f"{SELF_NAME}:{named.port}"
    target = path if form == "origin" else f"http://{authority}{path}"
    status, _, body = send(named.port, "GET", target, authority)
    assert status == 200, body
    assert {"/metrics": "goblet_requests_total", "/healthz": "ok",
            "/readyz": "ready"}[path] in body


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("GET", "/some/page"), ("POST", "/metrics"), ("GET", "/metricsx")])
def test_a_request_addressed_to_goblet_never_loops(named: NamedProxy, method: str,
                                                   path: str) -> None:
    before = connects(named)
    started = time.monotonic()
    status, headers, body = send(named.port, method, path, f"{SELF_NAME}:{named.port}")
    elapsed = time.monotonic() - started
    assert status == 508, body
    assert "addressed to goblet itself" in body
    assert headers.get("x-served-by")
    assert elapsed < 5
    time.sleep(0.5)  # a loop would keep connecting after the answer
    assert connects(named) - before <= 3, named.log_text()[-3000:]


def test_a_request_inside_a_tunnel_to_goblet_never_loops(named: NamedProxy) -> None:
    """CONNECT to goblet's own name, then plain HTTP inside the tunnel."""
    before = connects(named)
    conn = http.client.HTTPConnection("127.0.0.1", named.port, timeout=10)
    conn.set_tunnel(SELF_NAME, named.port)
    try:
        conn.request("GET", "/x")
        resp = conn.getresponse()
        body = resp.read().decode()
    finally:
        conn.close()
    assert resp.status == 508, body
    time.sleep(0.5)
    assert connects(named) - before <= 3, named.log_text()[-3000:]


class Recorder(BaseHTTPRequestHandler):
    """Answers every GET with its own text and remembers the Via header it saw."""

    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        Recorder.seen.append(self.headers.get("Via"))
        body = b"not goblet: the other server\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def other_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_of_another_server_are_still_proxied(tmp_path: Path, confdir: Path,
                                                     other_server: int) -> None:
    """Absolute-form to another host (here another port of 127.0.0.1, which needs
    goblet_relay_internal): relayed, marked."""
    Recorder.seen.clear()
    authority = f"127.0.0.1:{other_server}"
    with NamedProxy(tmp_path / "relaying", confdir, {"goblet_relay_internal": "on"}) as named:
        status, _, body = send(named.port, "GET", f"http://{authority}/metrics", authority)
    assert (status, body) == (200, "not goblet: the other server\n")
    (via,) = Recorder.seen
    assert via is not None and via.startswith("1.1 goblet-")
