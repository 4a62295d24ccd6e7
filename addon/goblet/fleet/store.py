"""The object store: S3 (or an S3-compatible server) through boto3.

Layout under the configured prefix::

    repos/<key>/manifest.json      the published state (``fleet/manifest.py``)
    repos/<key>/<sha256>.bundle    its bundles, named by their own checksum

``<key>`` is the cache repo's key (the SHA-256 of the canonical URL, and of the
partition for partitioned repos): no URL, tenant or credential is in a key.

Every method blocks (the tier calls them in its own threads,
``threads.StoreThreads``). Bundles go up with boto3's managed transfers, which
stream in parts (multipart above ``PART_SIZE``); they come down in one streamed
GET read as bytes arrive, under a ``Pace`` (a deadline, a minimum rate, a stop
from another thread): boto3's own timeouts are per read, so a store that
trickles would otherwise hold a restore forever. No bundle is ever held in
memory.
Credentials come from boto3's standard chain only. Errors surface as
``StoreError`` with one safe line.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import HTTPError as Urllib3Error

from goblet.fleet.locations import StoreLocation
from goblet.fleet.manifest import MAX_MANIFEST_BYTES

PART_SIZE = 16 * 1024 * 1024
MANIFEST = "manifest.json"
READ_SIZE = 1024 * 1024  # at most this much per read of a download
READ_TIMEOUT = 30  # seconds a read of a bundle download (or an upload's answer) may wait
MANIFEST_READ_TIMEOUT = 5  # the same for a manifest (small: the store answers at once)
LOW_SPEED = 1000  # bytes/s: slower than this over a whole window is a stalled store


class StoreError(Exception):
    """The object store failed or is unreachable; the message is one safe line."""


class NotFound(StoreError):
    """The object does not exist."""


class Conflict(StoreError):
    """A conditional write found the object changed since it was read."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object of a repo's folder."""

    name: str
    size: int
    modified: float


@dataclass(slots=True)
class Pace:
    """The limits of one download: it ends by ``deadline`` (``time.monotonic``), gets at
    least ``LOW_SPEED`` bytes/s over every ``window`` seconds, and ends when ``stop`` is
    set (by the coroutine that gave up waiting for it). ``check`` raises StoreError."""

    window: float = 30.0
    deadline: float = math.inf
    stop: threading.Event = field(default_factory=threading.Event)
    _since: float = field(default_factory=time.monotonic)
    _got: int = 0

    def check(self, got: int) -> None:
        """``got`` more bytes arrived (0: none yet); raise if the transfer must end."""
        now = time.monotonic()
        if self.stop.is_set():
            raise StoreError("object store transfer abandoned")
        if now > self.deadline:
            raise StoreError("object store too slow: the fill's deadline passed")
        self._got += got
        if now - self._since >= self.window:
            if self._got < LOW_SPEED * self.window:
                raise StoreError(f"object store too slow: under {LOW_SPEED} bytes/s "
                                 f"for {self.window:.0f}s")
            self._since, self._got = now, 0


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

        def make(read_timeout: int, attempts: int) -> Any:
            return boto3.session.Session().client(
                "s3", endpoint_url=endpoint,
                config=Config(connect_timeout=3, read_timeout=read_timeout,
                              retries={"max_attempts": attempts, "mode": "standard"},
                              s3={"addressing_style": "path"} if endpoint else None))

        self.client: Any = client or make(READ_TIMEOUT, 2)
        # Manifest reads come before a cold fill decides anything: a store that does
        # not answer one holds a thread for MANIFEST_READ_TIMEOUT, once (no retry: the
        # fill then goes without the store).
        self.manifest_client: Any = client or make(MANIFEST_READ_TIMEOUT, 1)
        self.transfer = TransferConfig(multipart_threshold=PART_SIZE,
                                       multipart_chunksize=PART_SIZE, max_concurrency=4)

    def key(self, repo_key: str, name: str = "") -> str:
        """The object key of ``name`` in the folder of repo ``repo_key``."""
        return self.location.key("repos", repo_key, name) if name else \
            self.location.key("repos", repo_key) + "/"

    def get_manifest(self, repo_key: str, pace: Pace | None = None) -> bytes:
        """The manifest's bytes (at most MAX_MANIFEST_BYTES + 1); NotFound if none."""
        return self.get_manifest_tagged(repo_key, pace)[0]

    def get_manifest_tagged(self, repo_key: str, pace: Pace | None = None
                            ) -> tuple[bytes, str]:
        """The manifest's bytes and ETag (for ``put_manifest``'s ``if_match``)."""
        pace = pace or Pace()
        try:
            answer = self.manifest_client.get_object(Bucket=self.location.bucket,
                                                     Key=self.key(repo_key, MANIFEST))
            length = min(int(answer.get("ContentLength", 0)), MAX_MANIFEST_BYTES + 1)
            raw = answer["Body"]._raw_stream
            parts: list[bytes] = []
            got = 0
            try:
                while got < length:
                    pace.check(0)
                    parts.append(_read1(raw, length - got))
                    got += len(parts[-1])
                    pace.check(len(parts[-1]))
            finally:
                raw.close()
            return b"".join(parts), str(answer.get("ETag", ""))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise NotFound("no manifest") from None
            raise StoreError(_safe(e)) from None
        except BotoCoreError as e:
            raise StoreError(_safe(e)) from None

    def put_manifest(self, repo_key: str, data: bytes, *, if_match: str | None = None
                     ) -> None:
        """Replace the manifest (one PUT: readers see the old or the new one), only if
        it is still the one whose ETag is ``if_match`` (``""``: only if there is none);
        Conflict if it changed. A server that does not implement conditional writes gets
        an unconditional one."""
        args: dict[str, Any] = {"Bucket": self.location.bucket,
                                "Key": self.key(repo_key, MANIFEST), "Body": data,
                                "ContentType": "application/json"}
        if if_match is not None:
            args.update({"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"})
        try:
            self.client.put_object(**args)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise Conflict("the manifest changed meanwhile") from None
            if code in ("NotImplemented", "501") and if_match is not None:
                self.put_manifest(repo_key, data)
                return
            raise StoreError(_safe(e)) from None
        except BotoCoreError as e:
            raise StoreError(_safe(e)) from None

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

    def download(self, repo_key: str, name: str, path: Path, max_bytes: int,
                 pace: Pace | None = None) -> str:
        """Stream object ``name`` into a new file at ``path``; its SHA-256 (hex).

        StoreError if it is larger than ``max_bytes`` (checked before the body is read,
        and while it is), or if it comes slower than ``pace`` allows.
        """
        pace = pace or Pace()
        key = self.key(repo_key, name)
        h = hashlib.sha256()
        try:
            answer = self.client.get_object(Bucket=self.location.bucket, Key=key)
            length = int(answer.get("ContentLength", 0))
            if length > max_bytes:
                answer["Body"].close()
                raise StoreError("stored bundle is larger than its manifest says")
            # The raw stream's read1 returns as soon as some bytes arrive (botocore's
            # read waits for the whole chunk): the pace is checked at every arrival.
            raw = answer["Body"]._raw_stream
            with path.open("xb") as f:
                got = 0
                try:
                    while got < length:
                        pace.check(0)
                        chunk = _read1(raw, min(READ_SIZE, length - got))
                        got += len(chunk)
                        pace.check(len(chunk))
                        h.update(chunk)
                        f.write(chunk)
                finally:
                    if got < length:
                        raw.close()  # abandoned midway: the connection is not reusable
                    else:
                        raw.release_conn()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise NotFound("bundle missing") from None
            raise StoreError(_safe(e)) from None
        except (BotoCoreError, Boto3Error) as e:
            raise StoreError(_safe(e)) from None
        except OSError as e:
            raise StoreError(f"cannot write bundle: {e.strerror}") from None
        return h.hexdigest()

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


def _read1(raw: Any, size: int) -> bytes:
    """Up to ``size`` bytes of a download's body, as soon as some arrive."""
    try:
        chunk: bytes = raw.read1(size, decode_content=False)
    except (Urllib3Error, OSError) as e:
        raise StoreError(_safe(e)) from None
    if not chunk:
        raise StoreError("object store transfer cut short")
    return chunk


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()
