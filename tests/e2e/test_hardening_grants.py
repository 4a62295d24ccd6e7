"""Grants come only from real ref advertisements; warming never caches what isolation forbids.

* An upstream (or something in front of it) may answer ``200`` with git's content type
  and a body that is only an ``ERR`` packet: that is a refusal, not a grant. A stranger
  who got such an answer must not be served the repo from the cache.
* In ``public`` isolation only anonymously readable repos are cached. Warming with a
  credential must not put a private repo on disk.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import Repos
from tests.support import attack, rawhttp
from tests.support.attack import UPLOAD_HEADERS, clone_head, git_through, proxy_for
from tests.support.cachedir import repos_for
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.proxy import GobletProxy
from tests.support.upstream_client import UpstreamServer

V2 = UPLOAD_HEADERS


def basic(user: str, password: str) -> str:
    return attack.basic(user, password)["Authorization"]


def send(upstream: UpstreamServer, proxy: GobletProxy | None, name: str, kind: str,
         auth: str, head: str = "") -> rawhttp.RawResponse:
    """info/refs, ls-refs or fetch for ``name``, through goblet or (proxy None) direct."""
    method, path, headers, body = "POST", f"/{name}/git-upload-pack", dict(V2), None
    if kind == "info_refs":
        method, path, body = "GET", f"/{name}/info/refs?service=git-upload-pack", None
        headers = {"Git-Protocol": "version=2"}
    elif kind == "ls_refs":
        body = rawhttp.v2_ls_refs_body()
    else:
        body = rawhttp.v2_fetch_body(head)
    return attack.send(upstream, proxy, method, path, {**headers, "Authorization": auth}, body)


def test_a_200_answer_holding_only_an_err_packet_grants_nothing(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = repos.create(public=False, readers=("alice",))
    url = upstream.url(name)
    head = clone_head(git, url, tmp_path / "alice", "alice", "alice-pw")
    bob = basic("bob", "bob-pw")

    upstream.fault("err200", kinds=["info_refs", "ls_refs"])
    try:
        for kind in ("info_refs", "ls_refs"):
            resp = send(upstream, proxy, name, kind, bob)
            assert resp.status == 200 and b"ERR go away" in resp.body, (kind, resp)
    finally:
        upstream.fault("none")

    via = send(upstream, proxy, name, "fetch", bob, head)
    straight = send(upstream, None, name, "fetch", bob, head)
    assert straight.status == 404  # the reference: upstream refuses bob
    assert b"packfile" not in via.body and b"PACK" not in via.body, (
        "a 200 whose body was an ERR packet counted as a grant: bob got the cached pack")
    assert via.status == straight.status

    git.clone(with_userinfo(url, "alice", "alice-pw"), tmp_path / "still-works")


def test_warming_in_public_isolation_never_caches_a_private_repo(
    repos: Repos, upstream: UpstreamServer, confdir: Path, tmp_path: Path
) -> None:
    private = repos.create(public=False, readers=("alice",))
    public = repos.create()
    warm_list = tmp_path / "warm-repos.txt"
    warm_list.write_text(f"{upstream.url(private)}\n{upstream.url(public)}\n")
    creds = tmp_path / "warm-credentials.txt"
    creds.write_text(f"Authorization: {basic('alice', 'alice-pw')}\n")
    creds.chmod(0o600)
    with proxy_for(tmp_path / "proxy", upstream, confdir,
                   {"goblet_isolation": "public", "goblet_warm_repos": str(warm_list),
                    "goblet_warm_credentials": str(creds),
                    "goblet_upstream_timeout": "5"}) as px:
        assert px.wait_for_log("warmed ", timeout=30), px.log_text()[-2000:]
        assert len(repos_for(px.cache_dir, upstream.url(public))) == 1
        assert repos_for(px.cache_dir, upstream.url(private)) == {}, (
            "public isolation: warming put a private repo in the cache")
        # alice still clones the private repo (straight from upstream in this mode).
        git = git_through(px, tmp_path / "home")
        git.clone(with_userinfo(upstream.url(private), "alice", "alice-pw"), tmp_path / "c")
        assert repos_for(px.cache_dir, upstream.url(private)) == {}
