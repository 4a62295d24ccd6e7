"""Leases and fencing against a real redis-server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from goblet.fleet.lease import CoordinationError, Coordinator
from goblet.fleet.locations import parse_redis

from tests.support.fleetservers import RedisServer
from tests.support.net import free_port

KEY = "k" * 64


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as s:
        yield s


def coordinator(url: str, lease: float = 30.0) -> Coordinator:
    location = parse_redis(url)
    assert location is not None
    return Coordinator(location, lease_seconds=lease)


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
        assert not await a.set_digest(KEY, old, "stale")
        assert await b.set_digest(KEY, new, "fresh")
        assert await a.digest(KEY) == "fresh"
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
