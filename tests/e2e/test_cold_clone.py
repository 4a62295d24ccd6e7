"""Cold clones stream from the upstream while the same bytes fill the cache.

A full clone of a repo the cache does not have gets the upstream's answer as it
arrives (one upstream pack download, no wait for a fill); the cache ends up exactly
as a fill leaves it, or not at all when anything goes wrong on the way.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos, count, started_upstream
from tests.e2e.test_clone import COLD_STREAM, remote_view
from tests.support.attack import git_through, proxy_for
from tests.support.cachedir import repos_for, settle
from tests.support.gitclient import GitClient
from tests.support.net import wait_for
from tests.support.proxy import GobletProxy
from tests.support.repos import git as bare_git
from tests.support.throttle import SlowReader
from tests.support.upstream_client import UpstreamServer

SLOW_MBIT = 4  # the slow upstream: a 2.4 MB pack takes about five seconds


def cache_state(proxy: GobletProxy, url: str) -> dict[str, object] | None:
    """The state file of the one cache repo of ``url``, or None if there is none."""
    repos = repos_for(proxy.cache_dir, url)
    assert len(repos) <= 1
    return next(iter(repos.values()), None)


def assert_cache_sound(proxy: GobletProxy, upstream_repo: Path, url: str) -> None:
    """The cache repo of ``url`` is what a fill leaves: refs, HEAD, fsck-clean (checked
    once the full repack that follows a repo's first fill is done)."""
    [(path, state)] = repos_for(proxy.cache_dir, url).items()
    proxy.wait_for_log(f" repack of {url}: ", 30)
    heads_tags = {n: o for n, o in (line.split(" ", 1)[::-1] for line in bare_git(
        "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads", "refs/tags",
        cwd=upstream_repo).splitlines())}
    assert state["refs"] == heads_tags
    assert state["head"] == bare_git("symbolic-ref", "HEAD", cwd=upstream_repo)
    bare_git("fsck", "--full", "--no-dangling", cwd=path)
    assert bare_git("symbolic-ref", "HEAD", cwd=path) == state["head"]
    assert not list((path / "objects" / "pack").glob("*.keep"))
    assert not (path / "goblet-incoming.pack").exists()


def no_residue(proxy: GobletProxy) -> None:
    settle(proxy.cache_dir)
    assert list((proxy.cache_dir / "tmp").glob("*.git")) == []


def next_clone_fills(proxy: GobletProxy, git: GitClient, upstream_repo: Path, url: str,
                     dest: Path) -> None:
    """Nothing of ``url`` is cached; the next clone works and leaves a sound cache repo."""
    assert cache_state(proxy, url) is None
    git.clone(url, dest)
    git.fsck(dest)
    assert_cache_sound(proxy, upstream_repo, url)


def test_a_cold_clone_streams_and_fills_the_cache_with_one_download(
    git: GitClient, direct: GitClient, repos: Repos, upstream: UpstreamServer,
    proxy: GobletProxy, tmp_path: Path,
) -> None:
    name = repos.create(commits=20)
    url = upstream.url(name)
    before = upstream.stats()["pack_bytes"]
    git.clone(url, tmp_path / "cold")
    one_pack = upstream.stats()["pack_bytes"] - before
    assert count(upstream.stats(), "fetch", name) == 1
    assert COLD_STREAM in proxy.log_text()
    direct.clone(url, tmp_path / "direct")
    assert remote_view(git, tmp_path / "cold") == remote_view(direct, tmp_path / "direct")
    git.fsck(tmp_path / "cold")
    assert_cache_sound(proxy, repos.path(name), url)
    assert f"fill {url} result=ok" in proxy.log_text()

    after_direct = upstream.stats()["pack_bytes"]
    assert after_direct - before < 2.1 * one_pack  # the direct clone's pack
    git.clone(url, tmp_path / "warm")  # from the cache: no pack from upstream
    assert count(upstream.stats(), "fetch", name) == 2  # (the direct clone's)
    assert upstream.stats()["pack_bytes"] == after_direct
    assert remote_view(git, tmp_path / "warm") == remote_view(direct, tmp_path / "direct")


def test_sixteen_concurrent_cold_clones_download_the_pack_once(
    git: GitClient, direct: GitClient, repos: Repos, upstream: UpstreamServer,
    proxy: GobletProxy, tmp_path: Path,
) -> None:
    name = repos.create(commits=30, blob_size=4000)
    url = upstream.url(name)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(
            lambda i: git.clone(url, tmp_path / f"c{i}", check=False), range(16)))
    assert [r.returncode for r in results] == [0] * 16, [r.stderr for r in results]
    assert count(upstream.stats(), "fetch", name) == 1  # one tee; the rest follow it
    assert proxy.wait_for_log(f"fill {url} result=ok", 30)  # (stored after its clone ends)
    assert proxy.log_text().count(f"fill {url} result=") == 1
    direct.clone(url, tmp_path / "direct")
    want = remote_view(direct, tmp_path / "direct")
    for i in range(16):
        assert remote_view(git, tmp_path / f"c{i}") == want
    assert_cache_sound(proxy, repos.path(name), url)
    fetches = count(upstream.stats(), "fetch", name)
    git.clone(url, tmp_path / "warm")  # from the cache now
    assert count(upstream.stats(), "fetch", name) == fetches


def test_requests_for_less_than_everything_pass_through_and_warm_the_cache(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path,
) -> None:
    name = repos.create(commits=10)
    url = upstream.url(name)
    git.clone(url, tmp_path / "shallow", "--depth", "1")
    assert "cold: passed upstream while the cache fills" in proxy.log_text()
    settle(proxy.cache_dir)
    assert_cache_sound(proxy, repos.path(name), url)
    fetches = count(upstream.stats(), "fetch", name)
    assert fetches == 2  # the shallow answer, and the fill for the next clone
    git.clone(url, tmp_path / "full")
    assert count(upstream.stats(), "fetch", name) == fetches


def test_an_upstream_cut_mid_pack_leaves_no_cache_repo(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path,
) -> None:
    name = repos.create(commits=30, blob_size=3000)
    url = upstream.url(name)
    upstream.fault("truncate", kinds=["fetch"], count=1)
    res = git.clone(url, tmp_path / "cut", check=False)
    assert res.returncode != 0  # as a direct clone would fail
    no_residue(proxy)
    assert proxy.wait_for_log(f"fill {url} result=upstream_error")  # (logged just after)
    next_clone_fills(proxy, git, repos.path(name), url, tmp_path / "again")


# --------------------------------------------------------------- a slow upstream


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamServer]:
    """An upstream whose answers trickle (SLOW_MBIT), so clones can be cut midway."""
    with started_upstream(tmp_path_factory, "slow", rate_mbit=SLOW_MBIT) as server:
        yield server


@pytest.fixture
def slow_repo(slow: UpstreamServer) -> str:
    repos = Repos(slow)
    return repos.create(commits=40, files_per_commit=3, blob_size=20_000)


def wait_for_pack_bytes(upstream: UpstreamServer, least: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while upstream.stats()["pack_bytes"] < least and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_client_killed_mid_clone_leaves_nothing_half_served(
    slow: UpstreamServer, slow_repo: str, confdir: Path, tmp_path: Path,
) -> None:
    url = slow.url(slow_repo)
    with proxy_for(tmp_path / "px", slow, confdir) as px:
        git = git_through(px, tmp_path / "home")
        least = slow.stats()["pack_bytes"] + 200_000
        clone = subprocess.Popen(["git", "clone", url, str(tmp_path / "killed")],
                                 env=git.env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_pack_bytes(slow, least)
        os.killpg(clone.pid, signal.SIGKILL)
        clone.wait(10)
        assert px.wait_for_log(f"fill {url} result=abandoned", 30), (  # the client's doing
            px.log_text()[-3000:])
        # ... and so is its request: abandoned, not an error of goblet's or the upstream's
        assert px.wait_for_log("outcome=abandoned", 30), px.log_text()[-3000:]
        assert re.search(rf"git fetch {re.escape(url)} tenant=\S+ outcome=abandoned ",
                         px.log_text()), px.log_text()[-3000:]
        no_residue(px)
        next_clone_fills(px, git, slow.root / slow_repo, url, tmp_path / "next")


def test_kill_9_of_the_proxy_mid_tee_leaves_no_residue(
    slow: UpstreamServer, slow_repo: str, confdir: Path, tmp_path: Path,
) -> None:
    url = slow.url(slow_repo)
    px = proxy_for(tmp_path / "px", slow, confdir).start()
    try:
        git = git_through(px, tmp_path / "home")
        least = slow.stats()["pack_bytes"] + 200_000
        cloning = threading.Thread(
            target=lambda: git.clone(url, tmp_path / "lost", check=False), daemon=True)
        cloning.start()
        wait_for_pack_bytes(slow, least)
        assert list((px.cache_dir / "tmp").glob("*.git")), (
            list((px.cache_dir / "tmp").iterdir()), px.log_text()[-3000:])
        assert px.proc is not None
        px.proc.kill()
        px.proc.wait(10)
        cloning.join(60)
    finally:
        px.stop()
    with proxy_for(tmp_path / "px", slow, confdir, cache_dir=px.cache_dir) as again:
        assert list((again.cache_dir / "tmp").iterdir()) == []
        next_clone_fills(again, git_through(again, tmp_path / "home2"), slow.root / slow_repo,
                         url, tmp_path / "after")


def test_a_stalled_upstream_fails_the_cold_clone_within_the_timeout(
    repos: Repos, upstream: UpstreamServer, confdir: Path, tmp_path: Path,
) -> None:
    name = repos.create(commits=3)
    with proxy_for(tmp_path / "px", upstream, confdir, {"goblet_upstream_timeout": "2"}) as px:
        git = git_through(px, tmp_path / "home")
        upstream.fault("stall", kinds=["fetch"])
        try:
            started = time.monotonic()
            res = git.clone(upstream.url(name), tmp_path / "c", check=False)
        finally:
            upstream.fault("none")
        assert res.returncode != 0 and time.monotonic() - started < 30
        no_residue(px)
        assert cache_state(px, upstream.url(name)) is None
        assert "no data from the upstream" in px.log_text()


def test_fill_mode_keeps_filling_first(
    repos: Repos, upstream: UpstreamServer, confdir: Path, tmp_path: Path,
) -> None:
    name = repos.create(commits=3)
    with proxy_for(tmp_path / "px", upstream, confdir, {"goblet_cold_clones": "fill"}) as px:
        git = git_through(px, tmp_path / "home")
        git.clone(upstream.url(name), tmp_path / "c")
        assert COLD_STREAM not in px.log_text()
        assert "reason='filled, then served'" in px.log_text()
        states = [json.loads(p.read_text()) for p in
                  (px.cache_dir / "repos").glob("*.git/goblet-state.json")]
        assert [s["url"] for s in states] == [upstream.url(name)]


# --------------------------------------------------------------- slow and vanishing clients


def tee_begun(proxy: GobletProxy, timeout: float = 30) -> None:
    """Wait until a tee fill has made its temporary repo."""
    deadline = time.monotonic() + timeout
    while not list((proxy.cache_dir / "tmp").glob("*.git")):
        assert time.monotonic() < deadline, proxy.log_text()[-3000:]
        time.sleep(0.05)


def slow_clone(reader: SlowReader, proxy: GobletProxy, url: str, dest: Path,
               home: Path) -> subprocess.Popen[bytes]:
    """``git clone`` through ``reader`` (a slow reader of the proxy's answers)."""
    env = GitClient(home, ca_file=proxy.ca_cert, proxy=reader.url).env()
    return subprocess.Popen(["git", "clone", "--quiet", url, str(dest)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def big_repo(repos: Repos) -> str:
    """A repo whose pack (about 4 MB) no socket buffer on the way holds whole."""
    return repos.create(commits=40, files_per_commit=3, blob_size=32_000)


def test_a_slow_reader_of_a_cold_clone_delays_no_other_clone_and_keeps_its_answer(
    repos: Repos, upstream: UpstreamServer, direct: GitClient, confdir: Path, tmp_path: Path,
) -> None:
    name = big_repo(repos)
    url = upstream.url(name)
    started = time.monotonic()
    direct.clone(url, tmp_path / "direct")
    normal = time.monotonic() - started
    want = remote_view(direct, tmp_path / "direct")
    with proxy_for(tmp_path / "px", upstream, confdir, {"goblet_upstream_timeout": "3"}) as px, \
            SlowReader(px.port, rate=300) as reader:
        slow = slow_clone(reader, px, url, tmp_path / "slow", tmp_path / "home-slow")
        try:
            tee_begun(px)
            git = git_through(px, tmp_path / "home")
            started = time.monotonic()
            sibling = git.clone(url, tmp_path / "sibling", check=False)
            took = time.monotonic() - started
            assert sibling.returncode == 0, sibling.stderr
            assert took < 3 * normal + 5, (took, normal)  # not held by the slow reader
            assert remote_view(git, tmp_path / "sibling") == want
            assert px.wait_for_log("while a cold clone fills the cache")

            # The slow reader's copy is given up (the client's doing), its answer is not.
            assert px.wait_for_log(f"fill {url} result=abandoned", 30), px.log_text()[-3000:]
            assert "the client took less than 1000 bytes/s" in px.log_text()
            no_residue(px)
            assert cache_state(px, url) is None
            assert slow.poll() is None, "the slow reader's connection was closed"
            reader.rate = None
            _, err = slow.communicate(timeout=120)
            assert slow.returncode == 0, err
        finally:
            if slow.poll() is None:
                os.killpg(slow.pid, signal.SIGKILL)
                slow.wait(10)
        git.fsck(tmp_path / "slow")
        assert remote_view(git, tmp_path / "slow") == want
        assert f"fill {url} result=upstream_error" not in px.log_text()

        next_clone_fills(px, git, repos.path(name), url, tmp_path / "next")  # teed again


def test_a_client_gone_mid_tee_fails_no_sibling_and_leaves_no_half_repo(
    repos: Repos, upstream: UpstreamServer, confdir: Path, tmp_path: Path,
) -> None:
    name = big_repo(repos)
    url = upstream.url(name)
    with proxy_for(tmp_path / "px", upstream, confdir, {"goblet_upstream_timeout": "60"}) as px, \
            SlowReader(px.port, rate=2000) as reader:
        leaving = slow_clone(reader, px, url, tmp_path / "gone", tmp_path / "home-gone")
        git = git_through(px, tmp_path / "home")
        try:
            tee_begun(px)
            with ThreadPoolExecutor(1) as pool:
                sibling = pool.submit(git.clone, url, tmp_path / "sibling", check=False)
                # The sibling's fetch follows its ls-refs: let it reach the proxy first.
                deadline = time.monotonic() + 30
                while px.log_text().count(f"git ls_refs {url} ") < 2:
                    assert time.monotonic() < deadline, px.log_text()[-3000:]
                    time.sleep(0.05)
                time.sleep(1)
                os.killpg(leaving.pid, signal.SIGKILL)  # mid-tee: the client goes away
                leaving.wait(10)
                res = sibling.result(120)
        finally:
            if leaving.poll() is None:
                os.killpg(leaving.pid, signal.SIGKILL)
                leaving.wait(10)
        assert res.returncode == 0, res.stderr
        git.fsck(tmp_path / "sibling")
        assert px.wait_for_log(f"fill {url} result=abandoned", 30), px.log_text()[-3000:]
        assert f"fill {url} result=upstream_error" not in px.log_text()
        no_residue(px)
        next_clone_fills(px, git, repos.path(name), url, tmp_path / "next")


def test_a_cold_fetch_without_the_upstreams_head_fills_instead_of_teeing(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path,
) -> None:
    # HEAD names trunk; git's own default (and git init's, in the cache) is another name.
    name = repos.create(branches=("trunk", "dev"), default_branch="trunk")
    url = upstream.url(name)
    dest = tmp_path / "fetched"
    git.run("init", "--quiet", str(dest))
    # Every branch and tag, but no HEAD in the ref list: a full clone whose HEAD is unknown.
    git.run("fetch", "--quiet", url, "+refs/heads/*:refs/remotes/origin/*",
            "+refs/tags/*:refs/tags/*", cwd=dest)
    assert_cache_sound(proxy, repos.path(name), url)  # HEAD: refs/heads/trunk
    wait_for("the fetch's access-log line", lambda: re.search(
        rf"git fetch {re.escape(url)} .*filled, then served", proxy.log_text()))
    git.fsck(dest)
