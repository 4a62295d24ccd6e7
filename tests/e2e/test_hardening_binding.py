"""A request is about the host its tunnel was opened to: nobody borrows a grant across hosts.

One upstream server hosts two sites on one port, like a forge front end with virtual
hosts: A (``127.0.0.1:PORT``) holds a private repo readable by alice only, B
(``localhost:PORT``) a public repo at the very same path. Both are goblet hosts. The server
routes a request to B when the request names B in its absolute-form target (as RFC 9112
requires of a server) or in the TLS server name (as SNI-routing front ends do), whatever
its ``Host`` header says.

alice warms the cache from A. A stranger then opens a tunnel to A and, inside it, names
B: an absolute-form target with ``Host: A``, or SNI = B. If goblet took B's answers (200:
public) as A's, it would record a grant for A's private repo and serve the stranger from
the cache. Required: such requests are refused (400) or passed on uncached, so the
stranger's fetch of A's commit gets A's own refusal and no pack; even alice's own fetch in
such a tunnel is not answered from the cache.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import USERS, Repos
from tests.support import rawhttp
from tests.support.attack import (
    ALICE,
    STRANGERS,
    UPLOAD_HEADERS,
    clone_head,
    fetch,
    no_pack,
    one_by_one,
)
from tests.support.gitclient import GitClient
from tests.support.proxy import GobletProxy
from tests.support.repos import make_bare_repo
from tests.support.tunnel import http_request, open_tunnel
from tests.support.upstream_client import UpstreamServer

B_NAME = "localhost"
# The module's upstream (tests/e2e/conftest.py): site A at 127.0.0.1:PORT, site B at
# localhost:PORT (same process, same port); its proxy caches both.
UPSTREAM_OPTIONS = {"alt_name": B_NAME}
V2 = UPLOAD_HEADERS


def twin_repos(repos: Repos, upstream: UpstreamServer) -> str:
    """A private repo on A (alice only) and a public repo of the same name on B."""
    name = repos.create(public=False, readers=("alice",))
    make_bare_repo(upstream.alt_root / name, commits=4, seed=7)
    config = {"users": USERS, "repos": {**upstream.alt_config["repos"],
                                        name: {"public": True, "readers": [], "writers": []}}}
    upstream.set_alt_config(config)
    return name


def warm(git: GitClient, upstream: UpstreamServer, name: str, dest: Path) -> str:
    """alice clones A's repo through goblet; returns A's HEAD commit."""
    return clone_head(git, upstream.url(name), dest, "alice", "alice-pw")


def in_tunnel(proxy: GobletProxy, upstream: UpstreamServer, requests: list[bytes],
              sni: str | None = None) -> list[rawhttp.RawResponse]:
    """Send ``requests`` one after another in one tunnel to A; the answers that came."""
    return one_by_one(open_tunnel(proxy.port, "127.0.0.1", upstream.port,
                                  ca_file=proxy.ca_cert, sni=sni), requests)


def fetch_a(proxy: GobletProxy, upstream: UpstreamServer, name: str, head: str,
            auth: dict[str, str]) -> rawhttp.RawResponse:
    """A plain fetch of A's commit through goblet (tunnel to A, origin-form, no SNI)."""
    return fetch(upstream, proxy, name, head, auth)


def upstream_fetches(upstream: UpstreamServer, name: str) -> int:
    """Fetch requests for ``name`` the upstream got (origin- or absolute-form targets)."""
    return sum(1 for r in upstream.stats()["requests"]
               if r["kind"] == "fetch" and urlsplit(r["path"]).path == f"/{name}/git-upload-pack")


def ref_requests(target_prefix: str, host_header: str, name: str,
                 auth: dict[str, str]) -> list[bytes]:
    """info/refs and a v2 ls-refs for ``name``, with the given target prefix and Host."""
    return [
        http_request("GET", f"{target_prefix}/{name}/info/refs?service=git-upload-pack",
                     host_header, {"Git-Protocol": "version=2", **auth}),
        http_request("POST", f"{target_prefix}/{name}/git-upload-pack", host_header,
                     {**V2, **auth}, rawhttp.v2_ls_refs_body()),
    ]


def assert_refused_on_a(proxy: GobletProxy, upstream: UpstreamServer, name: str, head: str,
                        auth: dict[str, str], answers: list[rawhttp.RawResponse],
                        message: str) -> None:
    """A plain fetch of A's commit with ``auth`` (a stranger's) gets A's refusal, no pack."""
    resp = fetch_a(proxy, upstream, name, head, auth)
    assert resp.status in (401, 404) and no_pack(resp), (
        f"{message} (answers {[r.status for r in answers]}, fetch {resp.status})")


def both_sites_clone(git: GitClient, upstream: UpstreamServer, name: str, tmp_path: Path) -> None:
    """Both sites still clone normally through goblet."""
    warm(git, upstream, name, tmp_path / "again")
    git.clone(upstream.alt_url(name), tmp_path / "b")


def assert_alice_not_served_from_cache(proxy: GobletProxy, upstream: UpstreamServer, name: str,
                                       request: bytes, sni: str | None = None) -> None:
    """alice (granted on A) fetches in a tunnel to A whose request names B: goblet's 400 or
    the upstream's own answer, never the cache's."""
    before = upstream_fetches(upstream, name)
    [mine] = in_tunnel(proxy, upstream, [request], sni=sni)
    assert mine.status == 400 or upstream_fetches(upstream, name) == before + 1, (
        f"a request naming another host than its tunnel was answered from the cache "
        f"({mine.status})")


@pytest.mark.parametrize("host_header", ["A", "B"])
def test_an_absolute_form_target_naming_another_host_grants_nothing(
    host_header: str, git: GitClient, repos: Repos, upstream: UpstreamServer,
    proxy: GobletProxy, tmp_path: Path,
) -> None:
    name = twin_repos(repos, upstream)
    head = warm(git, upstream, name, tmp_path / "alice")
    b_prefix = f"https://{upstream.alt_host}"
    host = upstream.host if host_header == "A" else upstream.alt_host
    for who, auth in STRANGERS.items():
        answers = in_tunnel(proxy, upstream, ref_requests(b_prefix, host, name, auth))
        assert all(no_pack(r) for r in answers)
        assert_refused_on_a(proxy, upstream, name, head, auth, answers,
                            f"{who} got A's private commit after naming B in A's tunnel")

    assert_alice_not_served_from_cache(
        proxy, upstream, name,
        http_request("POST", f"{b_prefix}/{name}/git-upload-pack", host, {**V2, **ALICE},
                     rawhttp.v2_fetch_body(head)))

    both_sites_clone(git, upstream, name, tmp_path)


def test_a_server_name_naming_another_host_grants_nothing(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = twin_repos(repos, upstream)
    head = warm(git, upstream, name, tmp_path / "alice")
    for who, auth in STRANGERS.items():
        requests = [*ref_requests("", upstream.host, name, auth),
                    http_request("POST", f"/{name}/git-upload-pack", upstream.host,
                                 {**V2, **auth}, rawhttp.v2_fetch_body(head))]
        answers = in_tunnel(proxy, upstream, requests, sni=B_NAME)
        assert all(no_pack(r) for r in answers), (
            f"{who} got a pack in a tunnel to A with SNI {B_NAME}: {[r.status for r in answers]}")
        assert_refused_on_a(proxy, upstream, name, head, auth, answers,
                            f"{who} got A's private commit after an SNI naming B")

    assert_alice_not_served_from_cache(
        proxy, upstream, name,
        http_request("POST", f"/{name}/git-upload-pack", upstream.host, {**V2, **ALICE},
                     rawhttp.v2_fetch_body(head)), sni=B_NAME)

    both_sites_clone(git, upstream, name, tmp_path)
