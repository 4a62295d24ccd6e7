"""Red team: fetch arguments that name objects goblet does not check.

goblet checks every ``want`` and ``shallow`` of a fetch against what the upstream shows
the tenant; other arguments pass to the cache's ``upload-pack`` unchecked. One of them
names an object too: the partial-clone filter ``sparse:oid=<blob>`` reads a blob of the
repo as a list of sparse-checkout patterns and sends only the files they match. The
cache keeps objects the upstream deleted, so a client that knows the id of a deleted
blob gets an answer shaped by its content (which files match it), where the upstream,
which no longer has the blob, refuses the request.

Regression tests (the defence holds): deleted trees and blobs asked for by id, and a
forged ``shallow`` line naming a deleted commit, are never answered from the cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.e2e.test_hardening_objects import V2, cache_dropped_ref, fresh_grant, is_pack, post
from tests.support import rawhttp
from tests.support.cachedir import has_object, repos_for
from tests.support.gitclient import GitClient
from tests.support.net import wait_for
from tests.support.proxy import GobletProxy
from tests.support.repos import add_commit
from tests.support.repos import git as upstream_git
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e


def deleted_branch(git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy,
                   tmp_path: Path) -> tuple[str, str, dict[str, str]]:
    """A repo whose branch ``gone`` was cached by goblet, then deleted and garbage-collected
    upstream. Returns (name, main's tip, {"commit"/"tree"/"blob": ids of ``gone``'s tip})."""
    name = repos.create(commits=3)
    url = upstream.url(name)
    bare = repos.path(name)
    commit = add_commit(bare, branch="gone",
                        files={"patterns.txt": b"/data/\n!/data/main/c00000-f0.bin\n"})
    ids = {"commit": commit,
           "tree": upstream_git("rev-parse", f"{commit}^{{tree}}", cwd=bare),
           "blob": upstream_git("rev-parse", f"{commit}:patterns.txt", cwd=bare)}
    git.clone(url, tmp_path / "c")
    head = git.run("rev-parse", "HEAD", cwd=tmp_path / "c").stdout.strip()
    upstream_git("update-ref", "-d", "refs/heads/gone", cwd=bare)
    upstream_git("reflog", "expire", "--expire=now", "--all", cwd=bare)
    upstream_git("gc", "--prune=now", "--quiet", cwd=bare)
    git.run("fetch", "--prune", "origin", cwd=tmp_path / "c")
    cache_dropped_ref(proxy, url, "refs/heads/gone")
    [cache] = repos_for(proxy.cache_dir, url)
    for kind, oid in ids.items():
        assert not has_object(bare, oid) and has_object(cache, oid), kind
    return name, head, ids


def has_pack(body: bytes) -> bool:
    """Whether an upload-pack answer carries pack data (a v2 ``packfile`` section may
    also just carry an error)."""
    return b"PACK" in body


def fetch_outcomes(proxy: GobletProxy, name: str, at_least: int = 0) -> list[str]:
    """The ``outcome=`` of every fetch of ``name`` in goblet's access log, in order, once
    there are ``at_least`` (a request's line is written as its answer ends, so it may
    come a moment after the client has the answer; fails after 10 s)."""
    def outcomes() -> list[str] | None:
        got = [ln.split(" outcome=", 1)[1].split(" ", 1)[0]
               for ln in proxy.log_text().splitlines()
               if "git fetch " in ln and f"/{name} " in ln]
        return got if len(got) >= at_least else None
    return wait_for(f"{at_least} fetch line(s) of {name}", outcomes, timeout=10)


@pytest.mark.parametrize("spec", [
    "sparse:oid={blob}",
    "combine:tree:9+sparse%3Aoid%3D{blob}",  # git percent-decodes each combined filter
])
def test_a_sparse_filter_naming_a_deleted_blob_is_not_answered_from_the_cache(
    spec: str, git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy,
    tmp_path: Path,
) -> None:
    name, head, ids = deleted_branch(git, repos, upstream, proxy, tmp_path)
    body = rawhttp.v2_fetch_body(head, extra=(f"filter {spec.format(blob=ids['blob'])}",))
    straight = post(upstream, None, name, V2, body)
    assert not has_pack(straight.body), "the upstream itself applies the deleted blob"
    assert b"unable to parse sparse filter data" in straight.body
    fresh_grant(upstream, proxy, name)
    via = post(upstream, proxy, name, V2, body)
    assert not has_pack(via.body), (
        "goblet answered a fetch filtered by the contents of a blob the upstream deleted")


@pytest.mark.parametrize("kind", ["tree", "blob"])
def test_a_deleted_tree_or_blob_is_not_served_by_id(
    kind: str, git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy,
    tmp_path: Path,
) -> None:
    name, _, ids = deleted_branch(git, repos, upstream, proxy, tmp_path)
    body = rawhttp.v2_fetch_body(ids[kind])
    straight = post(upstream, None, name, V2, body)
    assert not is_pack(straight.body) and b"not our ref" in straight.body
    fresh_grant(upstream, proxy, name)
    via = post(upstream, proxy, name, V2, body)
    assert not is_pack(via.body), f"goblet served a deleted {kind} by id"


def test_a_forged_shallow_line_naming_a_deleted_commit_goes_upstream(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name, head, ids = deleted_branch(git, repos, upstream, proxy, tmp_path)
    body = rawhttp.v2_fetch_body(head, extra=(f"shallow {ids['commit']}", "deepen 1",
                                              "deepen-relative"))
    fresh_grant(upstream, proxy, name)
    before = len(fetch_outcomes(proxy, name))
    post(upstream, proxy, name, V2, body)
    outcomes = wait_for("the fetch's access-log line",
                        lambda: fetch_outcomes(proxy, name)[before:] or None)
    assert outcomes == ["upstream"], (
        "a fetch naming a deleted commit as shallow was answered from the cache")
