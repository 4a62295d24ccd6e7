"""The object store: S3 (or an S3-compatible server) through boto3.

Layout under the configured prefix::

    repos/<key>/manifest.json      the published state (``fleet/manifest.py``)
    repos/<key>/<sha256>.bundle    its bundles, named by their own checksum

``<key>`` is the cache repo's key (the SHA-256 of the canonical URL, and of the
partition for partitioned repos): no URL, tenant or credential is in a key.

Every method blocks (call it from a thread). Bundles move between a file on
disk and the store with boto3's managed transfers, which stream in parts
(multipart above ``PART_SIZE``), so no bundle is ever held in memory.
Credentials come from boto3's standard chain only. Errors surface as
``StoreError`` with one safe line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from goblet.fleet.locations import StoreLocation
from goblet.fleet.manifest import MAX_MANIFEST_BYTES

PART_SIZE = 16 * 1024 * 1024
MANIFEST = "manifest.json"


class StoreError(Exception):
    """The object store failed or is unreachable; the message is one safe line."""


class NotFound(StoreError):
    """The object does not exist."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object of a repo's folder."""

    name: str
    size: int
    modified: float


def _safe(e: Exception) -> str:
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"object store answered {err.get('Code', '?')}"
    if isinstance(e, Boto3Error):
        return "object store transfer failed"
    return f"object store unreachable: {type(e).__name__}"


class ObjectStore:
    """Objects under ``location`` at ``endpoint`` (None: AWS's own)."""

    def __init__(self, location: StoreLocation, endpoint: str | None, *,
                 client: Any = None) -> None:
        self.location = location
        self.client: Any = client or boto3.session.Session().client(
            "s3", endpoint_url=endpoint,
            config=Config(connect_timeout=3, read_timeout=30,
                          retries={"max_attempts": 2, "mode": "standard"},
                          s3={"addressing_style": "path"} if endpoint else None))
        self.transfer = TransferConfig(multipart_threshold=PART_SIZE,
                                       multipart_chunksize=PART_SIZE, max_concurrency=4)

    def key(self, repo_key: str, name: str = "") -> str:
        """The object key of ``name`` in the folder of repo ``repo_key``."""
        return self.location.key("repos", repo_key, name) if name else \
            self.location.key("repos", repo_key) + "/"

    def get_manifest(self, repo_key: str) -> bytes:
        """The manifest's bytes (at most MAX_MANIFEST_BYTES); NotFound if none."""
        try:
            answer = self.client.get_object(Bucket=self.location.bucket,
                                            Key=self.key(repo_key, MANIFEST))
            body = answer["Body"]
            data: bytes = body.read(MAX_MANIFEST_BYTES + 1)
            body.close()
            return data
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise NotFound("no manifest") from None
            raise StoreError(_safe(e)) from None
        except BotoCoreError as e:
            raise StoreError(_safe(e)) from None

    def put_manifest(self, repo_key: str, data: bytes) -> None:
        """Replace the manifest (one PUT: readers see the old or the new one)."""
        self._call("put_object", Bucket=self.location.bucket,
                   Key=self.key(repo_key, MANIFEST), Body=data,
                   ContentType="application/json")

    def upload(self, repo_key: str, name: str, path: Path) -> None:
        """Stream the file at ``path`` to object ``name`` (multipart when large)."""
        try:
            with path.open("rb") as f:
                self.client.upload_fileobj(f, self.location.bucket, self.key(repo_key, name),
                                           Config=self.transfer)
        except (BotoCoreError, ClientError, Boto3Error) as e:
            raise StoreError(_safe(e)) from None
        except OSError as e:
            raise StoreError(f"cannot read bundle: {e.strerror}") from None

    def download(self, repo_key: str, name: str, path: Path, max_bytes: int) -> str:
        """Stream object ``name`` into a new file at ``path``; its SHA-256 (hex).

        StoreError if it is larger than ``max_bytes`` (checked before the transfer).
        """
        key = self.key(repo_key, name)
        try:
            head = self.client.head_object(Bucket=self.location.bucket, Key=key)
            if int(head.get("ContentLength", 0)) > max_bytes:
                raise StoreError("stored bundle is larger than its manifest says")
            with path.open("xb") as f:
                self.client.download_fileobj(self.location.bucket, key, f,
                                             Config=self.transfer)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise NotFound("bundle missing") from None
            raise StoreError(_safe(e)) from None
        except (BotoCoreError, Boto3Error) as e:
            raise StoreError(_safe(e)) from None
        except OSError as e:
            raise StoreError(f"cannot write bundle: {e.strerror}") from None
        return file_sha256(path)

    def list_repo(self, repo_key: str) -> list[StoredObject]:
        """The objects in the folder of one repo."""
        return self._list(self.key(repo_key))

    def list_all(self) -> dict[str, list[StoredObject]]:
        """Every repo folder's objects, by repo key."""
        out: dict[str, list[StoredObject]] = {}
        root = self.location.key("repos") + "/"
        for obj in self._list(root):
            repo_key, _, name = obj.name.partition("/")
            if name:
                out.setdefault(repo_key, []).append(StoredObject(name, obj.size, obj.modified))
        return out

    def delete(self, repo_key: str, names: list[str]) -> None:
        """Delete objects of one repo's folder (missing ones are fine)."""
        for start in range(0, len(names), 1000):
            chunk = names[start:start + 1000]
            self._call("delete_objects", Bucket=self.location.bucket, Delete={
                "Objects": [{"Key": self.key(repo_key, n)} for n in chunk], "Quiet": True})

    def _list(self, prefix: str) -> list[StoredObject]:
        out: list[StoredObject] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    out.append(StoredObject(str(item["Key"])[len(prefix):], int(item["Size"]),
                                            item["LastModified"].timestamp()))
        except (BotoCoreError, ClientError) as e:
            raise StoreError(_safe(e)) from None
        return out

    def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, method)(**kwargs)
        except (BotoCoreError, ClientError) as e:
            raise StoreError(_safe(e)) from None


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()
