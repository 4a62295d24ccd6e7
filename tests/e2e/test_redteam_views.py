"""Red team: confusing goblet about whose ref view, for which repo, a fetch is judged by.

All of these hold (regression tests). alice warms the cache with a private repo; a
stranger (anonymous or bob, who may not read it) then tries to borrow her grant or view:

* another spelling of the repo's URL (``rN`` for ``rN.git``, upper case): each spelling
  is its own cache repo and verdict, and the upstream refuses the stranger on each;
* alice's ref request and the stranger's fetch pipelined in one tunnel (one write);
* a ref request limited with ``ref-prefix`` (a partial view), then a fetch of a tip the
  view did not list: goblet asks the upstream instead of serving it;
* a ``Git-Protocol`` header git reads as v2 but goblet would not hand to its own
  upload-pack (which would then list every cached ref in v0): the upstream answers it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support import rawhttp
from tests.support.attack import (
    ALICE,
    BOB,
    STRANGERS,
    UPLOAD_HEADERS,
    clone_head,
    no_pack,
    send,
)
from tests.support.cachedir import settle
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.proxy import GobletProxy
from tests.support.tunnel import http_request, open_tunnel, read_response
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e

V2 = UPLOAD_HEADERS


def warm(git: GitClient, repos: Repos, upstream: UpstreamServer, tmp_path: Path) -> tuple[str, str]:
    name = repos.create(public=False, readers=("alice",), commits=3)
    return name, clone_head(git, upstream.url(name), tmp_path / "alice", "alice", "alice-pw")


@pytest.mark.parametrize("spelling", ["{stem}", "{upper}.git", "{stem}.GIT"])
def test_another_spelling_of_the_repo_borrows_nothing(
    spelling: str, git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy,
    tmp_path: Path,
) -> None:
    name, head = warm(git, repos, upstream, tmp_path)
    stem = name.removesuffix(".git")
    other = spelling.format(stem=stem, upper=stem.upper())
    for who, auth in STRANGERS.items():
        for path, method, body in (
                (f"/{other}/info/refs?service=git-upload-pack", "GET", None),
                (f"/{other}/git-upload-pack", "POST", rawhttp.v2_ls_refs_body())):
            send(upstream, proxy, method, path, {**V2, **auth}, body)
        for repo in (other, name):
            resp = send(upstream, proxy, "POST", f"/{repo}/git-upload-pack", {**V2, **auth},
                        rawhttp.v2_fetch_body(head))
            straight = send(upstream, None, "POST", f"/{repo}/git-upload-pack",
                            {**V2, **auth}, rawhttp.v2_fetch_body(head))
            assert no_pack(resp) and resp.status == straight.status, (who, repo, resp.status)


def test_a_grant_in_a_pipelined_request_is_not_the_next_requests(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name, head = warm(git, repos, upstream, tmp_path)
    for who, auth in STRANGERS.items():
        batch = [
            http_request("GET", f"/{name}/info/refs?service=git-upload-pack", upstream.host,
                         {"Git-Protocol": "version=2", **ALICE}),
            http_request("POST", f"/{name}/git-upload-pack", upstream.host, {**V2, **ALICE},
                         rawhttp.v2_ls_refs_body()),
            http_request("POST", f"/{name}/git-upload-pack", upstream.host, {**V2, **auth},
                         rawhttp.v2_fetch_body(head)),
        ]
        with open_tunnel(proxy.port, "127.0.0.1", upstream.port, ca_file=proxy.ca_cert) as sock:
            sock.sendall(b"".join(batch))  # one write: three pipelined requests
            answers = [read_response(sock) for _ in batch]
        assert [a.status for a in answers[:2]] == [200, 200]
        assert answers[2].status in (401, 404) and no_pack(answers[2]), (
            f"{who} got alice's commit in a tunnel where alice's ref requests went first")


def test_a_view_limited_by_ref_prefix_does_not_vouch_for_other_refs(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = repos.create(public=False, readers=("alice", "bob"), commits=3)
    git.clone(with_userinfo(upstream.url(name), "alice", "alice-pw"), tmp_path / "alice")
    dev = git.run("rev-parse", "origin/dev", cwd=tmp_path / "alice").stdout.strip()
    ls_dev = (rawhttp.pkt(b"command=ls-refs") + rawhttp.pkt("object-format=sha1") + b"0001"
              + rawhttp.pkt("ref-prefix refs/heads/main") + b"0000")
    listed = send(upstream, proxy, "POST", f"/{name}/git-upload-pack", {**V2, **BOB}, ls_dev)
    assert listed.status == 200 and dev.encode() not in listed.body
    fetches_before = sum(1 for r in upstream.stats()["requests"]
                         if r["kind"] == "fetch" and r["path"].startswith(f"/{name}/"))
    via = send(upstream, proxy, "POST", f"/{name}/git-upload-pack", {**V2, **BOB},
               rawhttp.v2_fetch_body(dev))
    asked = sum(1 for r in upstream.stats()["requests"]
                if r["kind"] == "fetch" and r["path"].startswith(f"/{name}/")) - fetches_before
    assert asked >= 1, "a tip outside bob's (prefix-limited) view was served without asking"
    assert b"PACK" in via.body  # bob may read the repo: the upstream confirmed it


@pytest.mark.parametrize("header", ["version=2:x/y", "version=2:" + "k" * 300])
def test_a_git_protocol_goblet_does_not_pass_on_lists_no_ref_the_upstream_hides(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path,
    header: str,
) -> None:
    """git reads such a header as v2, goblet's own upload-pack would get none of it (and
    list every ref in v0): the request is the upstream's, whoever holds a fresh grant."""
    name = repos.create(public=False, readers=("alice", "bob"), branches=("main", "secret"))
    bare = repos.path(name)
    secret = subprocess.run(["git", "-C", str(bare), "rev-parse", "refs/heads/secret"],
                            capture_output=True, text=True, check=True).stdout.strip()
    clone_head(git, upstream.url(name), tmp_path / "alice", "alice", "alice-pw")
    settle(proxy.cache_dir)  # the cache holds refs/heads/secret
    subprocess.run(["git", "-C", str(bare), "config", "uploadpack.hideRefs", "refs/heads/secret"],
                   check=True)  # a ref-level permission: hidden from everyone from now on
    ls_main = (rawhttp.pkt(b"command=ls-refs") + rawhttp.pkt("object-format=sha1")
               + rawhttp.pkt("server-option=goblet-max-age=0") + b"0001"
               + rawhttp.pkt("ref-prefix refs/heads/main") + b"0000")
    listed = send(upstream, proxy, "POST", f"/{name}/git-upload-pack", {**V2, **BOB}, ls_main)
    assert listed.status == 200 and secret.encode() not in listed.body  # bob's fresh grant
    path = f"/{name}/info/refs?service=git-upload-pack"
    got = send(upstream, proxy, "GET", path, {**BOB, "Git-Protocol": header})
    assert got.status == 200
    assert b"refs/heads/secret" not in got.body and secret.encode() not in got.body


@pytest.mark.parametrize("header", ["version=2:x/y", "version=1:version=2", "version=2"])
def test_a_stranger_gets_the_upstreams_verdict_whatever_git_protocol_it_sends(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path,
    header: str,
) -> None:
    """alice warms the cache (and holds a fresh grant); anonymous and bob, who may not read
    the repo, ask for its refs and objects with each header, as raw requests: each gets
    the upstream's own status and no ref or pack."""
    name, head = warm(git, repos, upstream, tmp_path)
    for who, auth in STRANGERS.items():
        for method, path, body in (
                ("GET", f"/{name}/info/refs?service=git-upload-pack", None),
                ("POST", f"/{name}/git-upload-pack", rawhttp.v2_ls_refs_body()),
                ("POST", f"/{name}/git-upload-pack", rawhttp.v2_fetch_body(head))):
            headers = {**V2, **auth, "Git-Protocol": header}
            via = send(upstream, proxy, method, path, headers, body)
            straight = send(upstream, None, method, path, headers, body)
            assert via.status == straight.status and via.status in (401, 403, 404), (
                who, method, header, via.status)
            assert head.encode() not in via.body and no_pack(via), (who, method, header)
