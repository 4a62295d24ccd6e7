"""Fleet coordination in Redis: per-repo fill leases with fencing tokens, and the
fleet's current refs digest of each repo.

Keys (``<key>`` is the cache repo's key, a SHA-256; no URL, tenant or credential)::

    goblet:lease:<key>    the fencing token of the instance filling the repo (expires)
    goblet:fence:<key>    the last token handed out (only grows)
    goblet:digest:<key>   refs digest of what the store holds for the repo
    goblet:stream:<key>   set (with the lease's expiry) while the holder's fill is a
                          streamed cold clone, whose pace is its client's

A lease is taken with ``SET NX PX`` and its token from ``INCR`` in one script, so
tokens only grow; it is renewed while its holder works and runs out by itself
when the holder dies. Every write a holder makes afterwards (the digest, the
store's manifest) is checked against the current token: a holder whose lease
ran out and was taken over cannot overwrite its successor's work.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from goblet.fleet.locations import RedisLocation

_ACQUIRE = """
if redis.call('SET', KEYS[1], '0', 'NX', 'PX', ARGV[1]) then
  local token = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
  if ARGV[2] == '1' then
    redis.call('SET', KEYS[3], token, 'PX', ARGV[1])
  else
    redis.call('DEL', KEYS[3])
  end
  return token
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if redis.call('GET', KEYS[2]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
  end
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if redis.call('GET', KEYS[2]) == ARGV[1] then
    redis.call('DEL', KEYS[2])
  end
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_SET_DIGEST = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
"""


class CoordinationError(Exception):
    """Redis failed or is unreachable; the message is one safe line."""


def _keys(repo_key: str) -> tuple[str, str, str]:
    return (f"goblet:lease:{repo_key}", f"goblet:fence:{repo_key}",
            f"goblet:digest:{repo_key}")


def _stream_key(repo_key: str) -> str:
    return f"goblet:stream:{repo_key}"


class Coordinator:
    """Leases and digests in the Redis at ``location``."""

    def __init__(self, location: RedisLocation, *, password: str | None = None,
                 lease_seconds: float = 30.0, client: Any = None) -> None:
        self.lease_ms = max(1000, int(lease_seconds * 1000))
        self.client: Any = client or aioredis.Redis(
            host=location.host, port=location.port, db=location.db, password=password,
            ssl=location.tls, socket_timeout=2.0, socket_connect_timeout=2.0,
            decode_responses=True)

    async def _eval(self, script: str, keys: list[str], *args: object) -> Any:
        try:
            return await self.client.eval(script, len(keys), *keys, *args)
        except (RedisError, OSError) as e:
            raise CoordinationError(f"redis unavailable: {type(e).__name__}") from None

    async def acquire(self, repo_key: str, *, streaming: bool = False) -> int | None:
        """Take the repo's lease: its fencing token, or None if another holds it.
        ``streaming``: the fill is a streamed cold clone (see ``holder``)."""
        lease, fence, _ = _keys(repo_key)
        token = int(await self._eval(_ACQUIRE, [lease, fence, _stream_key(repo_key)],
                                     self.lease_ms, "1" if streaming else "0"))
        return token or None

    async def renew(self, repo_key: str, token: int) -> bool:
        """Extend a held lease; False if it ran out (and may belong to another now)."""
        lease, _, _ = _keys(repo_key)
        return bool(await self._eval(_RENEW, [lease, _stream_key(repo_key)], str(token),
                                     self.lease_ms))

    async def release(self, repo_key: str, token: int) -> None:
        """Give the lease back (only if it is still ours)."""
        lease, _, _ = _keys(repo_key)
        await self._eval(_RELEASE, [lease, _stream_key(repo_key)], str(token))

    async def held(self, repo_key: str) -> bool:
        """Whether some instance holds the repo's lease now."""
        return await self.holder(repo_key) is not None

    async def holder(self, repo_key: str) -> str | None:
        """What holds the repo's lease now: None (nobody), ``"fill"``, or ``"stream"``
        (a streamed cold clone, which lasts as long as its client takes to read)."""
        lease, _, _ = _keys(repo_key)
        try:
            token, stream = await self.client.mget(lease, _stream_key(repo_key))
        except (RedisError, OSError) as e:
            raise CoordinationError(f"redis unavailable: {type(e).__name__}") from None
        if not token:
            return None
        return "stream" if stream == token else "fill"

    async def current(self, repo_key: str, token: int) -> bool:
        """Whether ``token`` is still the repo's lease (no one took over)."""
        lease, _, _ = _keys(repo_key)
        try:
            return bool(await self.client.get(lease) == str(token))
        except (RedisError, OSError) as e:
            raise CoordinationError(f"redis unavailable: {type(e).__name__}") from None

    async def digest(self, repo_key: str) -> str | None:
        """The refs digest of what the store holds for the repo, if published."""
        _, _, digest = _keys(repo_key)
        try:
            value = await self.client.get(digest)
        except (RedisError, OSError) as e:
            raise CoordinationError(f"redis unavailable: {type(e).__name__}") from None
        return str(value) if value else None

    async def set_digest(self, repo_key: str, token: int, value: str) -> bool:
        """Record the published digest, only while ``token`` holds the lease."""
        lease, _, digest = _keys(repo_key)
        return bool(await self._eval(_SET_DIGEST, [lease, digest], str(token), value))

    async def forget(self, repo_key: str) -> None:
        """Drop the recorded digest: the store no longer holds the repo (goblet removed
        it, or a restore found it missing). Not fenced: the next publish records it."""
        _, _, digest = _keys(repo_key)
        try:
            await self.client.delete(digest)
        except (RedisError, OSError) as e:
            raise CoordinationError(f"redis unavailable: {type(e).__name__}") from None

    async def close(self) -> None:
        """Close the connections."""
        try:
            await self.client.aclose()
        except (RedisError, OSError):
            return
