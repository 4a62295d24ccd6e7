"""Slowloris: a client that sends an upload-pack request head and a trickle of body, then
stalls, is cut off after ``goblet_request_body_timeout`` and never stops others' clones."""

from __future__ import annotations

import contextlib
import ssl
import time
from pathlib import Path

from tests.e2e.conftest import Repos
from tests.support.gitclient import GitClient
from tests.support.proxy import GobletProxy
from tests.support.tunnel import open_tunnel, wait_closed
from tests.support.upstream_client import UpstreamServer

BODY_TIMEOUT = 2
CLOSE_WITHIN = 15.0


PROXY_SETS = {"goblet_request_body_timeout": f"{BODY_TIMEOUT}s",
              "goblet_upstream_timeout": "10"}


def stall(proxy: GobletProxy, upstream: UpstreamServer, name: str) -> ssl.SSLSocket:
    """A tunnel carrying an upload-pack POST head that promises 100000 bytes, and 100 of them."""
    sock = open_tunnel(proxy.port, "127.0.0.1", upstream.port, ca_file=proxy.ca_cert)
    head = (f"POST /{name}/git-upload-pack HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\n"
            "Git-Protocol: version=2\r\n"
            "Content-Type: application/x-git-upload-pack-request\r\n"
            "Content-Length: 100000\r\n\r\n")
    sock.sendall(head.encode() + b"0014command=ls-refs\n" + b"0" * 80)
    return sock


def test_a_stalled_request_body_is_cut_off_and_clones_go_on(
    proxy: GobletProxy, upstream: UpstreamServer, repos: Repos, git: GitClient, tmp_path: Path
) -> None:
    name = repos.create(commits=3)
    with stall(proxy, upstream, name) as sock:
        git.clone(upstream.url(repos.create(commits=3)), tmp_path / "during")
        waited = wait_closed(sock, CLOSE_WITHIN)
    assert waited is not None, f"a stalled request body kept its connection {CLOSE_WITHIN}s"
    git.clone(upstream.url(name), tmp_path / "after")


def test_twenty_stalled_requests_do_not_stop_a_clone(
    proxy: GobletProxy, upstream: UpstreamServer, repos: Repos, git: GitClient, tmp_path: Path
) -> None:
    name = repos.create(commits=3)
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(stall(proxy, upstream, name)) for _ in range(20)]
        git.clone(upstream.url(repos.create(commits=3)), tmp_path / "during")
        deadline = time.monotonic() + CLOSE_WITHIN  # one deadline for all twenty
        still_open = sum(1 for s in socks
                         if wait_closed(s, max(0.1, deadline - time.monotonic())) is None)
    assert still_open == 0, f"{still_open} of 20 stalled connections still open"
    git.clone(upstream.url(name), tmp_path / "after")
