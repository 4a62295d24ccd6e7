"""Eviction while serving, and the byte budget, against a real mitmdump.

(a) ``goblet cache evict`` (the CLI, a separate process) moves a repo to
    ``trash/`` while a clone of it is streaming; the clone, stopped meanwhile,
    completes and is whole, and the next clone fills the repo again.
(b) With ``goblet_cache_max_bytes`` small, filling more repos than fit evicts
    the least recently used ones: the repos and stored answers stay within the
    budget (plus the slack docs/operations/cache.md states) and
    ``goblet_evictions_total`` counts them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support.gitclient import GitClient
from tests.support.net import metric_sum
from tests.support.proxy import REPO_ROOT, GobletProxy
from tests.support.repos import list_refs
from tests.support.upstream_client import UpstreamServer

# Cold clones fill the cache, then are served from it (what these tests count).
PROXY_SETS = {"goblet_cold_clones": "fill"}

BUDGET = 3 * 1024 * 1024
# What docs/operations/cache.md allows right after a check: the index, bitmap and
# commit-graph files a repack may add after the check that followed its fill.
SLACK = 64 * 1024


def goblet(cache_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "HOME": str(cache_dir.parent), "PYTHONPATH": str(REPO_ROOT / "addon")}
    return subprocess.run(
        [sys.executable, "-m", "goblet.cli", "cache", *args, "--cache-dir", str(cache_dir)],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        check=False)


def metric(proxy: GobletProxy, name: str, **labels: str) -> float:
    return metric_sum(proxy.port, name, **labels)


def allocated(path: Path) -> int:
    """Bytes the budget counts for ``path``: allocated blocks of its files, like du."""
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_blocks * 512
    return total


def test_evicting_a_repo_a_clone_is_reading_lets_the_clone_finish(
    proxy: GobletProxy, git: GitClient, repos: Repos, upstream: UpstreamServer, tmp_path: Path
) -> None:
    name = repos.create(commits=8, blob_size=1_000_000)  # ~36 MB of random blobs
    url = upstream.url(name)
    git.clone(url, tmp_path / "warm")  # the first clone fills the cache
    [row] = [r for r in json.loads(goblet(proxy.cache_dir, "ls", "--json").stdout)
             if r["url"] == url]
    repo_dir = Path(row["path"])

    client = subprocess.Popen(["git", "clone", url, str(tmp_path / "reading")], env=git.env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not any("upload-pack" in cmd and str(repo_dir) in cmd
                      for _, cmd in proxy.children()):
            assert time.monotonic() < deadline, "upload-pack never started"
            assert client.poll() is None, "the clone ended before upload-pack was seen"
            time.sleep(0.005)
        os.killpg(client.pid, signal.SIGSTOP)  # the client stops reading mid-pack
        time.sleep(0.3)
        res = goblet(proxy.cache_dir, "evict", url, "--json")
        assert res.returncode == 0, res.stderr
        assert [e["url"] for e in json.loads(res.stdout)["evicted"]] == [url]
        assert not repo_dir.exists()
        trashed = [p for p in (proxy.cache_dir / "trash").iterdir()
                   if p.name.startswith(row["key"])]
        assert len(trashed) == 1
        assert any("upload-pack" in cmd for _, cmd in proxy.children()), \
            "the clone was already served whole: nothing was evicted under it"
    finally:
        os.killpg(client.pid, signal.SIGCONT)
        _, err = client.communicate(timeout=120)
    assert client.returncode == 0, err
    git.fsck(tmp_path / "reading")
    head = git.run("rev-parse", "HEAD", cwd=tmp_path / "reading").stdout.strip()
    assert head == list_refs(repos.path(name))["refs/heads/main"]
    assert trashed[0].exists()  # kept until the drain time has passed and nobody reads it
    git.clone(url, tmp_path / "refilled")  # the repo is filled again on demand
    assert repo_dir.is_dir()
    git.fsck(tmp_path / "refilled")


@pytest.fixture
def small_budget(tmp_path: Path, upstream: UpstreamServer, confdir: Path
                 ) -> Iterator[GobletProxy]:
    px = GobletProxy(tmp_path / "budget", hosts=[upstream.host], upstream_ca=upstream.cert_path,
                     confdir=confdir,
                     sets={"goblet_cache_max_bytes": str(BUDGET), **PROXY_SETS})
    with px:
        yield px


def test_the_budget_holds_and_evictions_are_counted(
    small_budget: GobletProxy, repos: Repos, upstream: UpstreamServer, tmp_path: Path
) -> None:
    proxy = small_budget
    git = GitClient(tmp_path / "home", ca_file=proxy.ca_cert, proxy=proxy.url)
    names = [repos.create(commits=2, files_per_commit=1, blob_size=500_000, seed=i,
                          branches=("main",), tags=(), annotated_tags=()) for i in range(6)]
    for i, name in enumerate(names[:5]):
        git.clone(upstream.url(name), tmp_path / f"c{i}")
    git.clone(upstream.url(names[4]), tmp_path / "again")  # stores its answer (pack cache)
    assert list((proxy.cache_dir / "packcache").glob("*.answer"))
    git.clone(upstream.url(names[5]), tmp_path / "c5")  # the fill after it checks the budget

    def used() -> int:
        return allocated(proxy.cache_dir / "repos") + allocated(proxy.cache_dir / "packcache")

    deadline = time.monotonic() + 20
    while metric(proxy, "goblet_evictions_total") == 0 or used() > BUDGET + SLACK:
        assert time.monotonic() < deadline, (used(), metric(proxy, "goblet_evictions_total"))
        time.sleep(0.2)
    evictions = metric(proxy, "goblet_evictions_total")
    left = {r["url"] for r in json.loads(goblet(proxy.cache_dir, "ls", "--json").stdout)}
    assert used() <= BUDGET + SLACK
    assert evictions >= 3 and len(left) + evictions == 6
    assert upstream.url(names[5]) in left  # the most recently used stays
    assert upstream.url(names[0]) not in left  # the least recently used went first
    assert proxy.wait_for_log("evicted https://", timeout=5)
    # Evicted repos are filled again when asked for. The answer that clone stores
    # comes after its fill's check: the next check (here: the next fill) counts it.
    for i in (0, 1):  # two back: with what is left, certainly over the budget again
        git.clone(upstream.url(names[i]), tmp_path / f"back{i}")
        git.fsck(tmp_path / f"back{i}")
    extra = repos.create(commits=1, files_per_commit=1, blob_size=1000, branches=("main",),
                         tags=(), annotated_tags=())
    git.clone(upstream.url(extra), tmp_path / "extra")
    deadline = time.monotonic() + 20
    while used() > BUDGET + SLACK:
        assert time.monotonic() < deadline, used()
        time.sleep(0.2)
    assert metric(proxy, "goblet_evictions_total") > evictions
