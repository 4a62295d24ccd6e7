"""clean_residue on a real bare repo strewn with what a killed writer leaves behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from goblet.cache.recovery import clean_residue

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
