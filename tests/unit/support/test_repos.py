"""Tests of the deterministic repo builders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.repos import (
    GitError,
    add_commit,
    git,
    list_refs,
    make_bare_repo,
    make_empty_bare_repo,
)


def test_make_bare_repo_is_deterministic_and_shaped(tmp_path: Path) -> None:
    options: dict[str, Any] = {
        "commits": 4,
        "branches": ["main", "dev", "feature/x"],
        "tags": ["v1", "v2"],
        "annotated_tags": ["r1"],
        "default_branch": "dev",
    }
    make_bare_repo(tmp_path / "a.git", **options)
    make_bare_repo(tmp_path / "b.git", **options)
    refs = list_refs(tmp_path / "a.git")
    assert refs == list_refs(tmp_path / "b.git")
    assert set(refs) == {
        "refs/heads/main",
        "refs/heads/dev",
        "refs/heads/feature/x",
        "refs/tags/v1",
        "refs/tags/v2",
        "refs/tags/r1",
    }
    repo = tmp_path / "a.git"
    assert git("symbolic-ref", "HEAD", cwd=repo) == "refs/heads/dev"
    assert git("rev-list", "--count", "dev", cwd=repo) == "4"
    # Other branches fork at the default branch's commit (4 - 1) // 2 and add 4 // 2 commits.
    assert git("merge-base", "main", "dev", cwd=repo) == git("rev-parse", "dev~2", cwd=repo)
    assert git("rev-list", "--count", "main", cwd=repo) == "4"
    assert git("cat-file", "-t", "r1", cwd=repo) == "tag"
    assert git("rev-parse", "r1^{commit}", cwd=repo) == refs["refs/heads/dev"]
    assert refs["refs/tags/v2"] == git("rev-parse", "dev~1", cwd=repo)
    assert git("config", "--get", "core.bare", cwd=repo) == "true"
    with pytest.raises(ValueError):
        make_bare_repo(tmp_path / "c.git", branches=["dev"])


def test_add_commit_is_deterministic(tmp_path: Path) -> None:
    tips = []
    for name in ("a.git", "b.git"):
        make_empty_bare_repo(tmp_path / name, default_branch="trunk")
        first = add_commit(tmp_path / name, branch="trunk", message="one")
        second = add_commit(tmp_path / name, branch="trunk", files={"x/y.txt": b"data\n"})
        tips.append(second)
        repo = tmp_path / name
        assert git("rev-parse", "trunk~1", cwd=repo) == first
        assert git("show", "trunk:x/y.txt", cwd=repo) == "data"
        assert git("show", "trunk:added/commit-00001.txt", cwd=repo) == "one"
    assert tips[0] == tips[1]
    with pytest.raises(GitError):
        git("rev-parse", "--verify", "no-such-ref", cwd=tmp_path / "a.git")
