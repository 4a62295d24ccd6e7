"""Red team: objects goblet counts as "just given to this credential" without asking in the
client's terms.

A fetch is served from the cache when each wanted object is a tip of the tenant's view,
reachable from one, confirmed by goblet's own probe *in the client's protocol version* —
or "proven": missing when the request came, and present after goblet filled the repo or
fetched the objects by id. Two ways "proven" proves too much:

* goblet fetches missing objects by id with ``git fetch``, which speaks protocol v2; the
  upstream's v2 ``upload-pack`` serves any object it has. A protocol v0 client asks under
  v0 rules, where an upstream with ``uploadpack.allowAnySHA1InWant=false`` refuses an
  object only a hidden ref reaches ("not our ref"). Through goblet the v0 client gets it.
* a fetch that waits for a fill *another credential* started counts everything that fill
  brought as given to itself. Here the ref is hidden upstream while alice's fill is in
  flight (with a forge's per-user ref permissions, the fill of a user who may see the
  ref does the same to anyone else waiting for it): bob, who never saw the ref, asks for
  its commit by id in v0 and gets it from the cache, where the upstream refuses him.

The reference in both is the upstream's answer to the very same request: "not our ref",
no pack.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Repos
from tests.e2e.test_hardening_grants import basic
from tests.e2e.test_hardening_objects import V0, is_pack, post, v0_fetch_body
from tests.support import rawhttp
from tests.support.attack import send
from tests.support.cachedir import has_object, repos_for
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.proxy import GobletProxy
from tests.support.repos import add_commit
from tests.support.repos import git as upstream_git
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e


def v0_info_refs(upstream: UpstreamServer, proxy: GobletProxy, name: str,
                 headers: dict[str, str] | None = None) -> rawhttp.RawResponse:
    """A protocol v0 ref advertisement through goblet: a fresh grant and view."""
    return send(upstream, proxy, "GET", f"/{name}/info/refs?service=git-upload-pack", headers)


def with_hidden_secret(repos: Repos, **grant: Any) -> tuple[str, str]:
    """A repo whose upstream serves v0 wants of advertised tips only, with a branch
    ``secret``; returns (name, the secret commit)."""
    name = repos.create(commits=3, **grant)
    bare = repos.path(name)
    upstream_git("config", "uploadpack.allowAnySHA1InWant", "false", cwd=bare)
    secret = add_commit(bare, branch="secret", files={"secret.txt": b"for the chosen\n"})
    return name, secret


def test_an_object_goblet_fetched_by_id_in_v2_is_not_served_to_a_v0_client(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name, secret = with_hidden_secret(repos)
    upstream_git("config", "uploadpack.hideRefs", "refs/heads/secret", cwd=repos.path(name))
    git.clone(upstream.url(name), tmp_path / "c")  # the cache never held the secret commit
    [cache] = repos_for(proxy.cache_dir, upstream.url(name))
    assert not has_object(cache, secret)

    straight = post(upstream, None, name, V0, v0_fetch_body(secret))
    assert not is_pack(straight.body) and b"not our ref" in straight.body  # the reference
    assert v0_info_refs(upstream, proxy, name).status == 200
    via = post(upstream, proxy, name, V0, v0_fetch_body(secret))
    assert not is_pack(via.body), (
        "goblet fetched an object only a hidden ref reaches by id (protocol v2) and served "
        "it to a protocol v0 client the upstream refuses")
    assert b"not our ref" in via.body


def stalled_fetch(upstream: UpstreamServer, name: str) -> bool:
    return any(r["kind"] == "fetch" and r["path"].startswith(f"/{name}/") and not r["status"]
               for r in upstream.stats()["requests"])


def test_waiting_for_another_credentials_fill_proves_nothing_about_this_one(
    repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name, secret = with_hidden_secret(repos, public=False, readers=("alice", "bob"))
    url = upstream.url(name)
    bob = basic("bob", "bob-pw")
    alice_git = GitClient(tmp_path / "alice-home", ca_file=proxy.ca_cert, proxy=proxy.url)
    clone: dict[str, Any] = {}

    # alice's clone starts the repo's first fill; the upstream is slow to send its pack.
    upstream.fault("stall", kinds=["fetch"], count=1)
    try:
        thread = threading.Thread(target=lambda: clone.setdefault("res", alice_git.clone(
            with_userinfo(url, "alice", "alice-pw"), tmp_path / "alice", check=False)),
            daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not stalled_fetch(upstream, name):
            assert time.monotonic() < deadline, "alice's fill never fetched"
            time.sleep(0.05)
        # Meanwhile the upstream hides the branch (for bob, at least).
        upstream_git("config", "uploadpack.hideRefs", "refs/heads/secret", cwd=repos.path(name))
        listed = v0_info_refs(upstream, proxy, name, {"Authorization": bob})
        assert listed.status == 200 and secret.encode() not in listed.body
        answer: dict[str, rawhttp.RawResponse] = {}
        asker = threading.Thread(target=lambda: answer.setdefault("via", post(
            upstream, proxy, name, {**V0, "Authorization": bob}, v0_fetch_body(secret))),
            daemon=True)
        asker.start()
        time.sleep(2)  # bob's fetch is waiting for alice's fill
    finally:
        upstream.fault("none")  # the fill's pack arrives
    asker.join(60)
    thread.join(120)
    assert clone["res"].returncode == 0, clone["res"].stderr

    straight = post(upstream, None, name, {**V0, "Authorization": bob}, v0_fetch_body(secret))
    assert not is_pack(straight.body) and b"not our ref" in straight.body  # the reference
    via = answer["via"]
    assert not is_pack(via.body), (
        "bob waited for alice's fill and was served a commit the upstream refuses him")
