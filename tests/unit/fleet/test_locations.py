"""Where the fleet's shared parts live: the parsers refuse anything but a plain location,
and above all a credential."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from goblet.fleet.locations import (
    RedisLocation,
    StoreLocation,
    parse_endpoint,
    parse_partitions,
    parse_redis,
    parse_store,
)

Parser = Callable[[str], object]

# parser: (value, what it parses to)
GOOD: dict[Parser, list[tuple[str, object]]] = {
    parse_store: [
        ("", None), ("  ", None),
        ("s3://bucket", StoreLocation("bucket", "")),
        ("s3://my.bucket-1/goblet/", StoreLocation("my.bucket-1", "goblet")),
        ("s3://bucket/a/b_c/d-e.f", StoreLocation("bucket", "a/b_c/d-e.f")),
    ],
    parse_endpoint: [
        ("", None), ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("https://minio.example/", "https://minio.example"),
        ("http://[::1]:9000", "http://[::1]:9000"),
    ],
    parse_redis: [
        ("", None), ("redis://127.0.0.1", RedisLocation(False, "127.0.0.1", 6379, 0)),
        ("redis://cache:6380/3", RedisLocation(False, "cache", 6380, 3)),
        ("rediss://cache.example:6379/0", RedisLocation(True, "cache.example", 6379, 0)),
    ],
}

# parser: (the option its errors name, values it refuses)
BAD: dict[Parser, tuple[str, list[str]]] = {
    parse_store: ("goblet_store", [
        "bucket", "s3:/bucket", "https://bucket", "s3://", "s3://B", "s3://ab", "s3://a..b",
        "s3://bucket/../x", "s3://bucket/a//b", "s3://bucket/a b", "s3://bucket/a?x",
        "s3://key:secret@bucket/p", "s3://bucket/%2e%2e",
    ]),
    parse_endpoint: ("goblet_store_endpoint", [
        "minio:9000", "ftp://minio", "http://", "http://minio/bucket", "http://minio?x=1",
        "http://user:secret@minio:9000", "http://token@minio", "http://minio:99999",
        "http://mi nio",
    ]),
    parse_redis: ("goblet_redis", [
        "127.0.0.1:6379", "http://cache", "redis://", "redis://cache/x", "redis://cache/100",
        "redis://:pw@cache:6379/0", "redis://user:pw@cache", "redis://cache:0x1",
        "redis://cache/0?password=x",
    ]),
}


@pytest.mark.parametrize(("parse", "value", "expected"), [
    pytest.param(parse, value, expected, id=f"{parse.__name__}:{value}")
    for parse, cases in GOOD.items() for value, expected in cases
])
def test_locations(parse: Parser, value: str, expected: object) -> None:
    assert parse(value) == expected


@pytest.mark.parametrize(("parse", "option", "value"), [
    pytest.param(parse, option, value, id=f"{parse.__name__}:{value}")
    for parse, (option, values) in BAD.items() for value in values
])
def test_bad_locations_are_refused(parse: Parser, option: str, value: str) -> None:
    with pytest.raises(ValueError, match=option):
        parse(value)


def test_store_keys_stay_under_the_prefix() -> None:
    assert StoreLocation("b", "p/q").key("repos", "k", "x") == "p/q/repos/k/x"
    assert StoreLocation("b", "").key("repos", "k") == "repos/k"


def test_a_credential_in_the_endpoint_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError) as caught:
        parse_endpoint("http://AKIA:sentinel-secret@minio:9000")
    assert "sentinel-secret" not in str(caught.value)


@pytest.mark.parametrize("value", [v for v in BAD[parse_redis][1] if "pw" in v])
def test_a_password_in_the_redis_url_is_refused_without_echoing_it(value: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_redis(value)
    assert "pw" not in str(caught.value)


def test_partitions() -> None:
    assert parse_partitions("shared") == {"shared"}
    assert parse_partitions(" Shared, tenant ") == {"shared", "tenant"}
    for bad in ("", ",", "public", "shared,everyone"):
        with pytest.raises(ValueError, match="goblet_store_partitions"):
            parse_partitions(bad)
