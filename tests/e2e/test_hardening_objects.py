"""Objects the upstream no longer serves are not served by id from the cache.

The cache keeps objects after their refs go (a fill prunes refs, not objects). A fetch
that names such an object by id must get what the upstream gives: its refusal ("not our
ref"), never a pack. Two ways an object stops being servable upstream:

* deleted: its branch is removed and the upstream garbage-collects it;
* hidden: it is only reachable from a ref the upstream does not advertise
  (``uploadpack.hideRefs``) and the upstream does not serve unadvertised objects
  (``uploadpack.allowAnySHA1InWant=false``; git enforces that in protocol v0 only).
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import Repos
from tests.support import rawhttp
from tests.support.attack import UPLOAD_HEADERS, send
from tests.support.cachedir import has_object, repos_for
from tests.support.gitclient import GitClient
from tests.support.net import wait_for
from tests.support.proxy import GobletProxy
from tests.support.repos import add_commit
from tests.support.repos import git as upstream_git
from tests.support.upstream_client import UpstreamServer

V2 = UPLOAD_HEADERS
V0 = {"Content-Type": "application/x-git-upload-pack-request"}


def post(upstream: UpstreamServer, proxy: GobletProxy | None, name: str, headers: dict[str, str],
         body: bytes) -> rawhttp.RawResponse:
    return send(upstream, proxy, "POST", f"/{name}/git-upload-pack", headers, body)


def fresh_grant(upstream: UpstreamServer, proxy: GobletProxy, name: str) -> None:
    """An anonymous info/refs and ls-refs through goblet: a fresh grant, as a client would."""
    resp = send(upstream, proxy, "GET", f"/{name}/info/refs?service=git-upload-pack",
                {"Git-Protocol": "version=2"})
    assert resp.status == 200
    assert post(upstream, proxy, name, V2, rawhttp.v2_ls_refs_body()).status == 200


def v0_fetch_body(oid: str) -> bytes:
    """A stateless protocol v0 upload-pack request for ``oid``."""
    caps = "multi_ack_detailed side-band-64k thin-pack ofs-delta no-progress agent=git/2.39.5"
    return rawhttp.pkt(f"want {oid} {caps}") + b"0000" + rawhttp.pkt("done")


def is_pack(body: bytes) -> bool:
    return b"packfile" in body or b"PACK" in body


def cache_dropped_ref(proxy: GobletProxy, url: str, ref: str) -> None:
    """Wait until goblet's cache repo of ``url`` no longer lists ``ref``."""
    def dropped() -> bool | None:
        states = repos_for(proxy.cache_dir, url)
        ok = bool(states) and all(ref not in s.get("refs", {}) for s in states.values())
        return True if ok else None
    wait_for(f"the cache to drop {ref}", dropped, timeout=30)


def cached_branch(git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy,
                  clone: Path, branch: str, text: bytes,
                  upstream_config: dict[str, str] | None = None) -> tuple[str, Path, Path, str]:
    """A repo (its upstream configured with ``upstream_config``) with a branch ``branch``
    whose tip adds ``BRANCH.txt``, cloned through goblet into ``clone``: the tip is in the
    cache. Returns (repo name, upstream bare repo, cache repo, the tip)."""
    name = repos.create(commits=3)
    bare = repos.path(name)
    for key, value in (upstream_config or {}).items():
        upstream_git("config", key, value, cwd=bare)
    tip = add_commit(bare, branch=branch, files={f"{branch}.txt": text})
    git.clone(upstream.url(name), clone)
    [cache] = repos_for(proxy.cache_dir, upstream.url(name))
    assert has_object(cache, tip)
    return name, bare, cache, tip


def assert_not_served(upstream: UpstreamServer, proxy: GobletProxy, name: str, oid: str,
                      versions: tuple[str, ...] = ("v2", "v0")) -> None:
    """Fetches of ``oid`` through goblet give no pack, exactly like the upstream."""
    for version in versions:
        headers, body = (V2, rawhttp.v2_fetch_body(oid)) if version == "v2" else (
            V0, v0_fetch_body(oid))
        straight = post(upstream, None, name, headers, body)
        assert not is_pack(straight.body), f"{version}: the upstream itself serves the object"
        assert b"not our ref" in straight.body, (version, straight.body[:300])
        fresh_grant(upstream, proxy, name)
        via = post(upstream, proxy, name, headers, body)
        assert not is_pack(via.body), f"{version}: goblet served {oid} by id from its cache"
        assert via.status == straight.status, version
        assert b"not our ref" in via.body, (version, via.body[:300])


def test_an_object_deleted_upstream_is_not_served_by_id(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name, bare, cache, leak = cached_branch(git, repos, upstream, proxy, tmp_path / "c",
                                            "leak", b"deleted upstream later\n")
    url = upstream.url(name)

    upstream_git("update-ref", "-d", "refs/heads/leak", cwd=bare)
    upstream_git("reflog", "expire", "--expire=now", "--all", cwd=bare)
    upstream_git("gc", "--prune=now", "--quiet", cwd=bare)
    assert not has_object(bare, leak)
    git.run("fetch", "--prune", "origin", cwd=tmp_path / "c")
    cache_dropped_ref(proxy, url, "refs/heads/leak")
    assert has_object(cache, leak)  # the object is still in the cache, unreferenced

    assert_not_served(upstream, proxy, name, leak)
    git.clone(url, tmp_path / "still-works")


def test_an_object_only_a_hidden_ref_reaches_is_not_served_by_id(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name, bare, cache, secret = cached_branch(
        git, repos, upstream, proxy, tmp_path / "c", "secret", b"hidden later\n",
        upstream_config={"uploadpack.allowAnySHA1InWant": "false"})
    url = upstream.url(name)

    upstream_git("config", "uploadpack.hideRefs", "refs/heads/secret", cwd=bare)
    git.run("fetch", "--prune", "origin", cwd=tmp_path / "c")
    cache_dropped_ref(proxy, url, "refs/heads/secret")
    assert has_object(bare, secret) and has_object(cache, secret)

    # git's protocol v2 upload-pack serves any object it has, hidden or not; protocol v0
    # honours uploadpack.allowAnySHA1InWant=false and refuses: that is the reference here.
    assert_not_served(upstream, proxy, name, secret, versions=("v0",))
    git.clone(url, tmp_path / "still-works")
