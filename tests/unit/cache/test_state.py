"""The state file's partition kind survives maintenance.

A repo cached for a tenant or a user is recorded as ``tenant`` or ``user`` (the
kind only, never the tenant's id). The periodic loop knows a repo only by what
``list_repos`` finds on disk, not its partition; the full repack it schedules
must still leave that record alone. Real git, real repack, the real loop.
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
from goblet.cache.store import STATE_FILE, CacheRepo, RepoStore
from goblet.git.runner import GitRunner

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
    store.write_state(repo.path, repo, {"refs/heads/main": commit}, "refs/heads/main",
                      full_repack_at=0.0)
    return repo


def recorded(repo: CacheRepo) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((repo.path / STATE_FILE).read_text("utf-8"))
    return data


@pytest.mark.parametrize(("partition", "kind"),
                         [("tenant:acme", "tenant"), ("user:alice", "user"), ("", "shared")])
def test_the_periodic_full_repack_keeps_the_partition_kind(
        store: RepoStore, partition: str, kind: str) -> None:
    repo = filled(store, partition)
    before = recorded(repo)
    assert before["partition"] == kind

    async def one_scheduled_repack() -> None:
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

    asyncio.run(one_scheduled_repack())
    after = recorded(repo)
    assert after["partition"] == kind
    assert "acme" not in json.dumps(after) and "alice" not in json.dumps(after)
    assert {k: v for k, v in after.items() if k != "full_repack_at"} == \
        {k: v for k, v in before.items() if k != "full_repack_at"}
    assert [info.partition for info in store.list_repos()] == [kind]


def test_marking_a_full_repack_by_key_and_path_alone_keeps_the_record(
        store: RepoStore) -> None:
    repo = filled(store, "tenant:acme")
    before = recorded(repo)
    store.mark_full_repack(CacheRepo(URL, repo.key, repo.path))  # no partition known
    after = recorded(repo)
    assert after["partition"] == "tenant" and after["full_repack_at"] > 0
    assert {k: v for k, v in after.items() if k != "full_repack_at"} == \
        {k: v for k, v in before.items() if k != "full_repack_at"}
