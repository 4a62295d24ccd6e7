"""The object store against a real S3-compatible server (moto on loopback): streamed
multipart transfers, size caps, missing objects, folders and deletes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from goblet.fleet.locations import StoreLocation
from goblet.fleet.store import NotFound, ObjectStore, StoreError

from tests.support.fleetservers import S3Server
from tests.support.net import free_port

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


def store_for(s3: S3Server, prefix: str) -> ObjectStore:
    store = ObjectStore(StoreLocation(s3.bucket, prefix), s3.endpoint, client=s3.client())
    # S3's smallest part is 5 MiB: make an 11 MiB file go up and down in three parts.
    store.transfer = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    return store


def test_a_large_bundle_moves_in_parts_and_comes_back_whole(s3: S3Server, tmp_path: Path) -> None:
    store = store_for(s3, "multi")
    src = tmp_path / "big.bundle"
    data = os.urandom(11 * MiB)
    src.write_bytes(data)
    store.upload("k" * 64, "x.bundle", src)
    head = s3.client().head_object(Bucket=s3.bucket, Key=f"multi/repos/{'k' * 64}/x.bundle")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload's ETag
    dest = tmp_path / "back.bundle"
    assert store.download("k" * 64, "x.bundle", dest, len(data)) == \
        hashlib.sha256(data).hexdigest()
    assert dest.read_bytes() == data
    with pytest.raises(StoreError, match="larger than its manifest"):
        store.download("k" * 64, "x.bundle", tmp_path / "capped.bundle", len(data) - 1)
    assert not (tmp_path / "capped.bundle").exists()


def test_missing_objects_manifests_folders_and_deletes(s3: S3Server, tmp_path: Path) -> None:
    store = store_for(s3, "misc")
    with pytest.raises(NotFound):
        store.get_manifest("a" * 64)
    with pytest.raises(NotFound):
        store.download("a" * 64, "none.bundle", tmp_path / "none.bundle", 10)
    store.put_manifest("a" * 64, b'{"x": 1}')
    assert store.get_manifest("a" * 64) == b'{"x": 1}'
    (tmp_path / "b").write_bytes(b"bundle")
    store.upload("b" * 64, "1.bundle", tmp_path / "b")
    folders = store.list_all()
    assert {k: sorted(o.name for o in v) for k, v in folders.items()} == {
        "a" * 64: ["manifest.json"], "b" * 64: ["1.bundle"]}
    store.delete("a" * 64, ["manifest.json", "not-there.bundle"])
    assert store.list_repo("a" * 64) == []


def test_an_unreachable_store_is_a_store_error(tmp_path: Path) -> None:
    store = ObjectStore(StoreLocation("bucket", "p"), f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreError, match="unreachable") as caught:
        store.get_manifest("a" * 64)
    assert not isinstance(caught.value, NotFound)
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(StoreError):
        store.upload("a" * 64, "f.bundle", tmp_path / "f")
