"""Offline mode can only be entered by a real upstream outage, and serves only the granted.

* A client cannot fake an outage: a request it abandons (headers sent, socket closed)
  says nothing about the upstream, so afterwards a revoked tenant still gets exactly
  what the upstream answers it.
* An upstream that answers 5xx to everything is an outage like a refused connection:
  git's anonymous first request gets the remembered 401 challenge, the retry with the
  user's credential is served from the cache (with a ``remote:`` notice) if that
  credential was granted, and refused otherwise. (The connection-refused outage is
  covered by the tenant matrix's offline phase.)
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support.attack import (
    ALICE,
    OFFLINE,
    clone_head,
    fetch,
    git_through,
    warm_then_revoke,
)
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.proxy import GobletProxy
from tests.support.tunnel import open_tunnel
from tests.support.upstream_client import UpstreamServer

VERDICT_TTL = 2


@pytest.fixture
def oproxy(start_proxy: Callable[[dict[str, str]], GobletProxy]) -> GobletProxy:
    """A fresh offline-mode proxy per test (outage state is per host, and hosts are shared)."""
    return start_proxy({**OFFLINE, "goblet_verdict_ttl": f"{VERDICT_TTL}s",
                        "goblet_upstream_timeout": "5"})


def ogit(tmp_path: Path, proxy: GobletProxy, label: str = "home") -> GitClient:
    return git_through(proxy, tmp_path / label)


def got_pack(dest: Path) -> bool:
    pack_dir = dest / ".git" / "objects" / "pack"
    return pack_dir.is_dir() and any(pack_dir.glob("*.pack"))


def abandon(proxy: GobletProxy, upstream: UpstreamServer, head: str) -> None:
    """Send a request head through a tunnel, then hang up without the rest."""
    sock = open_tunnel(proxy.port, "127.0.0.1", upstream.port, ca_file=proxy.ca_cert)
    try:
        sock.sendall(head.encode())
        time.sleep(0.2)  # let the proxy read the head before the hang-up
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def repo_log_lines(proxy: GobletProxy, name: str) -> int:
    return sum(1 for ln in proxy.log_text().splitlines() if f"/{name} " in ln and "git " in ln)


def wait_log_lines(proxy: GobletProxy, name: str, at_least: int, timeout: float = 5) -> None:
    """Give the proxy up to ``timeout`` s to log the abandoned requests (it may not log them)."""
    deadline = time.monotonic() + timeout
    while repo_log_lines(proxy, name) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("abandoned", ["upload-pack-post", "info-refs-get", "info-refs-hangup"])
def test_a_client_hanging_up_does_not_make_goblet_serve_a_revoked_tenant(
    abandoned: str, oproxy: GobletProxy, upstream: UpstreamServer, repos: Repos,
    tmp_path: Path,
) -> None:
    git = ogit(tmp_path, oproxy)
    # upstream revokes alice; her grant is past the verdict TTL
    name, head = warm_then_revoke(git, repos, upstream, tmp_path / "warm", VERDICT_TTL)
    url = upstream.url(name)

    host = f"127.0.0.1:{upstream.port}"
    if abandoned == "upload-pack-post":
        head_bytes = (f"POST /{name}/git-upload-pack HTTP/1.1\r\nHost: {host}\r\n"
                      "Git-Protocol: version=2\r\n"
                      "Content-Type: application/x-git-upload-pack-request\r\n"
                      "Content-Length: 5000\r\n\r\n")
    elif abandoned == "info-refs-get":
        # A GET that announces a body it never sends: the request is cut mid-way.
        head_bytes = (f"GET /{name}/info/refs?service=git-upload-pack HTTP/1.1\r\n"
                      f"Host: {host}\r\nGit-Protocol: version=2\r\n"
                      "Content-Length: 5000\r\n\r\n")
    else:  # a whole GET, whose client hangs up before the answer
        head_bytes = (f"GET /{name}/info/refs?service=git-upload-pack HTTP/1.1\r\n"
                      f"Host: {host}\r\nGit-Protocol: version=2\r\n\r\n")
    before = repo_log_lines(oproxy, name)
    for _ in range(3):
        abandon(oproxy, upstream, head_bytes)
    wait_log_lines(oproxy, name, before + 3)

    via = fetch(upstream, oproxy, name, head, ALICE)
    straight = fetch(upstream, None, name, head, ALICE)
    assert straight.status == 404 and b"packfile" not in straight.body  # the reference
    assert b"packfile" not in via.body, "a revoked tenant got a pack from the cache"
    assert via.status == straight.status

    # The upstream is up: a granted clone still works.
    repos.grant(name, public=False, readers=("alice",))
    git.clone(with_userinfo(url, "alice", "alice-pw"), tmp_path / "still-works")


def test_an_upstream_answering_500_is_an_outage_served_to_granted_tenants_only(
    oproxy: GobletProxy, upstream: UpstreamServer, repos: Repos, tmp_path: Path
) -> None:
    name = repos.create(public=False, readers=("alice",))
    url = upstream.url(name)
    git = ogit(tmp_path, oproxy)
    head = clone_head(git, url, tmp_path / "warm", "alice", "alice-pw")

    upstream.fault("error500")
    try:
        alice = ogit(tmp_path, oproxy, "alice").clone(
            with_userinfo(url, "alice", "alice-pw"), tmp_path / "alice", check=False)
        bob = ogit(tmp_path, oproxy, "bob").clone(
            with_userinfo(url, "bob", "bob-pw"), tmp_path / "bob", check=False)
    finally:
        upstream.fault("none")

    assert alice.returncode == 0, alice.stderr
    assert "remote: goblet: upstream unreachable" in alice.stderr, alice.stderr
    assert git.run("rev-parse", "HEAD", cwd=tmp_path / "alice").stdout.strip() == head
    assert bob.returncode != 0, "bob was never granted, yet was served offline"
    assert not got_pack(tmp_path / "bob")
