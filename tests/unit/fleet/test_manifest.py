"""The manifest: what we write parses back; anything else is refused as ManifestError."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from goblet.fleet.manifest import (
    MAX_INCREMENTS,
    BundleEntry,
    Manifest,
    ManifestError,
    compacts,
    increment_base,
    parse,
    stale_objects,
)
from hypothesis import given
from hypothesis import strategies as st

A, B = "a" * 40, "b" * 40
SHA = "c" * 64


def manifest(bundles: int = 1, **changed: Any) -> Manifest:
    entries = tuple(BundleEntry(f"{i:064x}.bundle", 100 + i, f"{i:064x}")
                    for i in range(bundles))
    values: dict[str, Any] = {"refs": {"refs/heads/main": A, "refs/tags/v1": B},
                              "head": "refs/heads/main", "digest": SHA, "created_at": 1.5,
                              "fence": 3, "bundles": entries}
    return Manifest(**(values | changed))


def test_round_trip() -> None:
    m = manifest(3)
    assert parse(m.to_json()) == m
    assert m.size == 100 + 101 + 102


def test_it_holds_no_url_credential_or_tenant() -> None:
    raw = json.loads(manifest().to_json())
    assert set(raw) == {"version", "object_format", "created_at", "fence", "head", "digest",
                        "refs", "bundles"}


def mutate(**changed: Any) -> bytes:
    raw = json.loads(manifest().to_json())
    raw.update(changed)
    return json.dumps(raw).encode()


@pytest.mark.parametrize("data", [
    b"", b"not json", b"[]", b"\xff\xfe",
    mutate(version=2), mutate(object_format="sha256"),
    mutate(refs={"refs/pull/1/head": A}), mutate(refs={"refs/heads/x": "z" * 40}),
    mutate(refs={"refs/heads/a b": A}), mutate(refs={"refs/heads/../../x": A + "\n"}),
    mutate(head="HEAD"), mutate(head=3), mutate(digest="x"), mutate(created_at="now"),
    mutate(created_at=True), mutate(fence=-1), mutate(fence=1.5), mutate(bundles=[]),
    mutate(bundles=[{"name": "../x.bundle", "size": 1, "sha256": SHA}]),
    mutate(bundles=[{"name": SHA + ".bundle", "size": 0, "sha256": SHA}]),
    mutate(bundles=[{"name": SHA + ".bundle", "size": 1, "sha256": "C" * 64}]),
    mutate(bundles=[{"name": SHA + ".bundle", "size": 1, "sha256": SHA}] * 65),
    b" " * (4 * 1024 * 1024 + 1),
])
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(ManifestError):
        parse(data)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_manifest_error(data: bytes) -> None:
    with contextlib.suppress(ManifestError):
        parse(data)


def test_increments_build_on_the_published_tips() -> None:
    m = manifest()
    assert increment_base(None, set()) is None
    assert increment_base(m, {A, B}) == (A, B)
    assert increment_base(m, {A}) is None  # a tip missing here: a new base
    assert increment_base(manifest(MAX_INCREMENTS + 2), {A, B}) is None  # compaction


def test_compaction_when_increments_outweigh_the_base() -> None:
    m = manifest(2)  # base 100, one increment of 101
    assert not compacts(manifest(1), 100)
    assert compacts(m, 0)


def test_stale_objects_are_the_bundles_no_longer_named() -> None:
    m = manifest(2)
    names = {b.name for b in m.bundles} | {"old.bundle", "manifest.json"}
    assert stale_objects(names, m) == {"old.bundle"}
