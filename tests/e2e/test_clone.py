"""Clones and fetches through a real mitmdump are answered from the cache."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Repos, count
from tests.support.gitclient import GitClient
from tests.support.net import wait_for
from tests.support.proxy import GobletProxy
from tests.support.repos import add_commit, make_empty_bare_repo
from tests.support.upstream_client import UpstreamServer

COLD_STREAM = "cold clone: the upstream's answer fills the cache"


def served_from_cache(proxy: GobletProxy, url: str) -> int:
    """How many fetches of ``url`` goblet answered through its cache: from it, or (a cold
    full clone, ``goblet_cold_clones=stream``) with the upstream's answer that filled it."""
    log = proxy.log_text()
    cached = re.findall(rf"git fetch {re.escape(url)} .*outcome=cache status=200", log)
    streamed = re.findall(rf"git fetch {re.escape(url)} .*outcome=upstream status=200 .*"
                          rf"{re.escape(COLD_STREAM)}", log)
    return len(cached) + len(streamed)


def remote_view(git: GitClient, clone: Path) -> dict[str, str]:
    """The refs a clone holds, named as on the remote."""
    out: dict[str, str] = {}
    for name, oid in git.refs(clone).items():
        if name.startswith("refs/remotes/origin/") and not name.endswith("/HEAD"):
            out["refs/heads/" + name.removeprefix("refs/remotes/origin/")] = oid
        elif name.startswith("refs/tags/"):
            out[name] = oid
    return out


def test_cold_and_warm_clone_match_a_direct_clone(
    git: GitClient, direct: GitClient, repos: Repos, upstream: UpstreamServer,
    proxy: GobletProxy, tmp_path: Path,
) -> None:
    name = repos.create()
    url = upstream.url(name)

    git.clone(url, tmp_path / "cold")
    after_cold = upstream.stats()
    assert count(after_cold, "fetch", name) == 1, "cold clone: exactly one upstream pack (the fill)"
    assert served_from_cache(proxy, url) == 1

    git.clone(url, tmp_path / "warm")
    after_warm = upstream.stats()
    assert count(after_warm, "fetch", name) == 1, "warm clone fetched pack data upstream"
    def requests_for(stats: dict[str, Any]) -> int:
        return len([r for r in stats["requests"] if r["path"].startswith(f"/{name}/")])

    warm_requests = requests_for(after_warm) - requests_for(after_cold)
    assert warm_requests <= 2, "warm clone: at most info/refs + ls-refs upstream"
    assert served_from_cache(proxy, url) == 2

    direct.clone(url, tmp_path / "direct")
    expected = remote_view(direct, tmp_path / "direct")
    assert remote_view(git, tmp_path / "cold") == expected
    assert remote_view(git, tmp_path / "warm") == expected
    for clone in ("cold", "warm"):
        git.fsck(tmp_path / clone)
        head = git.run("rev-parse", "HEAD", cwd=tmp_path / clone).stdout.strip()
        assert head == expected["refs/heads/main"]


def test_fetch_after_upstream_commit_fills_only_the_delta(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = repos.create(commits=40, blob_size=2000)
    url = upstream.url(name)
    before = upstream.stats()["pack_bytes"]
    git.clone(url, tmp_path / "c")
    full = upstream.stats()["pack_bytes"] - before

    new = add_commit(repos.path(name), message="one more")
    mid = upstream.stats()["pack_bytes"]
    res = git.run("fetch", "origin", cwd=tmp_path / "c")
    assert res.returncode == 0
    fetched = git.run("rev-parse", "origin/main", cwd=tmp_path / "c").stdout.strip()
    assert fetched == new
    delta = upstream.stats()["pack_bytes"] - mid
    assert 0 < delta < full / 5, f"delta fill moved {delta} bytes vs {full} for the full clone"
    assert count(upstream.stats(), "fetch", name) == 2
    assert served_from_cache(proxy, url) == 2
    git.fsck(tmp_path / "c")


@pytest.mark.parametrize(
    "options",
    [("--depth", "1"), ("--filter=blob:none",), ("--single-branch", "--branch", "dev"),
     ("--filter=tree:0", "--depth", "3")],
    ids=["depth1", "blobless", "single-branch", "treeless-depth3"],
)
def test_partial_clones_are_served_from_a_warm_cache(
    options: tuple[str, ...], git: GitClient, direct: GitClient, repos: Repos,
    upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path,
) -> None:
    name = repos.create()
    url = upstream.url(name)
    git.clone(url, tmp_path / "warmup")
    fills = count(upstream.stats(), "fetch", name)

    res = git.clone(url, tmp_path / "partial", *options)
    assert "filtering not recognized" not in res.stderr
    if any(o.startswith("--filter") for o in options):
        promisor = git.run("config", "remote.origin.promisor", cwd=tmp_path / "partial")
        assert promisor.stdout.strip() == "true", "the clone is not a partial clone"
    assert count(upstream.stats(), "fetch", name) == fills, "partial clone went upstream"
    direct.clone(url, tmp_path / "direct", *options)
    for ref in ("HEAD", "HEAD^{tree}"):
        ours = git.run("rev-parse", ref, cwd=tmp_path / "partial").stdout
        theirs = direct.run("rev-parse", ref, cwd=tmp_path / "direct").stdout
        assert ours == theirs
    files = sorted(p.name for p in (tmp_path / "partial").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "direct").iterdir())
    if "--depth" in options:
        shallow = git.run("rev-parse", "--is-shallow-repository", cwd=tmp_path / "partial")
        assert shallow.stdout.strip() == "true"


def test_protocol_v0_clone_is_served_from_cache(
    git: GitClient, direct: GitClient, repos: Repos, upstream: UpstreamServer,
    proxy: GobletProxy, tmp_path: Path,
) -> None:
    name = repos.create()
    url = upstream.url(name)
    v0 = ("protocol.version=0",)
    git.clone(url, tmp_path / "cold", config=v0)
    git.clone(url, tmp_path / "warm", config=v0)
    stats = upstream.stats()
    assert count(stats, "upload_pack_v0", name) == 0, "a v0 upload-pack POST reached upstream"
    assert count(stats, "fetch", name) == 1  # the fill
    assert served_from_cache(proxy, url) == 2
    direct.clone(url, tmp_path / "direct", config=v0)
    assert remote_view(git, tmp_path / "warm") == remote_view(direct, tmp_path / "direct")


def test_concurrent_cold_clones_share_one_fill(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = repos.create(commits=60, blob_size=4000)
    url = upstream.url(name)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(
            lambda i: git.clone(url, tmp_path / f"c{i}", check=False), range(8)
        ))
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
    heads = {git.run("rev-parse", "HEAD", cwd=tmp_path / f"c{i}").stdout for i in range(8)}
    assert len(heads) == 1
    # One fill (the first clone's answer, teed); the others, which never wait for a tee,
    # got the upstream's answer or (once it was done) the cache's.
    assert proxy.wait_for_log(f"fill {url} result=ok", 30)  # (a tee stores after its clone)
    assert proxy.log_text().count(f"fill {url} result=") == 1, "more than one fill"
    def passed() -> int:
        return len(re.findall(rf"git fetch {re.escape(url)} .*outcome=upstream status=200 .*"
                              "while a cold clone fills the cache", proxy.log_text()))

    # (each clone's access-log line is written as its answer ends: wait for all eight)
    wait_for("eight fetch lines", lambda: served_from_cache(proxy, url) + passed() == 8 or None,
             timeout=10)
    assert served_from_cache(proxy, url) >= 1
    assert count(upstream.stats(), "fetch", name) == 1 + passed()


def test_a_running_fill_does_not_block_requests_the_cache_can_serve(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = repos.create()
    url = upstream.url(name)
    git.clone(url, tmp_path / "first")
    add_commit(repos.path(name), branch="main", message="moves main")
    upstream.fault("stall", kinds=["fetch"], count=1)
    try:
        blocked = threading.Thread(
            target=lambda: git.run("fetch", "origin", cwd=tmp_path / "first", check=False)
        )
        blocked.start()
        time.sleep(0.5)  # let its ls-refs start the (stalled) fill
        started = time.monotonic()
        git.clone(url, tmp_path / "dev-only", "--single-branch", "--branch", "dev")
        assert blocked.is_alive(), "the fetch needing the fill should still be waiting"
        assert time.monotonic() - started < 4
    finally:
        upstream.fault("none")
        blocked.join(30)


def upstream_git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(repo), *args], check=True, capture_output=True, text=True,
        env={"PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(repo)},
    ).stdout.strip()


def test_objects_outside_branches_and_tags_are_fetched_by_id_and_then_cached(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    """A PR head (refs/pull/*) is not mirrored; fetching it by name or by id still works."""
    name = repos.create()
    url = upstream.url(name)
    pr = add_commit(repos.path(name), branch="pr-1", message="pull request")
    upstream_git(repos.path(name), "update-ref", "refs/pull/1/head", pr)
    upstream_git(repos.path(name), "update-ref", "-d", "refs/heads/pr-1")
    work = tmp_path / "c"
    git.clone(url, work)
    fills = count(upstream.stats(), "fetch", name)

    git.run("fetch", "origin", "refs/pull/1/head:refs/remotes/origin/pr-1", cwd=work)
    assert git.run("rev-parse", "origin/pr-1", cwd=work).stdout.strip() == pr
    assert count(upstream.stats(), "fetch", name) == fills + 1  # the exact-id fetch
    assert served_from_cache(proxy, url) == 2

    # Another clone asks for the same commit by id (actions/checkout style): now cached.
    other = tmp_path / "by-id"
    git.run("init", "-q", str(other))
    git.run("fetch", "--depth", "1", url, pr, cwd=other)
    assert git.run("rev-parse", "FETCH_HEAD", cwd=other).stdout.strip() == pr
    assert count(upstream.stats(), "fetch", name) == fills + 1
    assert served_from_cache(proxy, url) == 3


def test_force_push_and_deleted_refs_upstream_are_mirrored(
    git: GitClient, direct: GitClient, repos: Repos, upstream: UpstreamServer, tmp_path: Path
) -> None:
    name = repos.create()
    url = upstream.url(name)
    git.clone(url, tmp_path / "first")
    bare = repos.path(name)
    upstream_git(bare, "update-ref", "refs/heads/main", "refs/heads/main~3")  # force-push
    upstream_git(bare, "update-ref", "-d", "refs/heads/dev")
    upstream_git(bare, "update-ref", "-d", "refs/tags/v1")
    git.clone(url, tmp_path / "second")
    direct.clone(url, tmp_path / "direct")
    assert remote_view(git, tmp_path / "second") == remote_view(direct, tmp_path / "direct")
    fetched = git.run("fetch", "--prune", "--prune-tags", "origin", cwd=tmp_path / "first")
    assert fetched.returncode == 0
    assert remote_view(git, tmp_path / "first") == remote_view(direct, tmp_path / "direct")


def test_an_empty_repo_clones_as_empty(
    git: GitClient, repos: Repos, upstream: UpstreamServer, tmp_path: Path
) -> None:
    name = "empty-" + repos.create().removeprefix("r")
    make_empty_bare_repo(repos.path(name))
    repos.grant(name, public=True)
    res = git.clone(upstream.url(name), tmp_path / "e")
    assert "empty repository" in res.stderr
    add_commit(repos.path(name), message="first")
    git.run("pull", "origin", "main", cwd=tmp_path / "e")
    assert git.run("log", "--format=%s", cwd=tmp_path / "e").stdout.strip() == "first"


def test_large_negotiation_with_probe_and_chunked_body_is_served_from_cache(
    git: GitClient, direct: GitClient, repos: Repos, upstream: UpstreamServer,
    proxy: GobletProxy, tmp_path: Path,
) -> None:
    """1500 distinct tag wants make a >70 KB request: git sends the 0000 probe, then chunks."""
    name = repos.create(commits=1500, files_per_commit=1, blob_size=20, branches=("main",),
                        tags=(), annotated_tags=())
    bare = repos.path(name)
    oids = upstream_git(bare, "rev-list", "main").split()
    subprocess.run(
        ["git", "--git-dir", str(bare), "update-ref", "--stdin"], check=True,
        input="".join(f"create refs/tags/t{i} {oid}\n" for i, oid in enumerate(oids)),
        text=True, env={"PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(bare)},
    )
    url = upstream.url(name)
    small_buffer = ("http.postBuffer=70000",)  # git needs > 65520 here
    for protocol in ("2", "0"):
        config = (*small_buffer, f"protocol.version={protocol}")
        git.clone(url, tmp_path / f"v{protocol}", config=config)
        assert len(git.refs(tmp_path / f"v{protocol}")) > 1500
    stats = upstream.stats()
    assert count(stats, "probe", name) >= 1, "git did not send the probe: request too small?"
    assert count(stats, "fetch", name) == 1 and count(stats, "upload_pack_v0", name) == 0
    assert served_from_cache(proxy, url) == 2


def test_upstream_fetch_features_the_cache_lacks_are_hidden(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    """An upstream advertising ref-in-want would make git 2.39 use want-ref (uncacheable)."""
    name = repos.create()
    for key in ("uploadpack.allowRefInWant", "uploadpack.allowSidebandAll"):
        upstream_git(repos.path(name), "config", key, "true")
    url = upstream.url(name)
    direct_advert = subprocess.run(
        ["git", "ls-remote", url], capture_output=True, text=True, check=False,
        env={**git.env(), "GIT_SSL_CAINFO": str(upstream.cert_path), "HTTPS_PROXY": "",
             "https_proxy": "", "GIT_TRACE_PACKET": "1"},
    ).stderr
    assert "ref-in-want" in direct_advert  # the upstream really offers it
    git.clone(url, tmp_path / "cold")
    git.clone(url, tmp_path / "warm")
    assert count(upstream.stats(), "fetch", name) == 1
    assert served_from_cache(proxy, url) == 2
