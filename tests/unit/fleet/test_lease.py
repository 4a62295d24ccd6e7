"""Leases and fencing against a real redis-server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from goblet.cache.locks import RepoLocks
from goblet.cache.store import RepoStore
from goblet.fleet.lease import CoordinationError, Coordinator, Lease
from goblet.fleet.locations import parse_redis
from goblet.fleet.tier import FleetTier
from goblet.fleet.turns import Role
from goblet.git.runner import GitRunner
from goblet.observe.metrics import Metrics

from tests.support.fleetservers import RedisServer
from tests.support.net import free_port
from tests.support.silent import SilentServer

KEY = "k" * 64


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as s:
        yield s


def coordinator(url: str, lease: float = 30.0) -> Coordinator:
    location = parse_redis(url)
    assert location is not None
    return Coordinator(location, lease_seconds=lease)



async def let_go(turn: Any, coord: Coordinator, key: str, *tiers: Any) -> None:
    """End a turn taken without its context manager (stop renewing, release the lease),
    then close the tiers."""
    assert turn._renewer is not None
    turn._renewer.cancel()
    await coord.release(key, turn.token)
    for t in tiers:
        await t.close()


def test_one_holder_at_a_time_with_growing_tokens(server: RedisServer) -> None:
    async def main() -> None:
        a, b = coordinator(server.url), coordinator(server.url)
        first = await a.acquire(KEY)
        assert first is not None
        assert await b.acquire(KEY) is None
        assert await b.held(KEY)
        assert await a.renew(KEY, first)
        await b.release(KEY, first + 1)  # not its token: nothing happens
        assert await a.held(KEY)
        await a.release(KEY, first)
        second = await b.acquire(KEY)
        assert second is not None and second > first
        await a.close()
        await b.close()
    asyncio.run(main())


def test_a_lease_runs_out_and_its_old_holder_is_fenced(server: RedisServer) -> None:
    async def main() -> None:
        a, b = coordinator(server.url, lease=1), coordinator(server.url, lease=1)
        old = await a.acquire(KEY)
        assert old is not None
        await asyncio.sleep(1.3)  # the holder "crashed": no renewal
        new = await b.acquire(KEY)
        assert new is not None and new > old
        assert not await a.renew(KEY, old)
        assert not await a.current(KEY, old)
        assert not await a.set_digest(KEY, old, "a" * 64)
        assert await b.set_digest(KEY, new, "b" * 64)
        assert await a.digest(KEY) == "b" * 64
        await a.close()
        await b.close()
    asyncio.run(main())


def test_an_unreachable_redis_is_a_coordination_error() -> None:
    async def main() -> None:
        c = coordinator(f"redis://127.0.0.1:{free_port()}/0")
        with pytest.raises(CoordinationError, match="redis unavailable"):
            await c.acquire(KEY)
        with pytest.raises(CoordinationError):
            await c.digest(KEY)
        await c.close()
    asyncio.run(main())


def test_keys_hold_the_repo_key_only(server: RedisServer) -> None:
    async def main() -> None:
        c = coordinator(server.url)
        token = await c.acquire(KEY)
        assert token is not None
        await c.set_digest(KEY, token, "d" * 64)
        await c.close()
    asyncio.run(main())
    assert set(server.dump()) == {f"goblet:lease:{KEY}", f"goblet:fence:{KEY}",
                                  f"goblet:digest:{KEY}"}


def prepared_store(tmp_path: Path) -> RepoStore:
    repos = RepoStore(tmp_path / "cache", GitRunner(home=tmp_path / "home"))
    repos.prepare()
    return repos


def tier(repos: RepoStore, coordinator: Coordinator, **kw: Any) -> FleetTier:
    """A fleet tier on ``repos`` with no object store, coordinated by ``coordinator``."""
    return FleetTier(repos, RepoLocks(repos.lock_dir), Metrics(), store=None,
                     coordinator=coordinator, **kw)


def test_turns_leader_busy_follower(server: RedisServer, tmp_path: Path) -> None:
    repos = prepared_store(tmp_path)
    repo = repos.repo_for("https://git.example/r.git")

    async def main() -> None:
        a, b = coordinator(server.url, lease=2), coordinator(server.url, lease=2)
        ta, tb = tier(repos, a), tier(repos, b)
        async with ta.turn(repo) as first:
            assert first.role is Role.LEADER
            async with tb.turn(repo, wait=False) as busy:
                assert busy.role is Role.BUSY
            waiting = asyncio.ensure_future(tb._take(repo, wait=True))
            await asyncio.sleep(0.5)
            assert not waiting.done()  # nothing published yet: it waits for the leader
        # released without a publish: the waiter takes the lease itself
        second = await asyncio.wait_for(waiting, 5)
        assert second.role is Role.LEADER and second.token > first.token
        await b.set_digest(repo.key, second.token, "d" * 64)
        async with ta.turn(repo) as third:  # the store has it: no wait, restore
            assert third.role is Role.FOLLOWER
        await let_go(second, b, repo.key, ta, tb)
    asyncio.run(main())


def test_a_streaming_leader_is_waited_for_no_longer_than_the_upstream_timeout(
    server: RedisServer, tmp_path: Path,
) -> None:
    repos = prepared_store(tmp_path)
    repo = repos.repo_for("https://git.example/r.git")

    async def main() -> None:
        a, b = coordinator(server.url, lease=2), coordinator(server.url, lease=2)
        ta, tb = tier(repos, a), tier(repos, b, stall_timeout=1.0)
        async with ta.turn(repo, wait=False, streaming=True) as streaming:
            assert streaming.role is Role.LEADER
            assert await b.holder(repo.key) == "stream"
            await asyncio.sleep(1.0)  # renewed: still streaming
            assert await b.holder(repo.key) == "stream"
            started = asyncio.get_running_loop().time()
            alone = await asyncio.wait_for(tb._take(repo, wait=True), 5)
            assert alone.role is Role.ALONE
            assert 1.0 <= asyncio.get_running_loop().time() - started < 2.5
            assert tb.metrics.lease_waits.labels("timeout")._value.get() == 1
        for _ in range(50):  # the release runs in the background (within 5 s, even on a
            if await b.holder(repo.key) is None:  # loaded machine)
                break
            await asyncio.sleep(0.1)
        assert await b.holder(repo.key) is None
        async with ta.turn(repo) as filling:  # an ordinary fill: waited for as long as it runs
            assert filling.role is Role.LEADER
            assert await b.holder(repo.key) == "fill"
            waiting = asyncio.ensure_future(tb._take(repo, wait=True))
            await asyncio.sleep(2.0)
            assert not waiting.done()
        second = await asyncio.wait_for(waiting, 5)
        assert second.role is Role.LEADER
        await let_go(second, b, repo.key, ta, tb)
    asyncio.run(main())


def raw(server: RedisServer) -> redis.Redis:
    """A plain client of ``server``, for writing what goblet would not."""
    return redis.Redis(host="127.0.0.1", port=server.port)


def commands(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


# What a shared Redis may hold in a lease key that no goblet holder wrote.
FOREIGN_LEASES: dict[str, Any] = {
    "empty": lambda r, k: r.set(k, b""),
    "not-a-number": lambda r, k: r.set(k, b"abc", px=20_000),
    "zero": lambda r, k: r.set(k, b"0", px=20_000),
    "not-utf8": lambda r, k: r.set(k, b"\xff\xfe"),
    "a-hash": lambda r, k: r.hset(k, "x", "y"),
    "a-list": lambda r, k: r.rpush(k, "x"),
    "no-expiry": lambda r, k: r.set(k, b"999999"),
    "beyond-the-lease-time": lambda r, k: r.set(k, b"999999", px=3_600_000),
}


@pytest.mark.parametrize("write", FOREIGN_LEASES.values(), ids=FOREIGN_LEASES.keys())
def test_a_lease_goblet_did_not_write_is_reported_foreign(
    server: RedisServer, write: Any,
) -> None:
    write(raw(server), f"goblet:lease:{KEY}")

    async def main() -> None:
        c = coordinator(server.url, lease=30)
        found = await c.lease(KEY)
        assert found is not None and found.foreign(c.lease_ms)
        assert await c.holder(KEY) == "foreign"
        assert await c.held(KEY)
        assert await c.acquire(KEY) is None  # the key is there: not taken over
        assert not await c.current(KEY, 123)
        assert not await c.renew(KEY, 123)
        await c.release(KEY, 123)
        assert await c.held(KEY)
        await c.close()
    asyncio.run(main())


def test_a_goblet_lease_is_not_foreign(server: RedisServer) -> None:
    async def main() -> None:
        c = coordinator(server.url, lease=30)
        token = await c.acquire(KEY)
        assert token is not None
        found = await c.lease(KEY)
        assert found is not None and found.token == token and not found.streaming
        assert 0 < found.ttl_ms <= c.lease_ms and not found.foreign(c.lease_ms)
        assert await c.current(KEY, token)
        await c.release(KEY, token)
        assert await c.lease(KEY) is None
        await c.close()
    asyncio.run(main())
    assert Lease(None, 1000).foreign(30_000)
    assert Lease(7, -1).foreign(30_000)
    assert Lease(7, 30_001).foreign(30_000)
    assert not Lease(7, 30_000, streaming=True).foreign(30_000)


@pytest.mark.parametrize("value", [b"", b"\xff", b"not-a-digest", b"D" * 64, b"d" * 65])
def test_a_digest_goblet_did_not_write_is_none(server: RedisServer, value: bytes) -> None:
    raw(server).set(f"goblet:digest:{KEY}", value)

    async def main() -> None:
        c = coordinator(server.url)
        assert await c.digest(KEY) is None
        await c.close()
    asyncio.run(main())


def test_a_digest_of_another_type_is_none(server: RedisServer) -> None:
    raw(server).hset(f"goblet:digest:{KEY}", "x", "y")

    async def main() -> None:
        c = coordinator(server.url)
        assert await c.digest(KEY) is None
        await c.close()
    asyncio.run(main())


@pytest.mark.parametrize("fence", ["text", "hash"])
def test_a_fence_that_is_not_a_counter_leaves_the_lease_untaken(
    server: RedisServer, tmp_path: Path, fence: str,
) -> None:
    r = raw(server)
    repos = prepared_store(tmp_path)
    repo = repos.repo_for("https://git.example/r.git")
    key = f"goblet:fence:{repo.key}"
    if fence == "text":
        r.set(key, b"\xff")
    else:
        r.hset(key, "x", "y")

    async def main() -> None:
        c = coordinator(server.url)
        t = tier(repos, c)
        turn = await asyncio.wait_for(t._take(repo, wait=True), 30)
        assert turn.role is Role.ALONE
        assert t.metrics.lease_waits.labels("foreign")._value.get() == 1
        assert "redis" not in t.health.down  # Redis works: only this repo's keys do not
        await c.close()
    asyncio.run(main())
    assert r.get(f"goblet:lease:{repo.key}") is None  # no lease left behind


@pytest.mark.parametrize("write", FOREIGN_LEASES.values(), ids=FOREIGN_LEASES.keys())
def test_a_foreign_lease_is_not_waited_for(
    server: RedisServer, tmp_path: Path, write: Any,
) -> None:
    """A fill finding a lease no goblet holder keeps fills alone at once, without
    hammering Redis: it neither hangs nor spins."""
    r = raw(server)
    repos = prepared_store(tmp_path)
    repo = repos.repo_for("https://git.example/r.git")
    write(r, f"goblet:lease:{repo.key}")
    before = commands(r)

    async def main() -> None:
        c = coordinator(server.url, lease=30)
        t = tier(repos, c)  # max_wait: an hour
        turn = await asyncio.wait_for(t._take(repo, wait=True), 30)
        assert turn.role is Role.ALONE
        assert t.metrics.lease_waits.labels("foreign")._value.get() == 1
        await c.close()
    asyncio.run(main())
    assert commands(r) - before < 20


def test_a_lease_whose_expiry_does_not_move_on_is_waited_for_twice_the_lease_time(
    server: RedisServer, tmp_path: Path,
) -> None:
    """A lease kept alive by something that does not renew it as a holder does (its
    expiry creeps forward with the clock, never by a renewal's step of a third of the
    lease time) is given up on."""
    r = raw(server)
    repos = prepared_store(tmp_path)
    repo = repos.repo_for("https://git.example/r.git")
    key = f"goblet:lease:{repo.key}"

    async def main() -> None:
        c = coordinator(server.url, lease=4)
        t = tier(repos, c)
        done = asyncio.Event()

        async def creep() -> None:
            while not done.is_set():
                r.set(key, b"77", px=3900)
                await asyncio.sleep(0.02)

        keeper = asyncio.ensure_future(creep())
        try:
            turn = await asyncio.wait_for(t._take(repo, wait=True), 60)
        finally:
            done.set()
            await keeper
        assert turn.role is Role.ALONE
        assert t.metrics.lease_waits.labels("foreign")._value.get() == 1
        await c.close()
    asyncio.run(main())


def test_a_renewed_lease_is_waited_for_beyond_twice_the_lease_time(
    server: RedisServer, tmp_path: Path,
) -> None:
    repos = prepared_store(tmp_path)
    repo = repos.repo_for("https://git.example/r.git")

    async def main() -> None:
        a, b = coordinator(server.url, lease=1), coordinator(server.url, lease=1)
        ta, tb = tier(repos, a), tier(repos, b)
        async with ta.turn(repo) as first:
            assert first.role is Role.LEADER
            waiting = asyncio.ensure_future(tb._take(repo, wait=True))
            await asyncio.sleep(3.0)  # three lease times, renewed all along
            assert not waiting.done()
        second = await asyncio.wait_for(waiting, 10)
        assert second.role is Role.LEADER
        await let_go(second, b, repo.key, ta, tb)
    asyncio.run(main())


def test_a_silent_redis_is_asked_once_then_left_alone_until_a_probe_is_due(
    tmp_path: Path,
) -> None:
    """A Redis that accepts connections and never answers costs one call one socket
    timeout, without retries; the fills after it go alone without asking it."""
    repos = prepared_store(tmp_path)
    repo = repos.repo_for("https://git.example/r.git")
    with SilentServer() as silent:
        async def main() -> None:
            c = coordinator(silent.redis_url)
            t = tier(repos, c)
            first = await asyncio.wait_for(t._take(repo, wait=True), 30)
            assert first.role is Role.ALONE and t.health.down == {"redis"}
            asked = (silent.connections, silent.unanswered)
            for _ in range(5):
                later = await asyncio.wait_for(t._take(repo, wait=True), 30)
                assert later.role is Role.ALONE
            await asyncio.wait_for(t.publisher.forget(repo.key), 30)
            assert (silent.connections, silent.unanswered) == asked
            assert t.metrics.fleet_degraded.labels("redis")._value.get() == 7
            await c.close()
        asyncio.run(main())
        assert silent.connections == 1  # no retry opened another
