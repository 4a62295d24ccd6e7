"""Tag following sends no tag the upstream no longer lists to the credential.

``git fetch`` follows tags: its request carries ``include-tag``, and upload-pack then adds
the tag object of every tag of the serving repo that points into the pack, listed to the
client or not. The cache keeps a tag deleted upstream until a fill prunes it (a ref request
limited to branches starts no fill), so a fetch answered from the cache could carry a tag
object (its message, its tagger) the upstream no longer has. goblet answers a tag-following
fetch from the cache only if every cached tag is one the upstream last listed to this
credential; otherwise the upstream answers.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from tests.e2e.conftest import Repos
from tests.support import rawhttp
from tests.support.attack import ALICE, UPLOAD_HEADERS, send
from tests.support.cachedir import has_object, repos_for
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.packs import objects_in, v2_pack
from tests.support.proxy import GobletProxy
from tests.support.repos import git as upstream_git
from tests.support.upstream_client import UpstreamServer

V2 = {**UPLOAD_HEADERS, **ALICE}


def ls_refs(*prefixes: str) -> bytes:
    return (rawhttp.pkt(b"command=ls-refs") + rawhttp.pkt("object-format=sha1") + b"0001"
            + rawhttp.pkt("peel") + rawhttp.pkt("symrefs")
            + b"".join(rawhttp.pkt(f"ref-prefix {p}") for p in prefixes) + b"0000")


def refs_then_fetch(upstream: UpstreamServer, proxy: GobletProxy | None, name: str,
                    prefixes: tuple[str, ...], head: str) -> dict[str, tuple[str, bytes]]:
    """As ``git fetch`` asks: info/refs, ls-refs (``prefixes``), then a fetch of ``head``
    following tags; the objects of the answer's pack."""
    path = f"/{name}/git-upload-pack"
    assert send(upstream, proxy, "GET", f"/{name}/info/refs?service=git-upload-pack",
                {"Git-Protocol": "version=2", **ALICE}).status == 200
    assert send(upstream, proxy, "POST", path, V2, ls_refs(*prefixes)).status == 200
    resp = send(upstream, proxy, "POST", path, V2,
                rawhttp.v2_fetch_body(head, extra=("include-tag", "no-progress")))
    assert resp.status == 200, resp.body[:300]
    return objects_in(v2_pack(resp.body))


def fetch_outcomes(proxy: GobletProxy, url: str) -> list[str]:
    return re.findall(rf"git fetch {re.escape(url)} .*?outcome=(\w+)", proxy.log_text())


def test_a_tag_deleted_upstream_is_not_sent_by_tag_following(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = repos.create(public=False, readers=("alice",), commits=4)
    bare, url = repos.path(name), upstream.url(name)
    secret = f"tag message {uuid.uuid4().hex}".encode()
    upstream_git("tag", "-a", "leaky", "-m", secret.decode(), "main~1", cwd=bare)
    tag = upstream_git("rev-parse", "refs/tags/leaky", cwd=bare)
    head = upstream_git("rev-parse", "refs/heads/main", cwd=bare)
    git.clone(with_userinfo(url, "alice", "alice-pw"), tmp_path / "c")
    [cache] = repos_for(proxy.cache_dir, url)
    assert has_object(cache, tag)

    # listed to alice: tag following is answered from the cache, the tag included
    got = refs_then_fetch(upstream, proxy, name, ("refs/heads/", "refs/tags/"), head)
    assert got[tag] == ("tag", got[tag][1]) and secret in got[tag][1]
    assert fetch_outcomes(proxy, url)[-1] == "cache"

    upstream_git("tag", "-d", "leaky", cwd=bare)
    upstream_git("gc", "--prune=now", "--quiet", cwd=bare)
    assert not has_object(bare, tag)
    straight = refs_then_fetch(upstream, None, name, ("refs/heads/",), head)
    assert tag not in straight  # the reference: the upstream sends no such tag

    # ls-refs of branches only: no fill prunes the cache's tag, and alice's view lacks it
    via = refs_then_fetch(upstream, proxy, name, ("refs/heads/",), head)
    [state] = repos_for(proxy.cache_dir, url).values()
    assert "refs/tags/leaky" in state["refs"] and has_object(cache, tag)
    assert tag not in via and not any(secret in body for _, body in via.values())
    assert set(via) == set(straight)
    assert fetch_outcomes(proxy, url)[-1] == "upstream"

    # a fetch that does not follow tags is still answered from the cache
    resp = send(upstream, proxy, "POST", f"/{name}/git-upload-pack", V2,
                rawhttp.v2_fetch_body(head, extra=("no-progress",)))
    assert tag not in objects_in(v2_pack(resp.body))
    assert fetch_outcomes(proxy, url)[-1] == "cache"
