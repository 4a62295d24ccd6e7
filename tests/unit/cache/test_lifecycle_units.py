"""Pure and unit-sized pieces of the cache lifecycle.

- the CLI's parser of git progress lines and its display helpers;
- ``parse_count_objects`` (maintenance thresholds);
- the pack cache's roles: bypass on first sight, produce on the second, follow while
  producing, hit after finishing, failed productions, LRU trimming, key isolation;
- the Evictor on a fake store laid out on disk (files of known sizes), trash drain;
- warming's URL, list and header parsers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from goblet.cache import evict as evict_module
from goblet.cache.evict import Eviction, Evictor, cache_bytes
from goblet.cache.locks import RepoLocks
from goblet.cache.maintenance import ObjectCounts, parse_count_objects
from goblet.cache.store import RepoStore
from goblet.cache.usage import tree_bytes
from goblet.cache.warm import parse_header_lines, parse_repo_url, read_url_list
from goblet.cli_format import ProgressView, describe, human_age, human_bytes, parse_progress
from goblet.git.runner import GitRunner
from goblet.metrics import Metrics
from goblet.observe.access import AccessLog
from goblet.options import Settings
from goblet.runtime import Runtime
from goblet.serve.packcache import PackCache, Production, Role, cache_key
from hypothesis import given
from hypothesis import strategies as st

MiB = 1024 * 1024

# ------------------------------------------------------------------ progress lines


@pytest.mark.parametrize(
    ("line", "phase", "remote", "done", "total", "percent", "size", "rate", "finished"),
    [
        ("Receiving objects:  45% (1234/2742), 1.20 MiB | 2.30 MiB/s", "Receiving objects",
         False, 1234, 2742, 45, int(1.2 * MiB), int(2.3 * MiB), False),
        ("Receiving objects: 100% (2742/2742), 12.00 MiB | 5.00 MiB/s, done.",
         "Receiving objects", False, 2742, 2742, 100, 12 * MiB, 5 * MiB, True),
        ("Receiving objects:   3% (1/30)", "Receiving objects", False, 1, 30, 3, None, None,
         False),
        ("Receiving objects:  50% (15/30), 1 byte | 1 byte/s", "Receiving objects", False,
         15, 30, 50, 1, 1, False),
        ("Receiving objects: 100% (30/30), 900 bytes | 900.00 KiB/s, done.",
         "Receiving objects", False, 30, 30, 100, 900, 900 * 1024, True),
        ("Receiving objects: 100% (9/9), 2.50 GiB, done.", "Receiving objects", False, 9, 9,
         100, int(2.5 * 1024**3), None, True),
        ("Resolving deltas: 100% (3/3), done.", "Resolving deltas", False, 3, 3, 100, None,
         None, True),
        ("remote: Counting objects: 100% (5/5), done.        ", "Counting objects", True, 5, 5,
         100, None, None, True),
        ("remote: Compressing objects:  40% (2/5)\x1b[K", "Compressing objects", True, 2, 5, 40,
         None, None, False),
        ("remote: Enumerating objects: 45, done.", "Enumerating objects", True, 45, None, None,
         None, None, True),
        ("Checking connectivity: 1200, done.", "Checking connectivity", False, 1200, None, None,
         None, None, True),
    ],
)
def test_progress_lines_parse(line: str, phase: str, remote: bool, done: int,
                              total: int | None, percent: int | None, size: int | None,
                              rate: int | None, finished: bool) -> None:
    p = parse_progress(line)
    assert p is not None
    assert (p.phase, p.remote, p.done, p.total, p.percent, p.bytes, p.rate, p.finished) == (
        phase, remote, done, total, percent, size, rate, finished)


@pytest.mark.parametrize("line", [
    "", "remote: Total 45 (delta 3), reused 0 (delta 0), pack-reused 0",
    "From https://github.com/org/repo", " * [new branch]      main -> main",
    "fatal: unable to access 'https://x/': Could not resolve host: x",
    "Receiving objects: lots", "Receiving objects:  45% (1234/2742), 1.20 XiB | 2 MiB/s",
    "receiving objects: 45% (1/2)", "Receiving objects: 45% (1/2) trailing",
])
def test_other_lines_are_not_progress(line: str) -> None:
    assert parse_progress(line) is None


@given(st.text(max_size=200))
def test_any_text_parses_or_is_none(text: str) -> None:
    result = parse_progress(text)
    assert result is None or result.done >= 0


@given(st.integers(0, 10**7), st.integers(1, 10**7), st.integers(0, 999_999))
def test_generated_counter_lines_round_trip(done: int, total: int, centi_kib: int) -> None:
    done %= total + 1  # git never counts past the total
    line = (f"Receiving objects: {done * 100 // total:3d}% ({done}/{total}), "
            f"{centi_kib // 100}.{centi_kib % 100:02d} KiB | 1.00 MiB/s")
    p = parse_progress(line)
    assert p is not None and (p.done, p.total) == (done, total)
    assert p.bytes == int(float(f"{centi_kib // 100}.{centi_kib % 100:02d}") * 1024)


def test_describe_names_objects_and_bytes() -> None:
    p = parse_progress("Receiving objects:  45% (1234/2742), 1.20 MiB | 2.30 MiB/s")
    assert p is not None
    assert describe(p) == "receiving  45% 1234/2742 objects, 1.2 MiB | 2.3 MiB/s"
    q = parse_progress("remote: Enumerating objects: 45, done.")
    assert q is not None and describe(q) == "upstream enumerating 45 objects, done"


def test_progress_view_throttles_without_a_terminal() -> None:
    view = ProgressView("[1/1]", tty=False, every=1.0)
    lines = [f"Receiving objects: {i:3d}% ({i}/100), {i}.00 KiB | 1.00 MiB/s" for i in range(100)]
    out = [view.feed(line, now=0.001 * n) for n, line in enumerate(lines)]
    shown = [o for o in out if o is not None]
    assert len(shown) == 1 and shown[0].startswith("[1/1]  receiving ")  # first of the phase
    done = view.feed("Receiving objects: 100% (100/100), 100.00 KiB | 1.00 MiB/s, done.", 0.2)
    assert done is not None and done.endswith("done\n")
    assert view.feed("Resolving deltas:  10% (1/10)", 0.3) is not None  # a new phase
    assert view.feed("Resolving deltas:  20% (2/10)", 0.4) is None
    assert view.feed("Resolving deltas:  30% (3/10)", 1.5) is not None  # a second later
    assert view.feed("From https://x/y", 9.0) is None
    assert (view.objects, view.bytes) == (100, 100 * 1024)


def test_progress_view_rewrites_one_line_on_a_terminal() -> None:
    view = ProgressView("[2/3]", tty=True)
    out = view.feed("Receiving objects:  45% (1234/2742), 1.20 MiB | 2.30 MiB/s", 0.0)
    assert out is not None and out.startswith("\r[2/3]  receiving") and out.endswith("\x1b[K")
    assert "\n" not in out


@pytest.mark.parametrize(("n", "text"), [
    (None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * MiB, "5.0 MiB"),
    (3 * 1024**3, "3.0 GiB"), (2 * 1024**5, "2048.0 TiB"),
])
def test_human_bytes(n: int | None, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize(("s", "text"), [
    (None, "-"), (-5, "0s"), (59.9, "59s"), (60, "1m"), (7200, "2h"), (86400 * 9 + 5, "9d"),
])
def test_human_age(s: float | None, text: str) -> None:
    assert human_age(s) == text


# ------------------------------------------------------------------ maintenance, recovery


def test_parse_count_objects() -> None:
    text = ("count: 12\nsize: 48\nin-pack: 300\npacks: 3\nsize-pack: 1024\n"
            "prune-packable: 0\ngarbage: 0\nsize-garbage: 0\n")
    assert parse_count_objects(text) == ObjectCounts(loose=12, packs=3)
    assert parse_count_objects("") == ObjectCounts(0, 0)
    assert parse_count_objects("count: many\npacks\n: 4\npacks: 2") == ObjectCounts(0, 2)


def test_parse_count_objects_of_real_git(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1",
           "HOME": str(tmp_path), "GIT_CONFIG_GLOBAL": "/dev/null"}
    repo = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True, env=env)
    for i in range(3):
        subprocess.run(["git", "--git-dir", str(repo), "hash-object", "-w", "--stdin"],
                       input=f"blob {i}".encode(), check=True, env=env, capture_output=True)
    out = subprocess.run(["git", "--git-dir", str(repo), "count-objects", "-v"], check=True,
                         env=env, capture_output=True, text=True).stdout
    assert parse_count_objects(out) == ObjectCounts(loose=3, packs=0)


# ------------------------------------------------------------------ pack cache

A, B = "a" * 64, "b" * 64
DIGEST = "d" * 64


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def produce(pc: PackCache, production: Production, data: bytes, ok: bool = True) -> None:
    with production.tmp.open("r+b") as f:
        f.write(data)
    await pc.grew(production, len(data))
    await pc.finish(production, ok)


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
        pc.begin("k")
        role, production = pc.begin("k")
        assert role is Role.PRODUCE and production is not None
        assert pc.begin("k")[0] is Role.FOLLOW
        waiter = asyncio.ensure_future(_wait_done(production))
        await produce(pc, production, b"half a pack", ok=False)
        assert (await waiter)[1:] == (True, True)  # done, failed
        assert not production.tmp.exists() and not pc.answer_path("k").exists()
        assert pc.begin("k")[0] is Role.PRODUCE  # the next request tries again

    run(scenario())


def test_stored_answers_are_trimmed_least_recently_used_first(tmp_path: Path) -> None:
    async def store(pc: PackCache, key: str, size: int) -> None:
        pc.begin(key)
        role, production = pc.begin(key)
        assert role is Role.PRODUCE and production is not None
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


def test_another_repos_identical_request_never_hits(tmp_path: Path) -> None:
    async def scenario() -> None:
        pc = PackCache(tmp_path, max_bytes=MiB)
        body = b"command=fetch\nwant x\ndone"
        ka, kb = cache_key(A, DIGEST, "version=2", body), cache_key(B, DIGEST, "version=2", body)
        pc.begin(ka)
        _, production = pc.begin(ka)
        assert production is not None
        await produce(pc, production, b"answer of A")
        assert pc.begin(ka)[0] is Role.HIT
        assert pc.begin(kb)[0] is Role.BYPASS  # B's first sight, whatever A stored

    run(scenario())


def test_stored_answers_survive_a_restart_and_temp_files_do_not(tmp_path: Path) -> None:
    async def scenario() -> None:
        pc = PackCache(tmp_path, max_bytes=MiB)
        pc.begin("k")
        _, production = pc.begin("k")
        assert production is not None
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
    pc.begin(key)
    role, production = pc.begin(key)
    assert role is Role.PRODUCE and production is not None
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
        pc.begin("j")
        _, production = pc.begin("j")
        assert production is not None
        await pc.finish(production, False)
        await pc.finish(production, True)  # a late "ok" cannot store a failed answer
        assert production.failed and not pc.answer_path("j").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["k.answer"]

    run(scenario())


def test_a_second_instance_leaves_live_productions_alone(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = PackCache(tmp_path, max_bytes=MiB)
        first.begin("k")
        _, production = first.begin("k")
        assert production is not None
        second = PackCache(tmp_path, max_bytes=MiB)  # another mitmdump, same cache dir
        second.begin("unrelated")  # its first request indexes the directory
        await produce(first, production, b"shared answer")
        assert not production.failed
        assert first.answer_path("k").read_bytes() == b"shared answer"

    run(scenario())


# ------------------------------------------------------------------ eviction


class FakeCache:
    """A store laid out on disk: repos of known sizes and access times, no git needed."""

    def __init__(self, root: Path) -> None:
        self.store = RepoStore(root, GitRunner(home=root / "home"))
        self.store.prepare()
        self.locks = RepoLocks(self.store.lock_dir, poll=0.01)

    def add(self, name: str, size: int, accessed: float) -> str:
        key = name * 64 if len(name) == 1 else name
        path = self.store.repos_dir / f"{key}.git"
        (path / "objects" / "pack").mkdir(parents=True)
        (path / "HEAD").write_text("ref: refs/heads/main\n")
        (path / "objects" / "pack" / "pack-1.pack").write_bytes(os.urandom(size))
        (path / "goblet-state.json").write_text(json.dumps({
            "url": f"https://git.example/{name}.git", "partition": "shared", "refs": {},
            "head": "refs/heads/main", "filled_at": accessed - 10}))
        (path / "goblet-access").touch()
        os.utime(path / "goblet-access", (accessed, accessed))
        return key

    def evictor(self, **kw: object) -> tuple[Evictor, list[Eviction]]:
        seen: list[Eviction] = []
        ev = Evictor(self.store, self.locks, on_evict=seen.append,
                     **{"max_bytes": 0, "min_free_bytes": 0, **kw})  # type: ignore[arg-type]
        return ev, seen

    def remaining(self) -> set[str]:
        return {p.name[:1] for p in self.store.repos_dir.iterdir()}


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


def test_trash_waits_for_the_drain_and_for_readers(fake: FakeCache) -> None:
    now = time.time()
    keys = [fake.add(n, 4096, now - 10 * i) for i, n in enumerate("abc")]
    reading = {keys[0]}
    ev, _ = fake.evictor(max_bytes=1, drain_seconds=0.0, reading=lambda k: k in reading)
    evicted = run(ev.enforce())
    assert len(evicted) == 3
    left = [p.name.split(".")[0] for p in fake.store.trash_dir.iterdir()]
    assert left == [keys[0]]  # the others were purged at once (no drain), a is being read
    reading.clear()
    assert run(ev.purge_trash()) == 1
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


def test_min_free_evicts_until_enough_is_freed(
    fake: FakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    for i, name in enumerate("abcd"):
        fake.add(name, 64 * 1024, now - 100 + i)
    one = tree_bytes(fake.store.repos_dir / f"{'a' * 64}.git")
    monkeypatch.setattr(evict_module, "free_bytes", fake_disk(fake, 5 * one))
    ev, _ = fake.evictor(min_free_bytes=2 * one, drain_seconds=0.0)
    assert ev.over_budget()[1] > 0
    done = run(ev.enforce())
    assert [e.key[:1] for e in done] == ["a"]  # LRU first, and only what was short
    assert ev.over_budget() == (0, 0)  # the trash was purged: space really freed


def test_min_free_does_not_evict_again_what_trash_will_free(
    fake: FakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    for i, name in enumerate("abcd"):
        fake.add(name, 64 * 1024, now - 100 + i)
    one = tree_bytes(fake.store.repos_dir / f"{'a' * 64}.git")
    monkeypatch.setattr(evict_module, "free_bytes", fake_disk(fake, 5 * one))
    ev, _ = fake.evictor(min_free_bytes=2 * one, drain_seconds=30.0)
    first = run(ev.enforce())
    assert [e.key[:1] for e in first] == ["a"]
    second = run(ev.enforce())  # the next fill's pass, seconds later
    assert second == []
    assert fake.remaining() == {"b", "c", "d"}


# ------------------------------------------------------------------ maintenance switch


@pytest.mark.parametrize("maintenance", [True, False])
def test_periodic_full_repacks_follow_goblet_maintenance(tmp_path: Path,
                                                        maintenance: bool) -> None:
    """A repo due for its full repack (every new one) is handed over only when maintenance is on."""
    settings = Settings(
        cache_dir=tmp_path / "cache", hosts=frozenset({("git.example", 443)}), verdict_ttl=60,
        upstream_timeout=60, instance="unit", max_request_bytes=MiB, min_free_bytes=0,
        metrics_port=0, metrics_host="", log_format="text", maintenance=maintenance)
    git = GitRunner(home=settings.cache_dir / "home")
    rt = Runtime(settings, git, b"s" * 32, Metrics(), AccessLog())
    rt.store.prepare()
    FakeCache(settings.cache_dir).add("a", 4096, time.time())  # filled, never repacked
    asked: list[str] = []
    rt.maintainer.after_fill = lambda repo: asked.append(repo.url)  # type: ignore[method-assign]
    rt.lifecycle.every = 0.01

    async def a_few_passes() -> None:
        task = asyncio.ensure_future(rt.lifecycle.run())
        await asyncio.sleep(0.3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    run(a_few_passes())
    assert bool(asked) is maintenance
    assert set(asked) <= {"https://git.example/a.git"}


# ------------------------------------------------------------------ warming parsers


@pytest.mark.parametrize(("url", "parsed"), [
    ("https://github.com/org/repo", ("github.com", 443, "/org/repo")),
    ("https://GitHub.com/org/repo.git/", ("github.com", 443, "/org/repo.git")),
    ("  https://git.internal:8443/a/b/c  ", ("git.internal", 8443, "/a/b/c")),
    ("https://127.0.0.1:4443/r.git", ("127.0.0.1", 4443, "/r.git")),
])
def test_parse_repo_url(url: str, parsed: tuple[str, int, str]) -> None:
    assert parse_repo_url(url) == parsed


@pytest.mark.parametrize("url", [
    "http://github.com/org/repo", "git@github.com:org/repo.git", "ssh://github.com/org/repo",
    "https://user:tok@github.com/org/repo", "https://tok@github.com/org/repo",
    "https://github.com/org/repo?private_token=x", "https://github.com/org/repo#frag",
    "https://github.com/a/../b", "https://github.com//b", "https:///nohost", "",
])
def test_parse_repo_url_refuses(url: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_repo_url(url)


@pytest.mark.parametrize("url", ["https://user:hunter2@github.com/org/repo",
                                 "https://github.com/org/repo?private_token=hunter2"])
def test_refusing_a_url_never_repeats_its_credential(url: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_repo_url(url)
    assert "hunter2" not in str(err.value)


def test_read_url_list() -> None:
    text = ("# warm these\n\nhttps://github.com/a/b\n   https://github.com/c/d   \n"
            "  # indented comment\nhttps://x.example/e.git\n")
    assert read_url_list(text) == ["https://github.com/a/b", "https://github.com/c/d",
                                   "https://x.example/e.git"]
    assert read_url_list("") == []


def test_parse_header_lines() -> None:
    cred = parse_header_lines(["Authorization: Bearer t0k:en", "  Private-Token:  abc  ",
                               "no colon here", ": empty name", "Empty-Value:   ",
                               "User-Agent: git/2.39"])
    assert cred.headers == (("authorization", "Bearer t0k:en"), ("private-token", "abc"))
    assert "t0k" not in repr(cred) and "abc" not in str(cred)
    assert parse_header_lines([]).anonymous
