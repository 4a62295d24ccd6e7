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

Redis is shared, so its keys may hold values goblet did not write: a lease that is
empty, not a number, of another Redis type, without an expiry or with one longer
than goblet's lease, a digest that is not a SHA-256, bytes that are not UTF-8.
None of them is an error here: ``lease`` reports what it found (``Lease.foreign``)
and the caller decides (``FleetTier`` fills alone rather than wait for it); a
digest that is not one is no digest. Nothing read from Redis decides access.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from goblet.fleet.locations import RedisLocation

# A GET that answers false (as for a missing key) for a key of another type, instead
# of failing the whole script.
_GET = """
local function get(key)
  local value = redis.pcall('GET', key)
  if type(value) == 'table' and value.err then
    return false
  end
  return value
end
"""
# The fence must be a counter goblet can INCR: a fence that is not one (another type,
# not an integer) leaves the lease untaken and answers -1.
_ACQUIRE = """
if redis.call('SET', KEYS[1], '0', 'NX', 'PX', ARGV[1]) then
  local token = redis.pcall('INCR', KEYS[2])
  if type(token) == 'table' and token.err then
    redis.call('DEL', KEYS[1])
    return -1
  end
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
_RENEW = _GET + """
if get(KEYS[1]) == ARGV[1] then
  if get(KEYS[2]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
  end
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = _GET + """
if get(KEYS[1]) == ARGV[1] then
  if get(KEYS[2]) == ARGV[1] then
    redis.call('DEL', KEYS[2])
  end
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_SET_DIGEST = _GET + """
if get(KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
"""
# What holds a lease: {} (nothing), {type, pttl} (not a string), or
# {type, pttl, value, stream value ('' if none or not a string)}.
_LOOK = _GET + """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
  return {}
end
local ttl = redis.call('PTTL', KEYS[1])
if kind ~= 'string' then
  return {kind, ttl}
end
return {kind, ttl, get(KEYS[1]) or '', get(KEYS[2]) or ''}
"""
_TOKEN = re.compile(rb"[1-9][0-9]{0,18}")  # an INCR of goblet's fence
_DIGEST = re.compile(rb"[0-9a-f]{64}")  # ``refs_digest``


class CoordinationError(Exception):
    """Redis failed or is unreachable; the message is one safe line."""


class ForeignFence(Exception):
    """The repo's fence key holds something goblet cannot count on (another type, not an
    integer): no lease can be taken for the repo. Redis itself works."""


@dataclass(frozen=True, slots=True)
class Lease:
    """What ``Coordinator.lease`` found in a repo's lease key.

    ``token``: the holder's fencing token, None when the value is not one goblet writes
    (empty, not a positive integer, not UTF-8, or the key is of another Redis type).
    ``ttl_ms``: its expiry in milliseconds, -1 if it has none. ``streaming``: the holder
    marked its fill a streamed cold clone (``goblet:stream:<key>`` holds its token).
    """

    token: int | None
    ttl_ms: int
    streaming: bool = False

    def foreign(self, lease_ms: int) -> bool:
        """Whether goblet cannot have written this lease: not a token, no expiry, or an
        expiry beyond ``lease_ms`` (goblet's lease time, which no holder extends past)."""
        return self.token is None or self.ttl_ms < 0 or self.ttl_ms > lease_ms


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
        # Values stay bytes: goblet decodes what it reads (any value may be in a
        # shared Redis). No retries: a Redis that does not answer costs a call one
        # timeout, and the tier then leaves it alone for a while (``PartHealth``).
        self.client: Any = client or aioredis.Redis(
            host=location.host, port=location.port, db=location.db, password=password,
            ssl=location.tls, socket_timeout=2.0, socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 0))

    async def _eval(self, script: str, keys: list[str], *args: object) -> Any:
        try:
            return await self.client.eval(script, len(keys), *keys, *args)
        except (RedisError, OSError) as e:
            raise CoordinationError(f"redis unavailable: {type(e).__name__}") from None

    async def acquire(self, repo_key: str, *, streaming: bool = False) -> int | None:
        """Take the repo's lease: its fencing token, or None if its key exists (another
        holds it, or a value goblet did not write is there: see ``lease``).
        ``streaming``: the fill is a streamed cold clone (see ``holder``). ForeignFence
        if the repo's fence is not a counter."""
        lease, fence, _ = _keys(repo_key)
        answer = await self._eval(_ACQUIRE, [lease, fence, _stream_key(repo_key)],
                                  self.lease_ms, "1" if streaming else "0")
        token = answer if isinstance(answer, int) else 0
        if token < 0:
            raise ForeignFence("the repo's fence key is not a counter")
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
        """What holds the repo's lease now: None (nobody), ``"fill"``, ``"stream"`` (a
        streamed cold clone, which lasts as long as its client takes to read), or
        ``"foreign"`` (a value goblet did not write: see ``Lease.foreign``)."""
        found = await self.lease(repo_key)
        if found is None:
            return None
        if found.foreign(self.lease_ms):
            return "foreign"
        return "stream" if found.streaming else "fill"

    async def lease(self, repo_key: str) -> Lease | None:
        """The repo's lease as it is now (one atomic look), None if its key is absent.
        Never fails on what the key holds: only Redis failing is a CoordinationError."""
        lease, _, _ = _keys(repo_key)
        answer = await self._eval(_LOOK, [lease, _stream_key(repo_key)])
        if not isinstance(answer, list) or len(answer) < 2:
            return None
        ttl = answer[1] if isinstance(answer[1], int) else -1
        if len(answer) < 4:
            return Lease(None, ttl)
        value, stream = answer[2], answer[3]
        if not isinstance(value, bytes) or not _TOKEN.fullmatch(value):
            return Lease(None, ttl)
        return Lease(int(value), ttl, streaming=stream == value)

    async def current(self, repo_key: str, token: int) -> bool:
        """Whether ``token`` is still the repo's lease (no one took over)."""
        found = await self.lease(repo_key)
        return found is not None and found.token == token

    async def digest(self, repo_key: str) -> str | None:
        """The refs digest of what the store holds for the repo, if published. A value
        that is not a digest (not 64 hex digits, not UTF-8, another type) is none."""
        _, _, digest = _keys(repo_key)
        try:
            value = await self.client.get(digest)
        except ResponseError as e:
            if str(e).startswith("WRONGTYPE"):  # (the key is not a string)
                return None
            raise CoordinationError(f"redis unavailable: {type(e).__name__}") from None
        except (RedisError, OSError) as e:
            raise CoordinationError(f"redis unavailable: {type(e).__name__}") from None
        if not isinstance(value, bytes) or not _DIGEST.fullmatch(value):
            return None
        return value.decode("ascii")

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
