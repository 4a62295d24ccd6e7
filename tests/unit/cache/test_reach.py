"""Reachability from ref tips, on a real repo: tips, history, blobs, side branches, gone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from goblet.cache.reach import existing, unreachable
from goblet.git.runner import GitRunner

from tests.support.repos import add_commit, git, make_bare_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | Path]:
    path = tmp_path_factory.mktemp("reach") / "r.git"
    make_bare_repo(path, commits=3, branches=("main",), tags=(), annotated_tags=("v1",))
    main = git("rev-parse", "refs/heads/main", cwd=path)
    old = git("rev-parse", "refs/heads/main~2", cwd=path)
    side = add_commit(path, branch="side", message="side", files={"secret.txt": b"s3cret\n"})
    blob = git("rev-parse", f"{side}:secret.txt", cwd=path)
    git("update-ref", "-d", "refs/heads/side", cwd=path)
    tag = git("rev-parse", "refs/tags/v1", cwd=path)
    main_blob = git("rev-parse", "refs/heads/main~1^{tree}", cwd=path)
    git("repack", "-a", "-d", "--write-bitmap-index", "-q", cwd=path)  # as maintenance leaves it
    return {"path": path, "main": main, "old": old, "side": side, "blob": blob, "tag": tag,
            "main_tree": main_blob}


def run(repo: dict[str, str | Path], oids: list[str], tips: list[str]) -> set[str]:
    path = repo["path"]
    assert isinstance(path, Path)
    runner = GitRunner(home=path.parent / "home")
    path.parent.joinpath("home").mkdir(exist_ok=True)
    return asyncio.run(unreachable(runner, path, oids, tips, timeout=30))


def test_tips_and_their_history_are_reachable(repo: dict[str, str | Path]) -> None:
    r = repo
    assert run(r, [str(r["main"]), str(r["old"]), str(r["main_tree"])], [str(r["main"])]) == set()
    assert run(r, [str(r["old"])], [str(r["tag"])]) == set()  # through an annotated tag


def test_objects_only_a_hidden_or_deleted_ref_reaches_are_not(
        repo: dict[str, str | Path]) -> None:
    r = repo
    side, blob = str(r["side"]), str(r["blob"])
    assert run(r, [side, blob, str(r["old"])], [str(r["main"])]) == {side, blob}
    # with the side tip among the tips, they are
    assert run(r, [blob], [str(r["main"]), side]) == set()


def test_missing_objects_and_missing_tips_are_conservative(repo: dict[str, str | Path]) -> None:
    r = repo
    ghost = "9" * 40
    assert run(r, [ghost], [str(r["main"])]) == {ghost}
    assert run(r, [str(r["old"])], [ghost]) == {str(r["old"])}  # no tip present at all
    assert run(r, [str(r["old"])], []) == {str(r["old"])}
    assert run(r, ["not-an-oid"], [str(r["main"])]) == set()


def test_without_a_bitmap_trees_and_blobs_count_as_unreachable(
        tmp_path: Path, repo: dict[str, str | Path]) -> None:
    """rev-list's walk does not mark the trees of older tip commits, so without a bitmap
    a tree or blob is never proven reachable: the answer errs on the safe side."""
    path = tmp_path / "nobitmap.git"
    make_bare_repo(path, commits=2, branches=("main",), tags=(), annotated_tags=())
    old_tree = git("rev-parse", "refs/heads/main~1^{tree}", cwd=path)
    old = git("rev-parse", "refs/heads/main~1", cwd=path)
    main = git("rev-parse", "refs/heads/main", cwd=path)
    other = {"path": path}
    assert run(other, [old], [main]) == set()  # commits: exact
    assert run(other, [old_tree], [main]) == {old_tree}  # trees: conservative


def test_existing_lists_present_objects_only(repo: dict[str, str | Path]) -> None:
    path = repo["path"]
    assert isinstance(path, Path)
    runner = GitRunner(home=path.parent / "home")
    got = asyncio.run(existing(runner, path, [str(repo["main"]), "9" * 40, "junk"]))
    assert got == {str(repo["main"])}
