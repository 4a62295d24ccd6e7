"""Red team: an identity the tenant key does not see.

goblet's tenant is derived from the request's headers (and the proxy login): everything
that could identify the caller *to the upstream* is meant to be part of it. The query
string is not. An upstream that accepts a token in the URL (``?access_token=``; the test
upstream does, like several forges' APIs) grants a ref request that carries no
credential header — and goblet records that grant, with its ref view, for the
*anonymous* tenant. Every anonymous client is then served the private repo from the
cache until the grant expires.

The same gap works the other way: a *wrong* token in the query makes the upstream
answer 401, and goblet records that refusal for the anonymous tenant, so that during an
outage every anonymous client is refused a public repo goblet has cached (and in
``public`` isolation the repo is taken for private and not served from the cache).

Required (safe behaviour): a ref request whose query string carries anything but
``service`` never grants or denies another tenant (it is keyed with its query, or not
recorded): an anonymous stranger's fetch gets the upstream's own 401, and anonymous
clients keep their offline access.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support import rawhttp
from tests.support.attack import OFFLINE, UPLOAD_HEADERS, clone_head, git_through, send
from tests.support.gitclient import GitClient
from tests.support.proxy import GobletProxy
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e

V2 = UPLOAD_HEADERS


def test_a_token_in_the_query_string_does_not_grant_the_anonymous_tenant(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = repos.create(public=False, readers=("alice", "bob"), commits=3)
    head = clone_head(git, upstream.url(name), tmp_path / "alice", "alice", "alice-pw")

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


@pytest.fixture
def oproxy(start_proxy: Callable[[dict[str, str]], GobletProxy]) -> GobletProxy:
    return start_proxy({**OFFLINE, "goblet_upstream_timeout": "5"})


def test_a_bad_token_in_the_query_string_does_not_deny_the_anonymous_tenant(
    oproxy: GobletProxy, repos: Repos, upstream: UpstreamServer, tmp_path: Path
) -> None:
    name = repos.create(commits=3)
    git = git_through(oproxy, tmp_path / "home")
    git.clone(upstream.url(name), tmp_path / "warm")  # anonymous: granted, cached

    refused = send(upstream, oproxy, "GET",
                   f"/{name}/info/refs?service=git-upload-pack&access_token=wrong", {})
    assert refused.status == 401

    upstream.fault("reset")  # an outage: offline mode serves the granted from the cache
    try:
        clone = git.clone(upstream.url(name), tmp_path / "offline", check=False)
    finally:
        upstream.fault("none")
    assert clone.returncode == 0, (
        "one request with a bad token in its query string cost every anonymous client "
        f"its offline access to a public repo:\n{clone.stderr[-500:]}")
