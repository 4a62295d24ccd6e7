"""Git LFS through goblet, with the real git-lfs client.

git-lfs (Go's proxy rules) never sends requests for a loopback address through
``HTTPS_PROXY``, and every test server listens on 127.0.0.1: the real client therefore
talks to goblet's path-prefix port here; ``test_lfs_attacks.py`` sends git-lfs's requests
by hand through the forward proxy's CONNECT tunnels.

A test LFS server (its own users, objects on a separate media host) stands next to the git
upstream. The first clone of an LFS repo through goblet brings each object from the media
host once, verified and stored; a warm clone brings 0 LFS bytes from upstream and the same
files. The batch requests still go upstream every time: upstream decides who gets what.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support.gitclient import GitClient
from tests.support.lfs_repos import lfs_config, make_lfs_repo
from tests.support.lfs_server import LfsServer
from tests.support.net import free_port
from tests.support.proxy import GobletProxy
from tests.support.upstream_client import UpstreamServer

BEARER = "Bearer tok-alice"


@pytest.fixture(scope="module")
def lfs(upstream: UpstreamServer, repos: Repos) -> Iterator[LfsServer]:
    """The LFS server, with the git upstream's users, rules and certificate."""
    with LfsServer(upstream.cert_path, upstream.cert_dir / "upstream-key.pem",
                   lambda: repos.config) as server:
        yield server


@pytest.fixture(scope="module")
def prefix_port() -> int:
    """goblet's path-prefix port."""
    return free_port()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer,
          lfs: LfsServer, confdir: Path, prefix_port: int) -> Iterator[GobletProxy]:
    """goblet for the git upstream and the LFS API host (the media host is only relayed)."""
    px = GobletProxy(tmp_path_factory.mktemp("proxy"), hosts=[upstream.host, lfs.api_host],
                     upstream_ca=upstream.cert_path, confdir=confdir,
                     sets={"goblet_upstream_timeout": "5", "goblet_relay_internal": "on",
                           "goblet_prefix_port": str(prefix_port)})
    with px:
        yield px


def lfs_repo(repos: Repos, lfs: LfsServer, *, public: bool = False,
             readers: tuple[str, ...] = ("alice",)) -> tuple[str, dict[str, bytes]]:
    """A repo with three LFS files (one of 3 MiB) on the upstream and the LFS server."""
    files = {"small.bin": os.urandom(1000), "big.bin": os.urandom(3 * 1024 * 1024),
             "empty.bin": b""}
    name = repos.create(public=public, readers=readers)  # a git repo to take its name
    path = repos.path(name)
    for child in sorted(path.rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    path.rmdir()
    make_lfs_repo(path, files)
    for content in files.values():
        lfs.add(content)
    return name, files


def clone(git: GitClient, url: str, dest: Path, lfs_url: str,
          authorization: str | None = BEARER, check: bool = True) -> None:
    """Clone with git-lfs smudging every LFS file."""
    git.clone(url, dest, config=lfs_config(lfs_url, authorization), check=check)


def via_prefix(port: int, host: str, name: str) -> str:
    """``http://127.0.0.1:<port>/<host>/<name>``: goblet's path-prefix URL."""
    return f"http://127.0.0.1:{port}/{host}/{name}"


def lfs_metrics(port: int) -> dict[str, float]:
    """The ``goblet_lfs_*`` samples of goblet's /metrics (on the path-prefix port)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in text.splitlines())
            if name.startswith("goblet_lfs_") and "_created" not in name}


def same_files(dest: Path, files: dict[str, bytes]) -> bool:
    """Whether the checkout holds exactly ``files``' contents."""
    return all((dest / name).read_bytes() == content for name, content in files.items())


def test_warm_clone_downloads_no_lfs_bytes_from_upstream(
        repos: Repos, lfs: LfsServer, upstream: UpstreamServer, proxy: GobletProxy,
        prefix_port: int, tmp_path: Path) -> None:
    name, files = lfs_repo(repos, lfs)
    git = GitClient(tmp_path / "home", ca_file=proxy.ca_cert)  # plain HTTP to goblet
    url = via_prefix(prefix_port, upstream.host, name)
    lfs_url = via_prefix(prefix_port, lfs.api_host, f"{name}/info/lfs")
    lfs.reset_counters()
    before = lfs_metrics(prefix_port)
    clone(git, url, tmp_path / "cold", lfs_url)
    assert same_files(tmp_path / "cold", files)
    assert lfs.media_bytes == sum(len(c) for c in files.values())

    lfs.reset_counters()
    clone(git, url, tmp_path / "warm", lfs_url)
    assert same_files(tmp_path / "warm", files)
    assert lfs.media_bytes == 0 and lfs.media_requests == 0
    after = lfs_metrics(prefix_port)
    grew = {name: after[name] - before.get(name, 0.0) for name in after}
    total = sum(len(c) for c in files.values())
    assert grew['goblet_lfs_bytes_total{source="upstream"}'] == total
    assert grew['goblet_lfs_bytes_total{source="cache"}'] == total
    assert grew['goblet_lfs_downloads_total{result="cache"}'] == 2
    assert grew['goblet_lfs_downloads_total{result="refused"}'] == 0
    assert any(p.endswith("/objects/batch") for _, p in lfs.requests)  # upstream asked
    log = proxy.log_text()
    assert "lfs_object" in log and "hrefsecret" not in log


def test_direct_clone_works_without_goblet(direct: GitClient, repos: Repos, lfs: LfsServer,
                                           upstream: UpstreamServer, tmp_path: Path) -> None:
    """The test server itself is sound: git-lfs straight to it gets the same files."""
    name, files = lfs_repo(repos, lfs)
    clone(direct, upstream.url(name), tmp_path / "direct", lfs.lfs_url(name))
    assert same_files(tmp_path / "direct", files)


def test_anonymous_clones_of_a_public_repo_share_the_store_and_strangers_get_nothing(
        repos: Repos, lfs: LfsServer, upstream: UpstreamServer, proxy: GobletProxy,
        prefix_port: int, tmp_path: Path) -> None:
    git = GitClient(tmp_path / "home", ca_file=proxy.ca_cert)
    public, files = lfs_repo(repos, lfs, public=True)
    url = via_prefix(prefix_port, upstream.host, public)
    lfs_url = via_prefix(prefix_port, lfs.api_host, f"{public}/info/lfs")
    clone(git, url, tmp_path / "anon1", lfs_url, authorization=None)
    lfs.reset_counters()
    clone(git, url, tmp_path / "anon2", lfs_url, authorization=None)
    assert same_files(tmp_path / "anon2", files) and lfs.media_bytes == 0

    private, _ = lfs_repo(repos, lfs)  # alice only: bob is refused as upstream refuses him
    lfs.reset_counters()
    res = git.clone(via_prefix(prefix_port, upstream.host, private), tmp_path / "bob",
                    config=lfs_config(via_prefix(prefix_port, lfs.api_host,
                                                 f"{private}/info/lfs"), "Bearer tok-bob"),
                    check=False)
    assert res.returncode != 0 and lfs.media_requests == 0
