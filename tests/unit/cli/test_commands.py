"""``goblet cache evict`` and ``ls`` in process, on a cache laid out on disk (no git)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
from goblet.cache.evict import cache_bytes
from goblet.cache.locks import RepoLocks
from goblet.cache.usage import tree_bytes
from goblet.cli import main
from goblet.lfs.store import LfsScope, LfsStore

from tests.unit.cache.fakes import FakeCache


@pytest.fixture
def fake(tmp_path: Path) -> FakeCache:
    return FakeCache(tmp_path / "cache")


def goblet(capsys: pytest.CaptureFixture[str], fake: FakeCache, *args: str) -> tuple[int, str]:
    status = main(["cache", *args, "--cache-dir", str(fake.store.root), "--json"])
    return status, capsys.readouterr().out


def test_evict_lru_to_frees_least_recently_used_repos_down_to_the_target(
    fake: FakeCache, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    keys = [fake.add(name, 64 * 1024, now - 1000 + 100 * i) for i, name in enumerate("abc")]
    one = tree_bytes(fake.store.repos_dir / f"{keys[0]}.git")
    status, out = goblet(capsys, fake, "evict", "--lru-to", str(cache_bytes(fake.store) - 1))
    result = json.loads(out)
    assert status == 0 and result["failed"] == []
    [evicted] = result["evicted"]
    assert evicted == {"url": "https://git.example/a.git", "key": keys[0],
                       "partition": "shared", "bytes": one,
                       "idle_seconds": evicted["idle_seconds"]}
    assert evicted["idle_seconds"] >= 999
    assert fake.remaining() == {"b", "c"} and result["bytes_after"] == cache_bytes(fake.store)


def test_evict_reports_a_repo_whose_writer_lock_stays_busy(
    fake: FakeCache, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    a, _ = fake.add("a", 4096, now - 100), fake.add("b", 4096, now)
    held, release = threading.Event(), threading.Event()

    def other_process() -> None:  # its own flock, held while the CLI runs
        async def hold() -> None:
            async with RepoLocks(fake.store.lock_dir).writer(a):
                held.set()
                await asyncio.to_thread(release.wait)

        asyncio.run(hold())

    holder = threading.Thread(target=other_process)
    holder.start()
    try:
        assert held.wait(10)
        status, out = goblet(capsys, fake, "evict", "--lru-to", "0", "--wait", "0")
    finally:
        release.set()
        holder.join(10)
    result = json.loads(out)
    assert status == 1
    assert [e["key"][:1] for e in result["evicted"]] == ["b"]
    assert result["failed"] == [{"url": "https://git.example/a.git", "key": a,
                                 "partition": "shared",
                                 "error": "not evicted: its writer lock is busy"}]
    assert fake.remaining() == {"a"}


def test_evict_named_repos_and_unknown_ones(fake: FakeCache,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    a = fake.add("a", 4096, time.time())
    fake.add("b", 4096, time.time())
    status, out = goblet(capsys, fake, "evict", a[:6], "https://nowhere.example/x.git")
    result = json.loads(out)
    assert status == 1
    assert [e["key"] for e in result["evicted"]] == [a]
    assert result["failed"] == [{"url": "https://nowhere.example/x.git", "key": None,
                                 "partition": None, "error": "no cached repo matches"}]
    assert fake.remaining() == {"b"}


def test_ls_lists_what_the_state_files_say(fake: FakeCache,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    key = fake.add("a", 4096, time.time() - 60)
    status, out = goblet(capsys, fake, "ls")
    [row] = json.loads(out)
    assert status == 0
    assert (row["url"], row["key"], row["partition"], row["head"], row["refs"]) == (
        "https://git.example/a.git", key, "shared", "refs/heads/main", 0)
    assert row["bytes"] == tree_bytes(fake.store.repos_dir / f"{key}.git")
    assert 59 <= row["idle_seconds"] < 120


def test_ls_stats_and_evict_cover_lfs_objects(fake: FakeCache,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    lfs = LfsStore(fake.store.root)
    lfs.prepare()
    oids = []
    for size in (1000, 5000):
        data = bytes(size)
        oid = hashlib.sha256(data).hexdigest()
        w = lfs.writer(LfsScope("git.example.com", "tenant:x" * (size > 1000)), oid, size)
        w.feed(data)
        assert w.commit()
        oids.append(oid)
    status, out = goblet(capsys, fake, "ls", "--lfs")
    assert status == 0 and sorted(r["oid"] for r in json.loads(out)) == sorted(oids)
    assert {r["size"] for r in json.loads(out)} == {1000, 5000}
    assert {r["origin"] for r in json.loads(out)} == {"git.example.com"}
    status, out = goblet(capsys, fake, "stats")
    stats = json.loads(out)
    assert stats["lfs_objects"] == 2 and stats["lfs_bytes"] == tree_bytes(lfs.root) > 0
    assert stats["budget_bytes"] == cache_bytes(fake.store)
    status, out = goblet(capsys, fake, "evict", f"lfs:{oids[0]}", f"lfs:{'0' * 64}", "lfs:x")
    result = json.loads(out)
    assert status == 1 and [e["url"] for e in result["evicted"]] == [f"lfs:{oids[0]}"]
    assert len(result["failed"]) == 2
    status, out = goblet(capsys, fake, "evict", "--lru-to", "0")
    assert status == 0 and [e["url"] for e in json.loads(out)["evicted"]] == [f"lfs:{oids[1]}"]
    assert list(lfs.objects()) == []
