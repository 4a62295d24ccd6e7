"""The pack cache with real clones through a real mitmdump.

- 16 identical clones at once run upload-pack at most twice (one bypass on first
  sight, one production); the others follow the production or hit the stored
  answer, and every clone is whole with upstream's HEAD;
- a stored answer is never given to another repo, not even one with the very
  same objects and refs (identical request bodies);
- a stored answer survives a restart (a hit in the new process) and is not used
  once the repo's refs moved.

Roles are read from ``goblet_pack_cache_requests_total{result}``; bypass and
produce are exactly the requests that ran upload-pack.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Repos
from tests.support.gitclient import GitClient
from tests.support.net import http_get
from tests.support.proxy import GobletProxy
from tests.support.repos import add_commit, list_refs
from tests.support.upstream_client import UpstreamServer

# The first clone of a repo fills the cache and is then served from it, as these tests
# count (a cold clone streamed from the upstream is tests/e2e/test_cold_clone.py's).
PROXY_SETS = {"goblet_cold_clones": "fill"}

ROLES = ("bypass", "produce", "follow", "hit")


def scrape(proxy: GobletProxy) -> dict[str, float]:
    """Pack-cache roles and ok fills so far, from /metrics on the proxy port."""
    _, text = http_get(proxy.port, "/metrics")
    out = dict.fromkeys((*ROLES, "fills"), 0.0)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "goblet_pack_cache_requests_total":
                out[s.labels["result"]] += s.value
            elif s.name == "goblet_fills_total" and s.labels.get("result") == "ok":
                out["fills"] += s.value
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {k: int(after[k] - before[k]) for k in before}


def clone_ok(git: GitClient, url: str, dest: Path, upstream_repo: Path) -> None:
    """Clone, then check the clone is whole and at upstream's HEAD."""
    git.clone(url, dest)
    verify(git, dest, upstream_repo)


def verify(git: GitClient, dest: Path, upstream_repo: Path) -> None:
    git.fsck(dest)
    head = git.run("rev-parse", "HEAD", cwd=dest).stdout.strip()
    assert head == list_refs(upstream_repo)["refs/heads/main"]


def test_sixteen_identical_clones_run_upload_pack_at_most_twice(
    proxy: GobletProxy, git: GitClient, repos: Repos, upstream: UpstreamServer, tmp_path: Path
) -> None:
    name = repos.create(commits=6, blob_size=300_000)
    before = scrape(proxy)
    clients = [subprocess.Popen(["git", "clone", upstream.url(name), str(tmp_path / f"c{i}")],
                                env=git.env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
               for i in range(16)]
    for client in clients:
        _, err = client.communicate(timeout=180)
        assert client.returncode == 0, err
    d = delta(before, scrape(proxy))
    print(f"roles of 16 identical clones: {d}")
    assert sum(d[r] for r in ROLES) == 16, d
    assert d["bypass"] + d["produce"] <= 2, d  # upload-pack runs
    assert d["follow"] + d["hit"] >= 14, d
    assert d["fills"] == 1, d  # and one fill from upstream for all of them
    for i in range(16):
        verify(git, tmp_path / f"c{i}", repos.path(name))


def test_another_repo_never_gets_a_stored_answer(
    proxy: GobletProxy, git: GitClient, repos: Repos, upstream: UpstreamServer, tmp_path: Path
) -> None:
    shape = {"commits": 4, "blob_size": 50_000, "seed": 77}
    first = repos.create(**shape)
    twin = repos.create(**shape)  # the very same objects and refs: identical requests
    other = repos.create(**{**shape, "seed": 78})
    assert list_refs(repos.path(first)) == list_refs(repos.path(twin))
    for i in range(3):  # seen, produced, then hit
        clone_ok(git, upstream.url(first), tmp_path / f"first{i}", repos.path(first))
    before = scrape(proxy)
    clone_ok(git, upstream.url(first), tmp_path / "first-hit", repos.path(first))
    assert delta(before, scrape(proxy))["hit"] == 1

    before = scrape(proxy)
    clone_ok(git, upstream.url(twin), tmp_path / "twin", repos.path(twin))
    clone_ok(git, upstream.url(other), tmp_path / "other", repos.path(other))
    d = delta(before, scrape(proxy))
    assert d["hit"] == 0 and d["follow"] == 0, d
    assert d["bypass"] == 2, d  # each repo's first sight of its own key
    assert git.refs(tmp_path / "other")["refs/remotes/origin/main"] != \
        list_refs(repos.path(first))["refs/heads/main"]


@pytest.fixture
def own_proxy(
    tmp_path: Path, upstream: UpstreamServer, confdir: Path
) -> Iterator[list[GobletProxy]]:
    """A proxy this test may restart; the running one is the last of the list."""
    made = [GobletProxy(tmp_path / "own", hosts=[upstream.host], upstream_ca=upstream.cert_path,
                        confdir=confdir, sets=PROXY_SETS).start()]
    try:
        yield made
    finally:
        made[-1].stop()


def test_a_stored_answer_survives_a_restart_but_not_a_refs_change(
    own_proxy: list[GobletProxy], repos: Repos, upstream: UpstreamServer, tmp_path: Path
) -> None:
    name = repos.create(commits=4, blob_size=50_000)
    url, bare = upstream.url(name), repos.path(name)
    proxy = own_proxy[-1]
    git = GitClient(tmp_path / "home", ca_file=proxy.ca_cert, proxy=proxy.url)
    clone_ok(git, url, tmp_path / "a", bare)
    clone_ok(git, url, tmp_path / "b", bare)  # produces the answer
    assert delta(dict.fromkeys((*ROLES, "fills"), 0.0), scrape(proxy))["produce"] == 1
    stored = sorted((proxy.cache_dir / "packcache").glob("*.answer"))
    assert len(stored) == 1

    proxy.stop()
    proxy = GobletProxy(proxy.workdir, hosts=proxy.hosts, upstream_ca=proxy.upstream_ca,
                        confdir=proxy.confdir, cache_dir=proxy.cache_dir, sets=PROXY_SETS).start()
    own_proxy.append(proxy)
    git = GitClient(tmp_path / "home", ca_file=proxy.ca_cert, proxy=proxy.url)
    clone_ok(git, url, tmp_path / "after-restart", bare)
    d = delta(dict.fromkeys((*ROLES, "fills"), 0.0), scrape(proxy))
    assert (d["hit"], d["bypass"], d["produce"], d["fills"]) == (1, 0, 0, 0), d

    add_commit(bare, files={"moved.txt": b"the refs moved\n"})
    before = scrape(proxy)
    clone_ok(git, url, tmp_path / "after-push", bare)  # HEAD is the new commit
    d = delta(before, scrape(proxy))
    assert d["hit"] == 0 and d["bypass"] == 1 and d["fills"] == 1, d
    assert stored[0].exists()  # still stored (its refs may come back), never used for these
