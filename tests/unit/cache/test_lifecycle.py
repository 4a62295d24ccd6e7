"""``fsck_error``: how start-up recovery and ``goblet cache verify`` judge a repo."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from goblet.cache.lifecycle import fsck_error
from goblet.git.runner import GitResult, GitRunner, GitTimeout

from tests.support.repos import make_bare_repo


@pytest.fixture
def runner(tmp_path: Path) -> GitRunner:
    (tmp_path / "home").mkdir()
    return GitRunner(home=tmp_path / "home")


def test_a_sound_repo_has_no_error(tmp_path: Path, runner: GitRunner) -> None:
    make_bare_repo(tmp_path / "r.git", commits=3)
    assert asyncio.run(fsck_error(runner, tmp_path / "r.git")) is None


def test_a_corrupt_object_is_named_by_gits_own_line(tmp_path: Path, runner: GitRunner) -> None:
    repo = tmp_path / "r.git"
    make_bare_repo(repo, commits=3)
    loose = sorted(p for p in (repo / "objects").glob("??/*") if p.is_file())
    assert loose  # a history this small is written as loose objects
    loose[0].chmod(0o644)
    loose[0].write_bytes(b"not zlib at all")
    error = asyncio.run(fsck_error(runner, repo))
    assert error is not None and error.startswith(("error:", "fatal:")), error


def test_a_missing_object_is_an_error_too(tmp_path: Path, runner: GitRunner) -> None:
    repo = tmp_path / "r.git"
    make_bare_repo(repo, commits=3)
    for path in sorted(p for p in (repo / "objects").glob("??/*") if p.is_file()):
        path.unlink()  # fsck names them on stdout only: the exit status speaks
    assert asyncio.run(fsck_error(runner, repo)) is not None


def test_a_fsck_past_its_deadline_is_an_error(tmp_path: Path) -> None:
    class Slow(GitRunner):
        async def run(self, args: object, **kw: object) -> GitResult:
            raise GitTimeout("git fsck timed out after 3600s")

    error = asyncio.run(fsck_error(Slow(home=tmp_path), tmp_path / "r.git"))
    assert error == "git fsck timed out after 3600s"
