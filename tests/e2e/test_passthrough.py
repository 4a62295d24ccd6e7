"""Pushes, non-git requests and non-goblet hosts pass through untouched."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import USERS, Repos, count
from tests.support import rawhttp
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.proxy import GobletProxy
from tests.support.repos import make_bare_repo
from tests.support.upstream_client import UpstreamServer


def test_push_passes_through_and_the_next_clone_sees_it(
    git: GitClient, repos: Repos, upstream: UpstreamServer, tmp_path: Path
) -> None:
    name = repos.create()
    url = with_userinfo(upstream.url(name), "alice", "alice-pw")
    work = tmp_path / "work"
    git.clone(url, work)
    (work / "pushed.txt").write_text("pushed through goblet\n")
    git.run("add", "pushed.txt", cwd=work)
    git.run("commit", "-m", "pushed", cwd=work)
    git.run("push", "origin", "main", cwd=work)
    pushed = git.run("rev-parse", "HEAD", cwd=work).stdout.strip()
    assert count(upstream.stats(), "receive_pack", name) == 1
    assert (
        (repos.path(name) / "refs" / "heads" / "main").read_text().strip() == pushed
        or pushed in (repos.path(name) / "packed-refs").read_text()
    )
    git.clone(upstream.url(name), tmp_path / "again")
    assert git.run("rev-parse", "HEAD", cwd=tmp_path / "again").stdout.strip() == pushed


def test_refused_push_is_refused_as_upstream_refuses_it(
    git: GitClient, repos: Repos, upstream: UpstreamServer, tmp_path: Path
) -> None:
    name = repos.create(writers=("alice",))
    work = tmp_path / "work"
    git.clone(upstream.url(name), work)
    git.run("commit", "--allow-empty", "-m", "nope", cwd=work)
    git.run("remote", "set-url", "origin", with_userinfo(upstream.url(name), "bob", "bob-pw"),
            cwd=work)
    res = git.run("push", "origin", "main", cwd=work, check=False)
    assert res.returncode != 0
    assert "403" in res.stderr


def test_non_git_requests_to_a_goblet_host_pass_through(
    upstream: UpstreamServer, proxy: GobletProxy
) -> None:
    def call(method: str, path: str, **kw: object) -> rawhttp.RawResponse:
        return rawhttp.request(proxy_port=proxy.port, ca_file=proxy.ca_cert, host="127.0.0.1",
                               port=upstream.port, method=method, path=path, **kw)  # type: ignore[arg-type]

    hello = call("GET", "/api/hello", headers={"Authorization": "Bearer tok-alice"})
    assert hello.status == 200
    assert json.loads(hello.body) == {"hello": "world", "auth": "alice"}
    echo = call("POST", "/api/echo", body=b"x" * 100_000,
                headers={"Content-Type": "application/octet-stream"})
    assert echo.status == 200 and echo.body == b"x" * 100_000
    size = 20 * 1024 * 1024
    big = call("GET", f"/api/bytes?n={size}")
    assert big.status == 200 and len(big.body) == size
    direct = rawhttp.request(proxy_port=None, ca_file=upstream.cert_path, host="127.0.0.1",
                             port=upstream.port, method="GET", path=f"/api/bytes?n={size}")
    assert hashlib.sha256(big.body).digest() == hashlib.sha256(direct.body).digest()
    assert call("GET", "/no/such/page").status == 404


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer,
          confdir: Path) -> Iterator[GobletProxy]:
    """goblet relaying to other hosts on loopback too (where these tests' servers are)."""
    px = GobletProxy(tmp_path_factory.mktemp("proxy"), hosts=[upstream.host],
                     upstream_ca=upstream.cert_path, confdir=confdir,
                     sets={"goblet_upstream_timeout": "5", "goblet_relay_internal": "on"})
    with px:
        yield px


def test_loopback_hosts_outside_goblet_hosts_are_refused_by_default(
    tmp_path: Path, upstream: UpstreamServer, confdir: Path, other_host: UpstreamServer
) -> None:
    with GobletProxy(tmp_path / "strict", hosts=[upstream.host],
                     upstream_ca=upstream.cert_path, confdir=confdir) as px:
        with pytest.raises(OSError, match="502"):
            rawhttp.request(proxy_port=px.port, ca_file=other_host.cert_path,
                            host="127.0.0.1", port=other_host.port, method="GET",
                            path="/api/hello")
        assert px.wait_for_log("loopback or link-local")  # (the log is read as it comes)


@pytest.fixture(scope="module")
def other_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamServer]:
    """A second HTTPS git server that is NOT in goblet_hosts."""
    server = UpstreamServer(
        tmp_path_factory.mktemp("other"),
        {"users": USERS, "repos": {"elsewhere.git": {"public": True, "readers": [],
                                                     "writers": []}}},
    )
    with server:
        make_bare_repo(server.root / "elsewhere.git", commits=3)
        yield server


def test_other_hosts_are_relayed_without_interception(
    other_host: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    # Trusting only the real server's certificate works through the proxy:
    # the TLS session is end to end, so the proxy cannot see or cache anything.
    resp = rawhttp.request(proxy_port=proxy.port, ca_file=other_host.cert_path,
                           host="127.0.0.1", port=other_host.port, method="GET",
                           path="/api/hello")
    assert resp.status == 200
    git = GitClient(tmp_path / "home", ca_file=other_host.cert_path, proxy=proxy.url)
    git.clone(other_host.url("elsewhere.git"), tmp_path / "clone")
    assert f"127.0.0.1:{other_host.port}/elsewhere.git" not in proxy.log_text()
    assert other_host.stats()["fetch"] == 1
