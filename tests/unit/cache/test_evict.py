"""The Evictor on a fake store laid out on disk (files of known sizes): the byte budget,
free space, busy writer locks, and the drain of trash."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from goblet.cache import evict as evict_module
from goblet.cache.evict import Eviction, cache_bytes
from goblet.cache.locks import RepoLocks
from goblet.cache.usage import tree_bytes
from goblet.git.runner import GitRunner
from goblet.lfs.store import LfsScope, LfsStore
from goblet.serve.backend import ServeBackend
from goblet.serve.plans import PlanRegistry, ReplyPlan, ServePlan

from tests.unit.cache.fakes import FakeCache


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture
def fake(tmp_path: Path) -> FakeCache:
    return FakeCache(tmp_path / "cache")


def test_budget_evicts_least_recently_used_until_within(fake: FakeCache) -> None:
    now = time.time()
    for i, name in enumerate("abcd"):  # a is the least recently used
        fake.add(name, 64 * 1024, now - 1000 + i * 100)
    (fake.store.packcache_dir / "x.answer").write_bytes(os.urandom(32 * 1024))
    one = tree_bytes(fake.store.repos_dir / f"{'a' * 64}.git")
    total = cache_bytes(fake.store)
    assert total == 4 * one + tree_bytes(fake.store.packcache_dir)
    ev, seen = fake.evictor(max_bytes=total - one - 1)  # one repo is not quite enough
    done = run(ev.enforce())
    assert [e.url for e in done] == ["https://git.example/a.git", "https://git.example/b.git"]
    assert [e.url for e in seen] == [e.url for e in done]
    assert all(e.bytes == one and e.idle_seconds >= 700 for e in done)
    assert fake.remaining() == {"c", "d"}
    assert cache_bytes(fake.store) <= total - one - 1
    assert len(list(fake.store.trash_dir.iterdir())) == 2  # drained later, not at once
    assert run(ev.enforce()) == []


def test_no_budget_and_enough_disk_evicts_nothing(fake: FakeCache) -> None:
    fake.add("a", 4096, time.time())
    ev, _ = fake.evictor()
    assert ev.over_budget() == (0, 0)
    assert run(ev.enforce()) == [] and fake.remaining() == {"a"}


def test_a_busy_writer_lock_is_skipped(fake: FakeCache) -> None:
    now = time.time()
    a, _ = fake.add("a", 4096, now - 100), fake.add("b", 4096, now)
    other_process = RepoLocks(fake.store.lock_dir)  # its own flock file descriptions

    async def scenario() -> list[Eviction]:
        async with other_process.writer(a):
            ev, _ = fake.evictor(max_bytes=1)
            infos = {i.key: i for i in fake.store.list_repos()}
            assert not await ev.evict(infos[a], lock_timeout=0.2)
            return await ev.enforce()

    done = run(scenario())
    assert [e.key[:1] for e in done] == ["b"]  # a was busy; b went instead
    assert fake.remaining() == {"a"}


def test_a_repo_being_served_is_passed_over_and_trash_waits_for_the_drain(
        fake: FakeCache) -> None:
    now = time.time()
    keys = [fake.add(n, 4096, now - 10 * i) for i, n in enumerate("abc")]
    reading = {keys[2]}  # (the least recently used: the first the budget would take)
    ev, _ = fake.evictor(max_bytes=1, drain_seconds=0.0, reading=lambda k: k in reading)
    evicted = run(ev.enforce())
    assert sorted(e.key for e in evicted) == sorted(keys[:2]) and fake.remaining() == {"c"}
    assert list(fake.store.trash_dir.iterdir()) == []  # purged at once (no drain)
    reading.clear()
    assert [e.key for e in run(ev.enforce())] == [keys[2]]
    assert list(fake.store.trash_dir.iterdir()) == []
    slow, _ = fake.evictor(max_bytes=1, drain_seconds=3600.0)
    fake.add("d", 4096, now)
    run(slow.enforce())
    assert len(list(fake.store.trash_dir.iterdir())) == 1  # younger than the drain
    assert run(slow.purge_trash()) == 0
    assert run(slow.purge_trash(force=True)) == 1


def fake_disk(fake: FakeCache, capacity: int) -> Callable[[Path], int]:
    """free_bytes of a disk of ``capacity`` holding exactly the cache dir (trash included)."""
    return lambda path: capacity - tree_bytes(fake.store.root)


def four_repos_on_a_small_disk(fake: FakeCache, monkeypatch: pytest.MonkeyPatch) -> int:
    """Repos a to d (a the least recently used) on a disk of five repos' size; returns the
    size of one repo."""
    now = time.time()
    for i, name in enumerate("abcd"):
        fake.add(name, 64 * 1024, now - 100 + i)
    one = tree_bytes(fake.store.repos_dir / f"{'a' * 64}.git")
    monkeypatch.setattr(evict_module, "free_bytes", fake_disk(fake, 5 * one))
    return one


def test_min_free_evicts_until_enough_is_freed(
    fake: FakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = four_repos_on_a_small_disk(fake, monkeypatch)
    ev, _ = fake.evictor(min_free_bytes=2 * one, drain_seconds=0.0)
    assert ev.over_budget()[1] > 0
    done = run(ev.enforce())
    assert [e.key[:1] for e in done] == ["a"]  # LRU first, and only what was short
    assert ev.over_budget() == (0, 0)  # the trash was purged: space really freed


def test_min_free_does_not_evict_again_what_trash_will_free(
    fake: FakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = four_repos_on_a_small_disk(fake, monkeypatch)
    ev, _ = fake.evictor(min_free_bytes=2 * one, drain_seconds=30.0)
    first = run(ev.enforce())
    assert [e.key[:1] for e in first] == ["a"]
    second = run(ev.enforce())  # the next fill's pass, seconds later
    assert second == []
    assert fake.remaining() == {"b", "c", "d"}


def test_an_lru_pass_frees_the_bytes_asked_and_names_what_it_passed_over(
    fake: FakeCache,
) -> None:
    """``goblet cache evict --lru-to`` runs this pass with the bytes above its target."""
    now = time.time()
    a, b, c, _ = (fake.add(n, 64 * 1024, now - 100 + i) for i, n in enumerate("abcd"))
    one = tree_bytes(fake.store.repos_dir / f"{a}.git")
    other_process = RepoLocks(fake.store.lock_dir)

    async def scenario() -> tuple[list[Eviction], list[str]]:
        async with other_process.writer(b):
            ev, seen = fake.evictor()
            done, passed = await ev.evict_lru(one + 1, lock_timeout=0.1)
            assert seen == done
            return done, [i.key for i in passed]

    done, passed = run(scenario())
    assert [e.key for e in done] == [a, c]  # b was busy: passed over, c freed the rest
    assert passed == [b]
    assert all(e.partition == "shared" and e.bytes == one for e in done)
    assert fake.remaining() == {"b", "d"}


@pytest.mark.parametrize("over", [0, -1])
def test_an_lru_pass_with_nothing_to_free_evicts_nothing(fake: FakeCache, over: int) -> None:
    fake.add("a", 4096, time.time() - 1000)
    ev, _ = fake.evictor()
    assert run(ev.evict_lru(over)) == ([], [])
    assert fake.remaining() == {"a"}


HOST = LfsScope("git.example.com")


def test_lfs_objects_count_and_take_their_turn_in_lru_order(fake: FakeCache) -> None:
    now = time.time()
    fake.add("a", 64 * 1024, now - 1000)
    fake.add("b", 64 * 1024, now - 100)
    lfs = LfsStore(fake.store.root)
    lfs.prepare()
    data = os.urandom(64 * 1024)
    oid = hashlib.sha256(data).hexdigest()
    w = lfs.writer(HOST, oid, len(data))
    w.feed(data)
    assert w.commit()
    os.utime(lfs.path_for(HOST, oid), (now - 500, now - 500))  # between a and b
    one = tree_bytes(fake.store.repos_dir / f"{'a' * 64}.git")
    total = cache_bytes(fake.store)
    assert total == 2 * one + tree_bytes(lfs.root)
    ev, seen = fake.evictor(max_bytes=total - one - 1, lfs=lfs)
    done = run(ev.enforce())
    assert seen == done
    assert [e.url for e in done] == ["https://git.example/a.git", f"lfs:{oid}"]
    assert done[1].partition == "lfs" and done[1].bytes > 0 and done[1].idle_seconds >= 400
    assert not lfs.has(HOST, oid, len(data)) and fake.remaining() == {"b"}


def test_a_repo_served_while_eviction_waited_for_its_lock_is_passed_over(
        fake: FakeCache) -> None:
    key = fake.add("a", 4096, time.time() - 100)
    reading: set[str] = set()
    other_process = RepoLocks(fake.store.lock_dir)

    async def scenario() -> Eviction | None:
        ev, _ = fake.evictor(max_bytes=1, reading=lambda k: k in reading)
        [info] = fake.store.list_repos()
        async with other_process.writer(key):  # (a fill, say)
            evicting = asyncio.ensure_future(ev.evict(info, lock_timeout=10))
            await asyncio.sleep(0.2)
            reading.add(key)  # a clone started being served from it meanwhile
        return await evicting

    assert run(scenario()) is None and fake.remaining() == {"a"}


def test_a_repo_with_a_serve_plan_not_yet_picked_up_is_passed_over(fake: FakeCache) -> None:
    """From the moment the addon registers a plan to serve from a repo until the backend
    takes it (or it expires), eviction leaves the repo alone."""
    now = [0.0]
    key = fake.add("a", 4096, time.time() - 100)
    plans = PlanRegistry(ttl=60.0, clock=lambda: now[0])
    backend = ServeBackend(GitRunner(home=fake.store.root), plans)
    ev, _ = fake.evictor(max_bytes=1, drain_seconds=0.0, reading=backend.reading)
    [info] = fake.store.list_repos()

    def plan() -> ServePlan:
        return ServePlan(repo_dir=info.path, body=b"0000", git_protocol=None, label="a",
                         repo_key=key)

    first, second = plans.register(plan()), plans.register(plan())
    plans.register(ReplyPlan(403, b"no\n"))  # (not a read of any repo)
    assert run(ev.evict(info)) is None and fake.remaining() == {"a"}
    assert isinstance(plans.take(first), ServePlan)
    assert run(ev.evict(info)) is None  # the second still waits
    assert plans.take(first) is None  # (single use: taking it again changes nothing)
    assert backend.reading(key)
    now[0] = 61.0  # the second expired: nobody will read the repo through it
    assert not backend.reading(key) and plans.take(second) is None
    assert run(ev.evict(info)) is not None and fake.remaining() == set()
