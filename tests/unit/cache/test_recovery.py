"""What killed writers leave behind, and its removal.

- ``clean_residue`` on a real bare repo strewn with what a killed writer leaves;
- ``sweep_abandoned`` on ``tmp/`` and ``packcache/``: work whose writer's claim
  (an ``flock``) is gone is removed whatever pid its name carries, work of a live
  process (another real process holding its claim) is kept until it dies.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from goblet.cache import recovery
from goblet.cache.evict import Evictor
from goblet.cache.lifecycle import Lifecycle
from goblet.cache.locks import RepoLocks, WorkClaim, claim_fresh, names_file
from goblet.cache.maintenance import Maintainer
from goblet.cache.recovery import clean_residue, remove_tree, sweep_abandoned
from goblet.cache.store import RepoStore
from goblet.git.runner import GitRunner
from goblet.serve.packcache import PackCache

PACK = "pack-" + "1" * 40
GIT_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": "/dev/null", "LANG": "C", "LC_ALL": "C",
           "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@x"}

RESIDUE = [
    "HEAD.lock", "packed-refs.lock", "config.lock", "shallow.lock", "index.lock",
    "FETCH_HEAD.lock", "commit-graph.lock",
    "refs/heads/main.lock", "refs/heads/feature/deep/x.lock", "refs/tags/v1.lock",
    "objects/pack/tmp_pack_Ab12Cd", "objects/pack/tmp_idx_Ab12Cd", "objects/pack/tmp_rev_Ab12Cd",
    "objects/pack/.tmp-4242-pack-" + "2" * 40 + ".pack", f"objects/pack/{PACK}.keep",
    f"objects/pack/{PACK}.idx.lock", "objects/pack/multi-pack-index.lock",
    "objects/ab/tmp_obj_Zx9", "objects/00/tmp_obj_a",
]
KEPT = [
    "HEAD", "config", "packed-refs", "description", "refs/heads/main", "refs/heads/lockfile",
    "refs/heads/x.locked", "refs/tags/v1", f"objects/pack/{PACK}.pack",
    f"objects/pack/{PACK}.idx", f"objects/pack/{PACK}.promisor", "objects/ab/" + "c" * 38,
    "objects/ab/tmp_objx", "objects/info/packs", "objects/tmp_obj_top", "hooks/README",
    "info/exclude", "HEAD.lock.bak",
]


def git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], env=GIT_ENV, capture_output=True, check=False)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "cache" / "repos" / ("f" * 64 + ".git")
    path.parent.mkdir(parents=True)
    assert git("init", "-q", "--bare", str(path)).returncode == 0
    return path


def touch(root: Path, rel: str, content: str = "x") -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if not p.exists():
        p.write_text(content)
    return p


def test_removes_all_residue_and_nothing_else(repo: Path) -> None:
    for rel in RESIDUE + KEPT:
        touch(repo, rel)
    removed = clean_residue(repo)
    assert sorted(removed) == sorted(RESIDUE)
    for rel in RESIDUE:
        assert not (repo / rel).exists(), rel
    for rel in KEPT:
        assert (repo / rel).exists(), rel


@pytest.mark.parametrize("rel", RESIDUE)
def test_each_residue_kind_alone(repo: Path, rel: str) -> None:
    touch(repo, rel)
    assert clean_residue(repo) == [rel]
    assert not (repo / rel).exists()


def test_clean_repo_reports_nothing(repo: Path) -> None:
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    assert clean_residue(repo) == []
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before


def test_second_pass_finds_nothing(repo: Path) -> None:
    for rel in RESIDUE:
        touch(repo, rel)
    assert clean_residue(repo)
    assert clean_residue(repo) == []


def test_missing_repo_is_not_an_error(tmp_path: Path) -> None:
    assert clean_residue(tmp_path / "absent.git") == []


def test_quarantine_dir_is_removed_recursively(repo: Path) -> None:
    touch(repo, "objects/incoming-Qx81/pack/tmp_pack_1")
    touch(repo, "objects/incoming-Qx81/ab/" + "d" * 38)
    removed = clean_residue(repo)
    assert removed == ["objects/incoming-Qx81"]
    assert not (repo / "objects" / "incoming-Qx81").exists()


def test_real_git_quarantine_dir_is_removed(repo: Path) -> None:
    touch(repo, "objects/tmp_objdir-incoming-sm5Gwk/pack/tmp_pack_1")
    clean_residue(repo)
    assert not (repo / "objects" / "tmp_objdir-incoming-sm5Gwk").exists()


def test_git_2_39_quarantine_naming(tmp_path: Path) -> None:
    """Evidence for the test above: what receive-pack really creates while a push runs."""
    bare, work, seen = tmp_path / "q.git", tmp_path / "w", tmp_path / "seen"
    assert git("init", "-q", "--bare", str(bare)).returncode == 0
    hook = bare / "hooks" / "pre-receive"
    hook.write_text(f'#!/bin/sh\nls "$GIT_DIR/objects" > "{seen}"\n')
    hook.chmod(0o755)
    assert git("init", "-q", str(work)).returncode == 0
    assert git("-C", str(work), "commit", "-q", "--allow-empty", "-m", "x").returncode == 0
    assert git("-C", str(work), "push", "-q", str(bare), "HEAD:refs/heads/main").returncode == 0
    names = seen.read_text().split()
    assert any(n.startswith("tmp_objdir-incoming-") for n in names), names
    assert not any(n.startswith("incoming-") for n in names)


# ---------------------------------------------------------------------------- symlinks


def test_symlinked_lock_is_unlinked_not_followed(repo: Path, tmp_path: Path) -> None:
    outside = touch(tmp_path, "outside/precious")
    (repo / "HEAD.lock").symlink_to(outside)
    (repo / "refs" / "heads" / "evil.lock").symlink_to(outside)
    (repo / "objects" / "pack" / "tmp_pack_evil").symlink_to(outside)
    removed = clean_residue(repo)
    assert sorted(removed) == ["HEAD.lock", "objects/pack/tmp_pack_evil",
                               "refs/heads/evil.lock"]
    assert outside.read_text() == "x"


def test_symlinked_refs_and_pack_dirs_are_skipped(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    touch(outside, "refs/heads/x.lock")
    touch(outside, "pack/tmp_pack_1")
    (repo / "refs").rename(repo / "refs.real")
    (repo / "refs").symlink_to(outside / "refs")
    (repo / "objects" / "pack").rmdir()
    (repo / "objects" / "pack").symlink_to(outside / "pack")
    assert clean_residue(repo) == []
    assert (outside / "refs" / "heads" / "x.lock").exists()
    assert (outside / "pack" / "tmp_pack_1").exists()


def test_symlinked_quarantine_dir_is_left_alone(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    touch(outside, "keep/me")
    (repo / "objects" / "incoming-x").symlink_to(outside / "keep")
    clean_residue(repo)
    assert (outside / "keep" / "me").exists()


def test_symlink_inside_quarantine_dir_is_not_followed(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    touch(outside, "keep/me")
    touch(repo, "objects/incoming-x/pack/tmp_pack_1")
    (repo / "objects" / "incoming-x" / "link").symlink_to(outside / "keep")
    assert clean_residue(repo) == ["objects/incoming-x"]
    assert (outside / "keep" / "me").exists()


@pytest.mark.parametrize("link", ["objects", "objects/ab"])
def test_symlinked_objects_dir_is_not_followed(repo: Path, tmp_path: Path, link: str) -> None:
    outside = tmp_path / "outside"
    victims = [touch(outside, "pack/tmp_pack_1"), touch(outside, "ab/tmp_obj_1"),
               touch(outside, "incoming-1/f"), touch(outside, "tmp_obj_2")]
    target = outside if link == "objects" else outside / "ab"
    real = repo / link
    if real.is_dir():
        os.rename(real, tmp_path / "moved")
    real.parent.mkdir(parents=True, exist_ok=True)
    real.symlink_to(target)
    clean_residue(repo)
    assert all(v.exists() for v in victims), [str(v) for v in victims if not v.exists()]


# ---------------------------------------------------------------------------- real git


def test_git_works_again_after_cleaning(repo: Path, tmp_path: Path) -> None:
    """The locks a killed fetch leaves make git refuse to update refs until removed."""
    work = tmp_path / "w"
    assert git("init", "-q", str(work)).returncode == 0
    assert git("-C", str(work), "commit", "-q", "--allow-empty", "-m", "x").returncode == 0
    oid = git("-C", str(work), "rev-parse", "HEAD").stdout.decode().strip()
    touch(repo, "packed-refs.lock")
    touch(repo, "refs/heads/main.lock")
    fetch = ("--git-dir", str(repo), "fetch", "-q", str(work), "+HEAD:refs/heads/main")
    assert git(*fetch).returncode != 0
    assert sorted(clean_residue(repo)) == ["packed-refs.lock", "refs/heads/main.lock"]
    assert git(*fetch).returncode == 0
    assert git("--git-dir", str(repo), "rev-parse", "refs/heads/main").stdout.decode().strip() \
        == oid
    assert git("--git-dir", str(repo), "fsck", "--no-progress").returncode == 0


# ---------------------------------------------------------------------------- abandoned work

KEY = "e" * 64
# A writer in another process: claims work in DIR, creates it, says where, holds on.
NEIGHBOUR = """
import sys
from pathlib import Path
from goblet.cache.locks import claim_fresh
directory, suffix = Path(sys.argv[1]), sys.argv[2]
work, claim = claim_fresh(directory, sys.argv[3], suffix)
(work / "objects" / "pack").mkdir(parents=True) if suffix == ".git" else work.touch()
print(work, flush=True)
sys.stdin.read()
"""


class Neighbour:
    """Another process building ``<key>.<pid>.<ns><suffix>`` in ``directory``, claimed."""

    def __init__(self, directory: Path, suffix: str, key: str = KEY) -> None:
        env = {**os.environ, "PYTHONPATH": str(Path(recovery.__file__).parents[2])}
        self.proc = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(directory), suffix,
                                      key], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True)
        assert self.proc.stdout is not None
        self.work = Path(self.proc.stdout.readline().strip())
        assert self.work.exists()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def leftover(directory: Path, suffix: str, *, pid: int | None = None, lock: bool = True) -> Path:
    """Work a killed writer left: named with ``pid`` (default: ours, as a reused pid)."""
    stem = f"{KEY}.{os.getpid() if pid is None else pid}.{time.monotonic_ns()}"
    work = directory / f"{stem}{suffix}"
    if suffix == ".git":
        touch(work, "objects/pack/tmp_pack_Zk3q")
        touch(work, "HEAD", "ref: refs/heads/main\n")
    else:
        work.write_bytes(b"half an answer")
    if lock:
        (directory / f"{stem}.lock").touch()
    return work


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Path:
    path = tmp_path / "cache" / "tmp"
    path.mkdir(parents=True)
    return path


def test_leftovers_named_with_a_live_pid_are_swept(tmp_dir: Path) -> None:
    work = leftover(tmp_dir, ".git")
    bare = leftover(tmp_dir, ".git", lock=False)  # killed before... or an older layout
    lone_lock = tmp_dir / f"{KEY}.1.2.lock"  # its repo was renamed into place, then: kill
    lone_lock.touch()
    odd = [tmp_dir / "garbage", tmp_dir / ".ready-1-2", tmp_dir / f"{KEY}.notapid.1.git"]
    for p in odd:
        p.mkdir()
    assert sorted(sweep_abandoned(tmp_dir)) == sorted(p.name for p in [work, bare, *odd])
    assert list(tmp_dir.iterdir()) == []
    assert sweep_abandoned(tmp_dir) == []
    assert sweep_abandoned(tmp_dir / "missing") == []


def test_a_claim_in_this_process_keeps_its_work(tmp_dir: Path) -> None:
    work, claim = claim_fresh(tmp_dir, KEY, ".git")
    assert claim.held and claim.path == tmp_dir / f"{work.name[:-4]}.lock"
    assert sweep_abandoned(tmp_dir) == []  # the claim alone, before the work exists
    touch(work, "objects/pack/tmp_pack_1")
    assert sweep_abandoned(tmp_dir) == []
    assert work.is_dir() and claim.path.is_file()
    remove_tree(work)
    claim.release()
    claim.release()
    assert not claim.held and list(tmp_dir.iterdir()) == []


def test_a_live_neighbours_work_survives_until_it_dies(tmp_dir: Path) -> None:
    neighbour = Neighbour(tmp_dir, ".git")
    dead = leftover(tmp_dir, ".git", pid=neighbour.proc.pid)  # same pid, no holder
    try:
        assert sweep_abandoned(tmp_dir) == [dead.name]
        assert neighbour.work.is_dir()
        assert sorted(p.name for p in tmp_dir.iterdir()) == sorted(
            [neighbour.work.name, neighbour.work.name[:-4] + ".lock"])
    finally:
        neighbour.kill()  # kill -9: the kernel drops its flock
    assert sweep_abandoned(tmp_dir) == [neighbour.work.name]
    assert list(tmp_dir.iterdir()) == []


def test_a_claim_never_lands_on_a_taken_name(tmp_dir: Path) -> None:
    work, claim = claim_fresh(tmp_dir, KEY, ".tmp")
    with pytest.raises(FileExistsError):
        WorkClaim.take(claim.path)
    fd = os.open(claim.path, os.O_RDONLY)
    try:
        assert claim.held and names_file(claim.path, fd)
        claim.release()
        assert not names_file(claim.path, fd)
    finally:
        os.close(fd)
    assert not work.exists() and list(tmp_dir.iterdir()) == []


def test_pack_cache_load_spares_a_neighbours_production(tmp_path: Path) -> None:
    root = tmp_path / "packcache"
    root.mkdir()
    (root / "a.answer").write_bytes(b"stored")
    neighbour = Neighbour(root, ".tmp", key="b")
    dead = leftover(root, ".tmp")
    try:
        pc = PackCache(root, max_bytes=1024)
        pc.load()
        assert not dead.exists() and neighbour.work.is_file()
        assert pc.stored_bytes == 6
    finally:
        neighbour.kill()
    PackCache(root, max_bytes=1024).load()
    assert sorted(p.name for p in root.iterdir()) == ["a.answer"]


def lifecycle_of(root: Path) -> Lifecycle:
    store = RepoStore(root, GitRunner(home=root / "home"))
    store.prepare()
    locks = RepoLocks(store.lock_dir, poll=0.01)
    return Lifecycle(store, locks, store.git,
                     Evictor(store, locks, max_bytes=0, min_free_bytes=0),
                     Maintainer(store, locks, store.git))


def test_start_up_recovery_removes_killed_fills_whatever_their_pid(tmp_path: Path) -> None:
    """As after kill -9 in a container: the restarted proxy has the dead one's pid."""
    lifecycle = lifecycle_of(tmp_path / "cache")
    tmp_dir = lifecycle.store.tmp_dir
    killed = [leftover(tmp_dir, ".git") for _ in range(3)]
    report = asyncio.run(lifecycle.recover())
    assert report.temp_removed == 3
    assert not any(p.exists() for p in killed)
    assert list(tmp_dir.iterdir()) == []


def test_recovery_spares_readiness_probes_for_a_minute(tmp_path: Path) -> None:
    lifecycle = lifecycle_of(tmp_path / "cache")
    fresh, old = lifecycle.store.tmp_dir / ".ready-1-2", lifecycle.store.tmp_dir / ".ready-3-4"
    fresh.write_bytes(b"x")
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 120, time.time() - 120))
    assert lifecycle.sweep_tmp() == [old.name]
    assert fresh.exists()


def test_start_up_recovery_spares_a_live_neighbours_fill(tmp_path: Path) -> None:
    lifecycle = lifecycle_of(tmp_path / "cache")
    tmp_dir = lifecycle.store.tmp_dir
    neighbour = Neighbour(tmp_dir, ".git")
    try:
        assert asyncio.run(lifecycle.recover()).temp_removed == 0
        assert sorted(p.name for p in tmp_dir.iterdir()) == sorted(
            [neighbour.work.name, neighbour.work.name[:-4] + ".lock"])
    finally:
        neighbour.kill()
