"""A full cache disk: fills fail cleanly, clones still work, /readyz says why.

The cache dir lives on an 8 MiB tmpfs (mounting needs root; CI runs as root).
A repo whose pack does not fit is cloned through the proxy: its first fill
runs out of space, the clone is answered by the upstream, and the cache keeps
only whole repos (fsck-clean, no temporary repo, pack or lock left). With the
disk nearly full (a ballast file next to the cache), ``/readyz`` fails with the
free-disk reason, a fill into an existing repo runs out of space mid-pack
without touching that repo, and clones keep working.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support.gitclient import GitClient
from tests.support.proxy import GobletProxy
from tests.support.repos import add_commit, list_refs
from tests.support.upstream_client import UpstreamServer

DISK = 8 * 1024 * 1024
MIN_FREE = 2 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted for this test only."""
    if os.geteuid() != 0:
        pytest.fail("test_disk_full mounts an 8 MiB tmpfs and must run as root (CI runs "
                    ".ci/run as root); without root there is no seam to inject ENOSPC into "
                    "a real mitmdump's fills")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0755", "tmpfs", str(mnt)],
                   check=True, capture_output=True)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


@pytest.fixture
def full_proxy(small_disk: Path, tmp_path: Path, upstream: UpstreamServer, confdir: Path
               ) -> Iterator[GobletProxy]:
    px = GobletProxy(tmp_path / "proxy", hosts=[upstream.host], upstream_ca=upstream.cert_path,
                     confdir=confdir, cache_dir=small_disk / "cache",
                     sets={"goblet_min_free_bytes": str(MIN_FREE), "goblet_cold_clones": "fill"})
    with px:
        yield px


def readyz(proxy: GobletProxy) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("GET", "/readyz")
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def assert_consistent(cache: Path) -> set[str]:
    """Only whole repos: fsck-clean, no residue, nothing in tmp/; returns the repo dirs."""
    assert [p.name for p in (cache / "tmp").iterdir() if not p.name.startswith(".ready-")] == []
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": str(cache.parent)}
    names = set()
    for repo in (cache / "repos").iterdir():
        names.add(repo.name)
        residue = [str(p.relative_to(repo)) for p in repo.rglob("*")
                   if p.name.endswith(".lock") or p.name.startswith(("tmp_", ".tmp-"))
                   or p.suffix == ".keep"]
        assert residue == [], residue
        res = subprocess.run(["git", "--git-dir", str(repo), "fsck", "--no-dangling"],
                             capture_output=True, text=True, check=False, env=env)
        assert res.returncode == 0, res.stderr
    return names


def clone_ok(git: GitClient, url: str, dest: Path, bare: Path) -> None:
    git.clone(url, dest)
    git.fsck(dest)
    assert git.run("rev-parse", "HEAD", cwd=dest).stdout.strip() == \
        list_refs(bare)["refs/heads/main"]
    shutil.rmtree(dest)


def test_a_full_disk_fails_fills_cleanly_and_clones_still_work(
    full_proxy: GobletProxy, small_disk: Path, repos: Repos, upstream: UpstreamServer,
    tmp_path: Path
) -> None:
    proxy, cache = full_proxy, full_proxy.cache_dir
    git = GitClient(tmp_path / "home", ca_file=proxy.ca_cert, proxy=proxy.url)
    small = repos.create(commits=3, blob_size=20_000)
    big = repos.create(commits=4, blob_size=1_000_000, branches=("main",))  # ~12 MB of pack
    assert readyz(proxy)[0] == 200

    clone_ok(git, upstream.url(small), tmp_path / "small", repos.path(small))
    [small_dir] = assert_consistent(cache)

    clone_ok(git, upstream.url(big), tmp_path / "big", repos.path(big))  # via upstream
    assert proxy.wait_for_log(f"fill {upstream.url(big)} result=local_error")
    assert proxy.wait_for_log(f"git fetch {upstream.url(big)} tenant=anonymous "
                              "outcome=upstream status=200")
    assert assert_consistent(cache) == {small_dir}
    assert shutil.disk_usage(small_disk).free > DISK - 1024 * 1024  # the failed fill is gone

    # Nearly full: readiness fails with the reason, clones keep working.
    ballast = small_disk / "ballast"
    with ballast.open("wb") as f:
        f.write(b"\0" * (shutil.disk_usage(small_disk).free - MIN_FREE // 2))
    status, body = readyz(proxy)
    assert status == 503
    assert "free disk" in body and f"below goblet_min_free_bytes {MIN_FREE}" in body
    refs_before = list_refs(Path(cache / "repos" / small_dir))
    add_commit(repos.path(small), files={"grown.bin": os.urandom(2 * 1024 * 1024)})
    clone_ok(git, upstream.url(small), tmp_path / "small-grown", repos.path(small))
    assert proxy.wait_for_log(f"fill {upstream.url(small)} result=local_error")
    assert assert_consistent(cache) <= {small_dir}  # evicting it would be fine, damaging not
    if (cache / "repos" / small_dir).exists():
        assert list_refs(cache / "repos" / small_dir) == refs_before  # --atomic: untouched
    clone_ok(git, upstream.url(big), tmp_path / "big-again", repos.path(big))
    assert_consistent(cache)

    ballast.unlink()
    assert readyz(proxy)[0] == 200
    clone_ok(git, upstream.url(small), tmp_path / "small-after", repos.path(small))
    assert assert_consistent(cache) == {small_dir}
