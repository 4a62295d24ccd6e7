"""The repo store on real git: creating a repo, reading its refs, and its state file.

- ``init_bare`` makes a bare repo with goblet's settings, however the
  environment of the process would steer git;
- ``read_refs`` agrees with ``git for-each-ref`` on loose and packed refs
  (peeled lines included) and reads HEAD;
- the state file's partition kind survives maintenance: a repo cached for a
  tenant or a user is recorded as ``tenant`` or ``user`` (the kind only, never
  the tenant's id). The periodic loop knows a repo only by what ``list_repos``
  finds on disk, not its partition; the full repack it schedules must still
  leave that record alone. Real git, real repack, the real loop.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from goblet.cache.evict import Evictor
from goblet.cache.lifecycle import Lifecycle
from goblet.cache.locks import RepoLocks
from goblet.cache.maintenance import Maintainer
from goblet.cache.store import REPO_CONFIG, STATE_FILE, CacheRepo, RepoStore
from goblet.git.runner import GitRunner

from tests.support.repos import git, list_refs

URL = "https://git.example/org/app"


@pytest.fixture
def store(tmp_path: Path) -> RepoStore:
    s = RepoStore(tmp_path / "cache", GitRunner(home=tmp_path / "cache" / "home"))
    s.prepare()
    return s


def filled(store: RepoStore, partition: str) -> CacheRepo:
    """A cache repo of ``partition`` with one commit, as a fill leaves it (repack due)."""
    repo = store.repo_for(URL, partition)
    asyncio.run(store.init_bare(repo.path))
    env = store.git.env(extra={"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x",
                               "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@x"})
    git = ["git", "--git-dir", str(repo.path)]
    tree = subprocess.run([*git, "mktree"], input=b"", env=env, check=True,
                          capture_output=True).stdout.decode().strip()
    commit = subprocess.run([*git, "commit-tree", tree, "-m", "x"], env=env, check=True,
                            capture_output=True).stdout.decode().strip()
    subprocess.run([*git, "update-ref", "refs/heads/main", commit], env=env, check=True)
    subprocess.run([*git, "symbolic-ref", "HEAD", "refs/heads/main"], env=env, check=True)
    store.write_state(repo.path, repo, {"refs/heads/main": commit}, "refs/heads/main",
                      full_repack_at=0.0)
    return repo


def recorded(repo: CacheRepo) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((repo.path / STATE_FILE).read_text("utf-8"))
    return data


async def one_scheduled_repack(store: RepoStore, repo: CacheRepo) -> None:
    """Run the real periodic loop until it has fully repacked ``repo``."""
    locks = RepoLocks(store.lock_dir, poll=0.01)
    lifecycle = Lifecycle(store, locks, store.git,
                          Evictor(store, locks, max_bytes=0, min_free_bytes=0),
                          Maintainer(store, locks, store.git), every=0.05)
    loop = asyncio.ensure_future(lifecycle.run())
    try:
        deadline = time.monotonic() + 30
        while recorded(repo)["full_repack_at"] == 0.0:
            assert time.monotonic() < deadline, "no full repack was scheduled"
            await asyncio.sleep(0.05)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


@pytest.mark.parametrize(("partition", "kind"),
                         [("tenant:acme", "tenant"), ("user:alice", "user"), ("", "shared")])
def test_the_periodic_full_repack_keeps_the_partition_kind(
        store: RepoStore, partition: str, kind: str) -> None:
    repo = filled(store, partition)
    before = recorded(repo)
    assert before["partition"] == kind

    asyncio.run(one_scheduled_repack(store, repo))
    after = recorded(repo)
    assert after["partition"] == kind
    assert "acme" not in json.dumps(after) and "alice" not in json.dumps(after)
    assert {k: v for k, v in after.items() if k != "full_repack_at"} == \
        {k: v for k, v in before.items() if k != "full_repack_at"}
    assert [info.partition for info in store.list_repos()] == [kind]


def test_a_full_repack_records_the_refs_it_kept(store: RepoStore) -> None:
    """A record left behind its refs (a fill killed after its fetch moved them) names a
    tip the full repack drops: the repack records the refs the repo has instead."""
    repo = filled(store, "")
    kept = recorded(repo)["refs"]
    env = store.git.env(extra={"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x",
                               "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@x"})
    git = ["git", "--git-dir", str(repo.path)]
    tree = f"{kept['refs/heads/main']}^{{tree}}"
    stale = subprocess.run([*git, "commit-tree", "-m", "gone", tree], env=env, check=True,
                           capture_output=True).stdout.decode().strip()
    subprocess.run([*git, "pack-objects", "-q", str(repo.path / "objects/pack/pack")],  # as
                   input=f"{stale}\n".encode(), env=env, check=True, capture_output=True)
    subprocess.run([*git, "prune-packed"], env=env, check=True)  # a fetch leaves it: packed
    store.write_state(repo.path, repo, {"refs/heads/main": stale}, "refs/heads/main",
                      full_repack_at=0.0)
    assert store.state(repo).tips == {stale}  # type: ignore[union-attr]
    asyncio.run(one_scheduled_repack(store, repo))
    assert recorded(repo)["refs"] == kept
    assert store.state(repo).tips == set(kept.values())  # type: ignore[union-attr]
    assert asyncio.run(store.present(repo, [stale])) == set()  # (the repack dropped it)


def test_marking_a_full_repack_by_key_and_path_alone_keeps_the_record(
        store: RepoStore) -> None:
    repo = filled(store, "tenant:acme")
    before = recorded(repo)
    store.mark_full_repack(CacheRepo(URL, repo.key, repo.path),  # no partition known
                           before["refs"], before["head"])
    after = recorded(repo)
    assert after["partition"] == "tenant" and after["full_repack_at"] > 0
    assert {k: v for k, v in after.items() if k != "full_repack_at"} == \
        {k: v for k, v in before.items() if k != "full_repack_at"}


# ------------------------------------------------------------------ creation


def git_config(repo: Path, key: str) -> str:
    return git("config", "--file", str(repo / "config"), "--get", key, cwd=repo)


def test_a_new_repo_has_goblets_settings_as_git_reads_them(store: RepoStore) -> None:
    repo = store.tmp_dir / "new.git"
    asyncio.run(store.init_bare(repo))
    for section, key, value in REPO_CONFIG:
        assert git_config(repo, f"{section}.{key}") == value
    assert git_config(repo, "core.bare") == "true"  # git's own settings stay
    assert git("rev-parse", "--is-bare-repository", cwd=repo) == "true"
    assert not (repo / "hooks").exists() and not (repo / "description").exists()  # no templates
    assert not (repo / "config.lock").exists()


def test_creating_a_repo_ignores_the_environment_of_the_process(
    store: RepoStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere.git"
    templates = tmp_path / "templates" / "hooks"
    templates.mkdir(parents=True)
    (templates / "pre-receive").write_text("#!/bin/sh\nexit 1\n")
    monkeypatch.setenv("GIT_DIR", str(elsewhere))
    monkeypatch.setenv("GIT_TEMPLATE_DIR", str(templates.parent))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'init.defaultbranch'='inherited'")
    repo = store.tmp_dir / "new.git"
    asyncio.run(store.init_bare(repo))
    assert (repo / "HEAD").read_text() == "ref: refs/heads/master\n"
    assert not (repo / "hooks").exists()
    assert not elsewhere.exists()


# ------------------------------------------------------------------ refs


def expected_refs(repo: Path) -> dict[str, str]:
    return {n: o for n, o in list_refs(repo).items() if n.startswith(("refs/heads/", "refs/tags/"))}


@pytest.mark.parametrize("packed", [False, True], ids=["loose", "packed"])
def test_read_refs_agrees_with_git(store: RepoStore, bare: Path, packed: bool) -> None:
    (bare / "refs" / "notes").mkdir(parents=True, exist_ok=True)
    git("update-ref", "refs/pull/1/head", expected_refs(bare)["refs/heads/dev"], cwd=bare)
    if packed:
        git("pack-refs", "--all", cwd=bare)
        text = (bare / "packed-refs").read_text()
        assert "\n^" in text and "refs/tags/v2" in text  # the annotated tag's peeled line
    refs, head = asyncio.run(store.read_refs(bare))
    assert refs == expected_refs(bare)
    assert set(refs) == {"refs/heads/main", "refs/heads/dev", "refs/tags/v1", "refs/tags/v2"}
    tag = git("cat-file", "-t", refs["refs/tags/v2"], cwd=bare)
    assert tag == "tag"  # the tag object, not the commit its peeled line names
    assert head == "refs/heads/main"


def test_ref_names_that_are_not_utf8_stay_apart_and_reach_git_as_they_were(
        store: RepoStore, bare: Path) -> None:
    main = expected_refs(bare)["refs/heads/main"]
    v1 = expected_refs(bare)["refs/tags/v1"]
    for name, oid in ((b"refs/tags/\xfe", main), (b"refs/tags/\xff", v1)):
        subprocess.run([b"git", b"update-ref", name, oid.encode()], cwd=bare, check=True,
                       env=store.git.env())
    refs, _ = asyncio.run(store.read_refs(bare))
    odd = {n: o for n, o in refs.items() if n not in expected_refs(bare)}
    fe, ff = (b.decode("utf-8", "surrogateescape") for b in (b"refs/tags/\xfe", b"refs/tags/\xff"))
    assert odd == {fe: main, ff: v1}  # two names, not one "refs/tags/\ufffd"
    repo = store.repo_for(URL)
    store.write_state(bare, repo, refs, "refs/heads/main")
    assert store._read_state(bare).refs == refs  # type: ignore[union-attr]
    # a name hidden through goblet's git config is hidden as those very bytes
    res = asyncio.run(store.git.run(["upload-pack", "--advertise-refs", "--stateless-rpc",
                                     str(bare)],
                                    config=[("uploadpack.hideRefs", fe)]))
    assert res.ok and b"refs/tags/\xff" in res.stdout and b"refs/tags/\xfe" not in res.stdout


def test_read_refs_after_a_loose_update_of_a_packed_ref(store: RepoStore, bare: Path) -> None:
    git("pack-refs", "--all", cwd=bare)
    main = expected_refs(bare)["refs/heads/main"]
    git("update-ref", "refs/heads/dev", main, cwd=bare)  # loose now, stale in packed-refs
    refs, _ = asyncio.run(store.read_refs(bare))
    assert refs["refs/heads/dev"] == main == expected_refs(bare)["refs/heads/dev"]
