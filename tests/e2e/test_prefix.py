"""Path-prefix mode: http://goblet:PORT/<host>/<repo>, same cache, same access rules."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos, count
from tests.e2e.test_clone import served_from_cache
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.net import free_port
from tests.support.proxy import GobletProxy
from tests.support.upstream_client import UpstreamServer


@pytest.fixture(scope="module")
def prefix_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer, confdir: Path,
          prefix_port: int) -> Iterator[GobletProxy]:
    px = GobletProxy(tmp_path_factory.mktemp("proxy"), hosts=[upstream.host],
                     upstream_ca=upstream.cert_path, confdir=confdir,
                     sets={"goblet_prefix_port": str(prefix_port), "goblet_instance": "shard-a"})
    with px:
        yield px


def prefix_url(port: int, upstream: UpstreamServer, name: str) -> str:
    return f"http://127.0.0.1:{port}/{upstream.host}/{name}"


def test_clones_through_the_prefix_share_the_forward_proxy_cache(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy,
    prefix_port: int, tmp_path: Path,
) -> None:
    name = repos.create()
    plain = GitClient(tmp_path / "plain-home", ca_file=proxy.ca_cert)  # no proxy, no TLS
    plain.clone(prefix_url(prefix_port, upstream, name), tmp_path / "p1")
    git.clone(upstream.url(name), tmp_path / "f1")  # forward-proxy client, same cache
    plain.clone(prefix_url(prefix_port, upstream, name), tmp_path / "p2")
    assert count(upstream.stats(), "fetch", name) == 1
    assert served_from_cache(proxy, upstream.url(name)) == 3
    heads = {git.run("rev-parse", "HEAD", cwd=tmp_path / d).stdout for d in ("p1", "f1", "p2")}
    assert len(heads) == 1


def test_access_rules_are_the_same(
    repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, prefix_port: int,
    tmp_path: Path,
) -> None:
    name = repos.create(public=False, readers=("alice",))
    plain = GitClient(tmp_path / "home", ca_file=proxy.ca_cert)
    url = prefix_url(prefix_port, upstream, name)
    plain.clone(with_userinfo(url, "alice", "alice-pw"), tmp_path / "alice")
    bob = plain.clone(with_userinfo(url, "bob", "bob-pw"), tmp_path / "bob", check=False)
    anon = plain.clone(url, tmp_path / "anon", check=False)
    assert bob.returncode != 0 and "not found" in bob.stderr
    assert anon.returncode != 0 and "could not read Username" in anon.stderr


def test_only_goblet_hosts_and_no_tunnels_on_the_prefix_port(
    upstream: UpstreamServer, proxy: GobletProxy, prefix_port: int
) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for path in ("/example.com/r.git/info/refs?service=git-upload-pack", "/nohost", "/"):
        with pytest.raises(urllib.error.HTTPError) as err:
            opener.open(f"http://127.0.0.1:{prefix_port}{path}", timeout=10)
        assert err.value.code == 404
        assert err.value.read().startswith(b"goblet: ")
        assert err.value.headers["X-Served-By"] == "shard-a"
    with opener.open(f"http://127.0.0.1:{prefix_port}/healthz", timeout=10) as resp:
        assert resp.read() == b"ok\n"
    with socket.create_connection(("127.0.0.1", prefix_port), timeout=10) as s:
        s.sendall(f"CONNECT {upstream.host} HTTP/1.1\r\nHost: {upstream.host}\r\n\r\n".encode())
        assert s.recv(100).startswith(b"HTTP/1.1 405")
