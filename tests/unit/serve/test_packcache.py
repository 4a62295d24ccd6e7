"""The pack cache's roles: bypass on first sight, produce on the second, follow while
producing, hit after finishing; failed productions, LRU trimming, key isolation, restarts."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from goblet.serve.packcache import PackCache, Production, Role, cache_key, tags_digest

MiB = 1024 * 1024
A, B = "a" * 64, "b" * 64
DIGEST = "d" * 64


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def produce(pc: PackCache, production: Production, data: bytes, ok: bool = True) -> None:
    with production.tmp.open("r+b") as f:
        f.write(data)
    await pc.grew(production, len(data))
    await pc.finish(production, ok)


def second_sight(pc: PackCache, key: str) -> Production:
    """Ask for ``key`` twice: bypassed on first sight, produced on the second."""
    pc.begin(key)
    role, production = pc.begin(key)
    assert role is Role.PRODUCE and production is not None
    return production


def test_bypass_first_produce_second_follow_then_hit(tmp_path: Path) -> None:
    async def scenario() -> None:
        pc = PackCache(tmp_path, max_bytes=MiB)
        key = cache_key(A, DIGEST, "version=2", b"want x\ndone")
        assert pc.begin(key) == (Role.BYPASS, None)
        role, production = pc.begin(key)
        assert role is Role.PRODUCE and production is not None and production.tmp.is_file()
        follow_role, followed = pc.begin(key)
        assert follow_role is Role.FOLLOW and followed is production
        waiter = asyncio.ensure_future(_wait_done(production))
        await produce(pc, production, b"PACK" * 10)
        assert await waiter == (40, True, False)
        assert pc.begin(key) == (Role.HIT, None)
        assert pc.answer_path(key).read_bytes() == b"PACK" * 10
        assert pc.stored_bytes == 40
        assert list(tmp_path.glob("*.tmp")) == []

    run(scenario())


async def _wait_done(production: Production) -> tuple[int, bool, bool]:
    async with production.grown:
        await production.grown.wait_for(lambda: production.done)
    return production.size, production.done, production.failed


def test_uncacheable_or_disabled_always_bypasses(tmp_path: Path) -> None:
    pc = PackCache(tmp_path, max_bytes=MiB)
    assert [pc.begin(None)[0] for _ in range(3)] == [Role.BYPASS] * 3
    off = PackCache(tmp_path, max_bytes=0)
    assert not off.enabled
    assert [off.begin("k")[0] for _ in range(3)] == [Role.BYPASS] * 3


def test_failed_production_aborts_followers_and_stores_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        pc = PackCache(tmp_path, max_bytes=MiB)
        production = second_sight(pc, "k")
        assert pc.begin("k")[0] is Role.FOLLOW
        waiter = asyncio.ensure_future(_wait_done(production))
        await produce(pc, production, b"half a pack", ok=False)
        assert (await waiter)[1:] == (True, True)  # done, failed
        assert not production.tmp.exists() and not pc.answer_path("k").exists()
        assert pc.begin("k")[0] is Role.PRODUCE  # the next request tries again

    run(scenario())


def test_stored_answers_are_trimmed_least_recently_used_first(tmp_path: Path) -> None:
    async def store(pc: PackCache, key: str, size: int) -> None:
        production = second_sight(pc, key)
        await produce(pc, production, b"x" * size)

    async def scenario() -> None:
        pc = PackCache(tmp_path, max_bytes=100)
        await store(pc, "k1", 40)
        await store(pc, "k2", 40)
        assert pc.begin("k1")[0] is Role.HIT  # k1 is now the most recently used
        await store(pc, "k3", 40)  # 120 > 100: k2 goes
        assert not pc.answer_path("k2").exists()
        assert pc.answer_path("k1").exists() and pc.answer_path("k3").exists()
        assert pc.stored_bytes == 80
        await store(pc, "big", 101)  # larger than the whole budget: nothing stays
        assert pc.stored_bytes == 0 and list(tmp_path.glob("*.answer")) == []

    run(scenario())


def test_keys_separate_repos_refs_and_protocols() -> None:
    base = cache_key(A, DIGEST, "version=2", b"want x")
    assert len({base, cache_key(B, DIGEST, "version=2", b"want x"),
                cache_key(A, "e" * 64, "version=2", b"want x"),
                cache_key(A, DIGEST, None, b"want x"),
                cache_key(A, DIGEST, "version=2", b"want y")}) == 5
    # length-prefixed parts: moving bytes between fields never collides
    assert cache_key("ab", "c", None, b"") != cache_key("a", "bc", None, b"")
    assert cache_key(A, DIGEST, None, b"") == cache_key(A, DIGEST, "", b"")


def test_answers_following_tags_share_a_key_only_with_the_same_tags() -> None:
    one, other = ("refs/tags/v1", "1" * 40), ("refs/tags/v2", "2" * 40)
    keys = {cache_key(A, DIGEST, "version=2", b"want x", tags) for tags in (
        None, tags_digest([]), tags_digest([one]), tags_digest([one, other]),
        tags_digest([("refs/tags/v1", "3" * 40)]))}
    assert len(keys) == 5
    assert tags_digest([one, other]) == tags_digest([other, one])  # (a set: any order)
    assert tags_digest([("refs/tags/a", "1\0refs/tags/b")]) != tags_digest(
        [("refs/tags/a", "1"), ("refs/tags/b", "")])


def test_another_repos_identical_request_never_hits(tmp_path: Path) -> None:
    async def scenario() -> None:
        pc = PackCache(tmp_path, max_bytes=MiB)
        body = b"command=fetch\nwant x\ndone"
        ka, kb = cache_key(A, DIGEST, "version=2", body), cache_key(B, DIGEST, "version=2", body)
        production = second_sight(pc, ka)
        await produce(pc, production, b"answer of A")
        assert pc.begin(ka)[0] is Role.HIT
        assert pc.begin(kb)[0] is Role.BYPASS  # B's first sight, whatever A stored

    run(scenario())


def test_stored_answers_survive_a_restart_and_temp_files_do_not(tmp_path: Path) -> None:
    async def scenario() -> None:
        pc = PackCache(tmp_path, max_bytes=MiB)
        production = second_sight(pc, "k")
        await produce(pc, production, b"stored")
        # A production killed mid-way, named by a process whose pid is in use again
        # (here: ours, as a restarted proxy in a container gets its predecessor's).
        crashed = f"other.{os.getpid()}.{time.monotonic_ns()}"
        (tmp_path / f"{crashed}.tmp").write_bytes(b"crashed production")
        (tmp_path / f"{crashed}.lock").touch()
        again = PackCache(tmp_path, max_bytes=MiB)
        assert again.begin("k")[0] is Role.HIT
        assert again.stored_bytes == 6
        assert sorted(p.name for p in tmp_path.iterdir()) == [pc.answer_path("k").name]

    run(scenario())


async def store_answer(pc: PackCache, key: str, size: int) -> None:
    production = second_sight(pc, key)
    await produce(pc, production, b"x" * size)


def age(path: Path, seconds: float) -> None:
    """Make ``path`` look ``seconds`` older (answers are loaded oldest first)."""
    st = path.stat()
    os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


def test_loading_trims_to_a_lowered_bound_oldest_first(tmp_path: Path) -> None:
    async def scenario() -> None:
        pc = PackCache(tmp_path, max_bytes=MiB)
        for i, key in enumerate(("old", "mid", "new")):
            await store_answer(pc, key, 40)
            age(pc.answer_path(key), 300 - 100 * i)
        smaller = PackCache(tmp_path, max_bytes=100)
        smaller.load()
        assert smaller.stored_bytes == 80
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mid.answer", "new.answer"]
        assert smaller.begin("new")[0] is Role.HIT

    run(scenario())


def test_loading_with_the_pack_cache_off_deletes_every_answer(tmp_path: Path) -> None:
    async def scenario() -> None:
        pc = PackCache(tmp_path, max_bytes=MiB)
        await store_answer(pc, "a", 40)
        await store_answer(pc, "b", 10)
        off = PackCache(tmp_path, max_bytes=0)
        off.load()
        assert off.stored_bytes == 0
        assert list(tmp_path.iterdir()) == []

    run(scenario())


def test_finishing_twice_changes_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        pc = PackCache(tmp_path, max_bytes=MiB)
        await store_answer(pc, "k", 5)
        production = second_sight(pc, "j")
        await pc.finish(production, False)
        await pc.finish(production, True)  # a late "ok" cannot store a failed answer
        assert production.failed and not pc.answer_path("j").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["k.answer"]

    run(scenario())


def test_a_second_instance_leaves_live_productions_alone(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = PackCache(tmp_path, max_bytes=MiB)
        production = second_sight(first, "k")
        second = PackCache(tmp_path, max_bytes=MiB)  # another mitmdump, same cache dir
        second.begin("unrelated")  # its first request indexes the directory
        await produce(first, production, b"shared answer")
        assert not production.failed
        assert first.answer_path("k").read_bytes() == b"shared answer"

    run(scenario())
