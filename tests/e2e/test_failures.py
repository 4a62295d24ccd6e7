"""Bad input and failing upstreams give git-readable errors and lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support import rawhttp
from tests.support.gitclient import GitClient
from tests.support.proxy import GobletProxy
from tests.support.repos import add_commit
from tests.support.upstream_client import UpstreamServer

# The module's proxy (tests/e2e/conftest.py) gives up on a stalled upstream after 2 s.
PROXY_SETS = {"goblet_upstream_timeout": "2", "goblet_cold_clones": "fill"}


def cache_is_clean(proxy: GobletProxy) -> None:
    """No temporary repos, no lock or temp-pack residue, every repo fsck-clean."""
    assert list((proxy.cache_dir / "tmp").iterdir()) == []
    for repo in (proxy.cache_dir / "repos").iterdir():
        residue = [p for p in repo.rglob("*") if p.name.endswith(".lock")
                   or p.name.startswith("tmp_") or p.suffix == ".keep"]
        assert residue == []
        res = subprocess.run(["git", "--git-dir", str(repo), "fsck", "--no-dangling"],
                             capture_output=True, text=True, check=False,
                             env={"PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1",
                                  "HOME": str(proxy.workdir)})
        assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("fault", ["stall", "error500", "truncate", "reset"])
def test_cold_fill_failure_gives_a_git_error_and_no_cache_entry(
    fault: str, git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy,
    tmp_path: Path,
) -> None:
    name = repos.create(commits=30, blob_size=3000)
    upstream.fault(fault, kinds=["fetch"])  # every attempt fails, git's retries included
    try:
        started = time.monotonic()
        res = git.clone(upstream.url(name), tmp_path / "c", check=False)
    finally:
        upstream.fault("none")
    assert res.returncode != 0
    assert "remote error: goblet: upstream" in res.stderr, res.stderr
    assert time.monotonic() - started < 30
    cache_is_clean(proxy)
    # The next attempt works and is served from a complete cache.
    git.clone(upstream.url(name), tmp_path / "again")
    git.fsck(tmp_path / "again")
    cache_is_clean(proxy)


def test_truncated_delta_fill_leaves_the_cache_as_it_was(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = repos.create()
    git.clone(upstream.url(name), tmp_path / "c")
    before = git.run("rev-parse", "origin/main", cwd=tmp_path / "c").stdout
    add_commit(repos.path(name), files={"big.bin": os.urandom(300_000)})
    upstream.fault("truncate", kinds=["fetch"], count=1)
    try:
        res = git.run("fetch", "origin", cwd=tmp_path / "c", check=False)
    finally:
        upstream.fault("none")
    assert res.returncode != 0
    assert git.run("rev-parse", "origin/main", cwd=tmp_path / "c").stdout == before
    cache_is_clean(proxy)
    git.run("fetch", "origin", cwd=tmp_path / "c")
    git.fsck(tmp_path / "c")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"zzzz", "bad pkt-line length"),
        (b"0010command=fe", "truncated pkt-line"),
        (rawhttp.pkt(b"command=fetch") + b"0001" + rawhttp.pkt("want nothex") + b"0000",
         "bad object id"),
    ],
    ids=["bad-length", "truncated", "bad-oid"],
)
def test_malformed_requests_get_400_with_one_line(
    body: bytes, reason: str, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy
) -> None:
    name = repos.create(commits=2)
    resp = rawhttp.request(
        proxy_port=proxy.port, ca_file=proxy.ca_cert, host="127.0.0.1", port=upstream.port,
        method="POST", path=f"/{name}/git-upload-pack",
        headers={"Git-Protocol": "version=2",
                 "Content-Type": "application/x-git-upload-pack-request"}, body=body,
    )
    assert resp.status == 400
    assert resp.body.count(b"\n") == 1 and reason.encode() in resp.body, resp.body
    assert b"Traceback" not in resp.body


@pytest.mark.parametrize(
    "path",
    ["/a/../r.git/info/refs?service=git-upload-pack", "/a/%2e%2e/r.git/git-upload-pack",
     "/a//r.git/info/refs?service=git-upload-pack", "/" + "x" * 1100 + "/git-upload-pack"],
    ids=["dotdot", "encoded-dotdot", "empty-segment", "too-long"],
)
def test_unsafe_repo_paths_are_refused(
    path: str, upstream: UpstreamServer, proxy: GobletProxy
) -> None:
    method = "GET" if "info/refs" in path else "POST"
    resp = rawhttp.request(proxy_port=proxy.port, ca_file=proxy.ca_cert, host="127.0.0.1",
                           port=upstream.port, method=method, path=path, body=b"0000")
    assert resp.status == 400
    assert resp.body.startswith(b"goblet: bad repository path")


def test_a_client_killed_mid_clone_leaves_no_child(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = repos.create(commits=2)
    add_commit(repos.path(name), files={f"blob{i}.bin": os.urandom(2_000_000) for i in range(15)})
    git.clone(upstream.url(name), tmp_path / "warm")  # fill the cache

    client = subprocess.Popen(
        ["git", "clone", upstream.url(name), str(tmp_path / "killed")],
        env=git.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any("upload-pack" in cmd for _, cmd in proxy.children()):
                break
            time.sleep(0.005)
        else:
            pytest.fail("upload-pack never started")
        os.killpg(client.pid, signal.SIGSTOP)  # stop reading: upload-pack blocks on its pipe
        time.sleep(0.3)
        os.killpg(client.pid, signal.SIGKILL)
    finally:
        client.wait(10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not any("upload-pack" in cmd or "pack-objects" in cmd for _, cmd in proxy.children()):
            break
        time.sleep(0.1)
    assert [c for c in proxy.children() if "pack" in c[1]] == []
