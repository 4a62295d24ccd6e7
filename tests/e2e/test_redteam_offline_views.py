"""Red team: what an offline ref answer shows a tenant, and whom it serves.

During an outage goblet answers ref requests from the cache, showing a tenant only the
refs the upstream listed for it in its last online answer ("the others are hidden with
``uploadpack.hideRefs``"). Attacks:

* a tenant whose last online answer listed a single branch (``git fetch origin dev``
  asks ``ls-refs`` for ``refs/heads/dev`` only) asks offline for all refs: the answer
  must list no other branch — but ``HEAD`` is not a ref name ``hideRefs`` hides, so it is
  shown, with the commit of the branch it points to (here ``main``, a branch the
  tenant's last answer did not list) and, in protocol v0, that branch's name in the
  ``symref`` capability;
* a tenant whose only grant came from a protocol v2 ``info/refs`` (capabilities, no
  refs) has no view: offline it is shown no refs and served nothing (holds).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support import rawhttp
from tests.support.attack import BOB, OFFLINE, UPLOAD_HEADERS, git_through, send
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.proxy import GobletProxy
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e

V2 = UPLOAD_HEADERS


@pytest.fixture
def oproxy(start_proxy: Callable[[dict[str, str]], GobletProxy]) -> GobletProxy:
    return start_proxy({**OFFLINE, "goblet_verdict_ttl": "60s", "goblet_upstream_timeout": "5"})


def ls_refs(prefixes: tuple[str, ...]) -> bytes:
    return (rawhttp.pkt(b"command=ls-refs") + rawhttp.pkt("object-format=sha1") + b"0001"
            + rawhttp.pkt("peel") + rawhttp.pkt("symrefs")
            + b"".join(rawhttp.pkt(f"ref-prefix {p}") for p in prefixes) + b"0000")


def warm(git: GitClient, repos: Repos, upstream: UpstreamServer, tmp_path: Path
         ) -> tuple[str, dict[str, str]]:
    name = repos.create(public=False, readers=("alice", "bob"), commits=4)
    git.clone(with_userinfo(upstream.url(name), "alice", "alice-pw"), tmp_path / "alice")
    return name, git.refs(tmp_path / "alice")


def test_an_offline_ref_answer_shows_only_what_the_tenants_last_answer_listed(
    oproxy: GobletProxy, repos: Repos, upstream: UpstreamServer, tmp_path: Path
) -> None:
    git = git_through(oproxy, tmp_path / "home")
    name, refs = warm(git, repos, upstream, tmp_path)
    main, dev = refs["refs/remotes/origin/main"], refs["refs/remotes/origin/dev"]
    listed = send(upstream, oproxy, "POST", f"/{name}/git-upload-pack", {**V2, **BOB},
                  ls_refs(("refs/heads/dev",)))
    assert listed.status == 200 and dev.encode() in listed.body
    assert main.encode() not in listed.body  # bob's last answer: dev only

    upstream.fault("reset")
    try:
        v0 = send(upstream, oproxy, "GET", f"/{name}/info/refs?service=git-upload-pack", BOB)
        v2 = send(upstream, oproxy, "POST", f"/{name}/git-upload-pack", {**V2, **BOB},
                  ls_refs(("HEAD", "refs/heads/", "refs/tags/")))
    finally:
        upstream.fault("none")
    for label, resp in (("v0 info/refs", v0), ("v2 ls-refs", v2)):
        assert resp.status == 200, (label, resp.status, resp.body[:200])
        assert dev.encode() in resp.body, label  # served offline
        assert main.encode() not in resp.body, (
            f"offline {label} showed bob the commit of a branch his last answer did not list")
        assert b"refs/heads/main" not in resp.body, (
            f"offline {label} showed bob the name of a branch his last answer did not list")


def test_a_grant_without_a_ref_list_serves_nothing_offline(
    oproxy: GobletProxy, repos: Repos, upstream: UpstreamServer, tmp_path: Path
) -> None:
    git = git_through(oproxy, tmp_path / "home")
    name, refs = warm(git, repos, upstream, tmp_path)
    main = refs["refs/remotes/origin/main"]
    caps = send(upstream, oproxy, "GET", f"/{name}/info/refs?service=git-upload-pack",
                {"Git-Protocol": "version=2", **BOB})
    assert caps.status == 200 and b"version 2" in caps.body  # bob's only answer: no refs

    upstream.fault("reset")
    try:
        listed = send(upstream, oproxy, "POST", f"/{name}/git-upload-pack", {**V2, **BOB},
                      ls_refs(("HEAD", "refs/heads/")))
        fetched = send(upstream, oproxy, "POST", f"/{name}/git-upload-pack", {**V2, **BOB},
                       rawhttp.v2_fetch_body(main))
    finally:
        upstream.fault("none")
    assert main.encode() not in listed.body
    assert b"PACK" not in fetched.body
