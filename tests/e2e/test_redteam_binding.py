"""Red team: naming one host in the tunnel and another in the request, new spellings.

Same two-site upstream as ``test_hardening_binding.py`` (A = ``127.0.0.1:PORT``, B =
``localhost:PORT``, one process, routing by absolute-form authority, then SNI, then
``Host``), but with the roles swapped: B holds the private repo (alice only) and A a
public repo of the same name. A request goblet binds to B while the upstream answers it
as A would give a stranger a grant (and a ref view) for B's private repo, which offline
mode would then serve. Spellings tried, all expected to be refused or left uncached:

* SNI ``localhost.`` (trailing dot) in a tunnel to ``localhost``: goblet compares SNI
  with the tunnel's host ignoring one trailing dot; mitmproxy sends the dotted name on to
  the upstream. (Holds because mitmproxy's certificate check of the upstream fails for
  the dotted name, so nothing reaches the upstream.)
* two ``Host`` headers (A and B, either order), or ``Host: user:pw@B``, in a tunnel to
  B: never answered from the cache;
* HTTP/2 with ``:authority`` naming A in a tunnel to B (``http2=true``): not cached,
  passed on as it came.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from tests.e2e.conftest import USERS, Repos
from tests.support import rawhttp
from tests.support.attack import (
    ALICE,
    STRANGERS,
    UPLOAD_HEADERS,
    clone_head,
    fetch,
    git_through,
    no_pack,
    one_by_one,
    proxy_for,
)
from tests.support.gitclient import GitClient
from tests.support.proxy import GobletProxy
from tests.support.repos import make_bare_repo
from tests.support.tunnel import http_request
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e

B_NAME = "localhost"
UPSTREAM_OPTIONS = {"alt_name": B_NAME}  # the module's upstream and proxy: A and B
V2 = UPLOAD_HEADERS


def private_on_b(repos: Repos, upstream: UpstreamServer) -> str:
    """A public repo on A and a private repo (alice only) of the same name on B."""
    name = repos.create(public=True, commits=3)
    make_bare_repo(upstream.alt_root / name, commits=4, seed=11)
    config = {"users": USERS, "repos": {**upstream.alt_config["repos"],
                                        name: {"public": False, "readers": ["alice"],
                                               "writers": []}}}
    upstream.set_alt_config(config)
    return name


def tunnel(proxy: GobletProxy, host: str, port: int, sni: str,
           alpn: list[str] | None = None) -> ssl.SSLSocket:
    """A tunnel whose TLS names ``sni`` (certificate checks off: the attacker's side)."""
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
    raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    assert b" 200 " in raw.recv(4096)
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    context.check_hostname = False
    if alpn:
        context.set_alpn_protocols(alpn)
    return context.wrap_socket(raw, server_hostname=sni)


def ref_requests(host_header: str, name: str, auth: dict[str, str]) -> list[bytes]:
    return [
        http_request("GET", f"/{name}/info/refs?service=git-upload-pack", host_header,
                     {"Git-Protocol": "version=2", **auth}),
        http_request("POST", f"/{name}/git-upload-pack", host_header, {**V2, **auth},
                     rawhttp.v2_ls_refs_body()),
    ]


def fetch_b(proxy: GobletProxy, upstream: UpstreamServer, name: str, head: str,
            auth: dict[str, str]) -> rawhttp.RawResponse:
    return fetch(upstream, proxy, name, head, auth, host=B_NAME)


def warm_b(git: GitClient, upstream: UpstreamServer, name: str, dest: Path) -> str:
    return clone_head(git, upstream.alt_url(name), dest, "alice", "alice-pw")


def fetches(upstream: UpstreamServer, name: str) -> int:
    return sum(1 for r in upstream.stats()["requests"]
               if r["kind"] == "fetch" and r["path"].endswith(f"/{name}/git-upload-pack"))


def test_a_trailing_dot_server_name_grants_nothing_for_the_undotted_host(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = private_on_b(repos, upstream)
    head = warm_b(git, upstream, name, tmp_path / "alice")
    for auth in STRANGERS.values():
        answers = one_by_one(tunnel(proxy, B_NAME, upstream.port, f"{B_NAME}."),
                           ref_requests(upstream.alt_host, name, auth))
        assert all(r.status != 200 for r in answers), [r.status for r in answers]
        resp = fetch_b(proxy, upstream, name, head, auth)
        assert resp.status in (401, 404) and no_pack(resp), resp.status


@pytest.mark.parametrize("hosts", [["A", "B"], ["B", "A"], ["user:pw@B"]])
def test_odd_host_headers_are_never_answered_from_the_cache(
    hosts: list[str], git: GitClient, repos: Repos, upstream: UpstreamServer,
    proxy: GobletProxy, tmp_path: Path,
) -> None:
    name = private_on_b(repos, upstream)
    head = warm_b(git, upstream, name, tmp_path / "alice")
    spelled = [h.replace("A", upstream.host).replace("B", upstream.alt_host) for h in hosts]
    head_lines = "".join(f"Host: {h}\r\n" for h in spelled)
    fetch = (f"POST /{name}/git-upload-pack HTTP/1.1\r\n{head_lines}"
             f"Git-Protocol: version=2\r\nContent-Type: application/x-git-upload-pack-request\r\n"
             f"Authorization: {ALICE['Authorization']}\r\n"
             f"Content-Length: {len(rawhttp.v2_fetch_body(head))}\r\n\r\n").encode()
    fetch += rawhttp.v2_fetch_body(head)
    before = fetches(upstream, name)
    answers = one_by_one(tunnel(proxy, B_NAME, upstream.port, B_NAME), [fetch])
    assert answers, "no answer"
    assert answers[0].status == 400 or fetches(upstream, name) == before + 1, (
        f"a fetch with Host headers {spelled} was answered from the cache")


class Http2Proxy(GobletProxy):
    """goblet with HTTP/2 towards clients (``http2=true``)."""

    def command(self) -> list[str]:
        return [("http2=true" if arg == "http2=false" else arg) for arg in super().command()]


@pytest.fixture(scope="module")
def h2proxy(
    tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer, confdir: Path
) -> Iterator[GobletProxy]:
    # Lazy: mitmproxy offers h2 to the client without asking the (HTTP/1.1) upstream.
    sets = {"goblet_upstream_timeout": "5", "connection_strategy": "lazy"}
    with proxy_for(tmp_path_factory.mktemp("h2proxy"), upstream, confdir, sets,
                   cls=Http2Proxy) as px:
        yield px


def h2_request(sock: ssl.SSLSocket, headers: list[tuple[str, str]],
               body: bytes) -> tuple[int, bytes]:
    """One HTTP/2 request on ``sock``; the status and body of its answer."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=not body)
    if body:
        conn.send_data(1, body, end_stream=True)
    sock.sendall(conn.data_to_send())
    status, data = 0, b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return status, data
        for event in conn.receive_data(chunk):
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                data += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, 1)
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                return status, data
        sock.sendall(conn.data_to_send())


def test_an_http2_authority_naming_another_host_grants_nothing(
    repos: Repos, upstream: UpstreamServer, h2proxy: GobletProxy, tmp_path: Path
) -> None:
    name = private_on_b(repos, upstream)
    git = git_through(h2proxy, tmp_path / "home")
    head = warm_b(git, upstream, name, tmp_path / "alice")
    for auth in STRANGERS.values():
        # A tunnel to B whose requests name A in :authority (A's repo is public).
        for path, method, body in (
                (f"/{name}/info/refs?service=git-upload-pack", "GET", b""),
                (f"/{name}/git-upload-pack", "POST", rawhttp.v2_ls_refs_body())):
            headers = [(":method", method), (":scheme", "https"), (":path", path),
                       (":authority", upstream.host), ("git-protocol", "version=2"),
                       ("content-type", "application/x-git-upload-pack-request"),
                       *((k.lower(), v) for k, v in auth.items())]
            with tunnel(h2proxy, B_NAME, upstream.port, B_NAME, alpn=["h2"]) as sock:
                assert sock.selected_alpn_protocol() == "h2"
                h2_request(sock, headers, body)
        resp = fetch_b(h2proxy, upstream, name, head, auth)
        assert resp.status in (401, 404) and no_pack(resp), (
            f"a stranger got B's private commit after naming A in :authority ({resp.status})")
