"""Where the fleet's shared parts live: pure parsers of ``goblet_store``,
``goblet_store_endpoint`` and ``goblet_redis`` (ValueError when bad).

None of them may carry a credential: the object store's come from the standard
AWS chain (environment, profile, instance role), Redis's password from the
``GOBLET_REDIS_PASSWORD`` environment variable, so neither reaches argv or a log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]+\]")


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """``s3://bucket/prefix``: the bucket and the key prefix (no slashes at its ends)."""

    bucket: str
    prefix: str

    def key(self, *parts: str) -> str:
        """An object key under the prefix."""
        return "/".join((self.prefix, *parts) if self.prefix else parts)


@dataclass(frozen=True, slots=True)
class RedisLocation:
    """``redis://host:port/db`` (``rediss://`` for TLS)."""

    tls: bool
    host: str
    port: int
    db: int


def parse_store(value: str) -> StoreLocation | None:
    """``s3://bucket[/prefix]``; None for an empty value (the tier is off)."""
    text = str(value).strip()
    if not text:
        return None
    if not text.startswith("s3://"):
        raise ValueError(f"goblet_store must be s3://bucket/prefix, not {value!r}")
    bucket, _, prefix = text.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"goblet_store: bad bucket name in {value!r}")
    if prefix and (not _PREFIX.fullmatch(prefix) or
                   any(p in (".", "..") for p in prefix.split("/"))):
        raise ValueError(f"goblet_store: bad prefix in {value!r} (letters, digits, . _ - /)")
    return StoreLocation(bucket, prefix)


def _split_url(value: str, option: str, schemes: tuple[str, ...], form: str,
               credentials: str) -> tuple[SplitResult, int | None] | None:
    """``value`` split as a URL of one of ``schemes`` with a host and no user info, and its
    port; None for an empty value. ``form`` and ``credentials`` (where they come from
    instead) complete the errors, which are ValueErrors naming ``option``."""
    text = str(value).strip()
    if not text:
        return None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{option}: bad URL {value!r}") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"{option} must be {form}, not {value!r}")
    if "@" in parts.netloc:
        raise ValueError(f"{option} must not hold credentials ({credentials})")
    return parts, port


def parse_endpoint(value: str) -> str | None:
    """An S3-compatible endpoint, ``http(s)://host[:port]``; None for empty (AWS's own).

    User info is refused: credentials come from the AWS chain, never from an option.
    """
    split = _split_url(value, "goblet_store_endpoint", ("http", "https"),
                       "http(s)://host[:port]",
                       "use the AWS environment, profile or instance role")
    if split is None:
        return None
    parts, port = split
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"goblet_store_endpoint must be http(s)://host[:port], not {value!r}")
    host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    if not _HOST.fullmatch(host):
        raise ValueError(f"goblet_store_endpoint: bad host in {value!r}")
    return f"{parts.scheme}://{parts.netloc}"


def parse_redis(value: str) -> RedisLocation | None:
    """``redis://host[:port][/db]`` or ``rediss://…``; None for empty (no coordination).

    A password in the URL is refused (it would sit in argv): set
    ``GOBLET_REDIS_PASSWORD`` in the environment instead.
    """
    split = _split_url(value, "goblet_redis", ("redis", "rediss"), "redis://host:port/db",
                       "set GOBLET_REDIS_PASSWORD in the environment")
    if split is None:
        return None
    parts, port = split
    db_text = parts.path.strip("/") or "0"
    if not re.fullmatch(r"[0-9]{1,2}", db_text) or parts.query or parts.fragment:
        raise ValueError(f"goblet_redis: bad database number in {value!r}")
    host = parts.hostname
    assert host is not None  # _split_url refuses a URL without one
    if not _HOST.fullmatch(host) and not _HOST.fullmatch(f"[{host}]"):
        raise ValueError(f"goblet_redis: bad host in {value!r}")
    return RedisLocation(parts.scheme == "rediss", host, port or 6379, int(db_text))


PARTITION_KINDS = ("shared", "tenant", "user")


def parse_partitions(value: str) -> frozenset[str]:
    """Comma-separated partition kinds whose repos are published (``shared`` by default)."""
    kinds = {p.strip().lower() for p in str(value).split(",") if p.strip()}
    if not kinds or not kinds <= set(PARTITION_KINDS):
        raise ValueError(f"goblet_store_partitions must name some of "
                         f"{', '.join(PARTITION_KINDS)}, not {value!r}")
    return frozenset(kinds)
