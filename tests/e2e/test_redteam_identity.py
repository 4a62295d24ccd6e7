"""Red team: an identity the tenant key does not see.

goblet's tenant is derived from the request's headers (and the proxy login): everything
that could identify the caller *to the upstream* is meant to be part of it. The query
string is not. An upstream that accepts a token in the URL (``?access_token=``; the test
upstream does, like several forges' APIs) grants a ref request that carries no
credential header — and goblet records that grant, with its ref view, for the
*anonymous* tenant. Every anonymous client is then served the private repo from the
cache until the grant expires.

Required (safe behaviour): a ref request whose query string carries anything but
``service`` never grants another tenant (it is keyed with its query, or not recorded);
an anonymous stranger's fetch gets the upstream's own 401.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support import rawhttp
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.proxy import GobletProxy
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e

V2 = {"Git-Protocol": "version=2", "Content-Type": "application/x-git-upload-pack-request"}


def send(upstream: UpstreamServer, proxy: GobletProxy | None, method: str, path: str,
         headers: dict[str, str], body: bytes | None = None) -> rawhttp.RawResponse:
    return rawhttp.request(
        proxy_port=proxy.port if proxy else None,
        ca_file=proxy.ca_cert if proxy else upstream.cert_path,
        host="127.0.0.1", port=upstream.port, method=method, path=path, headers=headers,
        body=body)


def test_a_token_in_the_query_string_does_not_grant_the_anonymous_tenant(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = repos.create(public=False, readers=("alice", "bob"), commits=3)
    git.clone(with_userinfo(upstream.url(name), "alice", "alice-pw"), tmp_path / "alice")
    head = git.run("rev-parse", "HEAD", cwd=tmp_path / "alice").stdout.strip()

    # bob lists the refs with his token in the URL (no Authorization header at all).
    listed = send(upstream, proxy, "GET",
                  f"/{name}/info/refs?service=git-upload-pack&access_token=tok-bob", {})
    assert listed.status == 200 and head.encode() in listed.body

    # A stranger without any credential asks for the commit.
    fetch = ("POST", f"/{name}/git-upload-pack", V2, rawhttp.v2_fetch_body(head))
    straight = send(upstream, None, *fetch)
    assert straight.status == 401  # the reference
    via = send(upstream, proxy, *fetch)
    assert b"packfile" not in via.body, (
        "a grant won with a token in the query string was recorded for the anonymous "
        "tenant: a stranger got the private repo from the cache")
    assert via.status == straight.status
