"""The manifest of one published repo: pure data, no IO.

A repo is published as git bundles (a base, then increments whose
prerequisites are the previous tips) and one small JSON manifest::

    {"version": 1, "object_format": "sha1", "created_at": 1767312000.0,
     "fence": 7, "head": "refs/heads/main", "digest": "<sha256 of refs+HEAD>",
     "refs": {"refs/heads/main": "<oid>", ...},
     "bundles": [{"name": "<sha256>.bundle", "size": 123, "sha256": "<hex>"}, ...]}

It holds repository data and digests only: never a URL with user info, a
credential or a tenant id. Whatever is read back is treated as untrusted:
``parse`` accepts only this shape, and the bundles it names are checked
against their size and checksum, then by git, before anything is kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

VERSION = 1
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_BUNDLES = 64
# Increments kept before the next publish makes a new base (compaction).
MAX_INCREMENTS = 4

_OID = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_REF = re.compile(r"refs/(?:heads|tags)/[^\x00-\x20\x7f~^:?*\[\\]{1,1000}")
_BUNDLE = re.compile(r"[0-9a-f]{64}\.bundle")


class ManifestError(ValueError):
    """The stored manifest is not one goblet wrote (corrupt, tampered or foreign)."""


@dataclass(frozen=True, slots=True)
class BundleEntry:
    """One bundle of a published repo: its object name, size and SHA-256."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """What the store holds for one repo (see the module docstring)."""

    refs: dict[str, str]
    head: str | None
    digest: str
    created_at: float
    fence: int
    bundles: tuple[BundleEntry, ...] = field(default_factory=tuple)
    object_format: str = "sha1"

    @property
    def size(self) -> int:
        """Bytes of all its bundles."""
        return sum(b.size for b in self.bundles)

    def to_json(self) -> bytes:
        """The stored form."""
        return json.dumps({
            "version": VERSION, "object_format": self.object_format,
            "created_at": self.created_at, "fence": self.fence, "head": self.head,
            "digest": self.digest, "refs": dict(sorted(self.refs.items())),
            "bundles": [{"name": b.name, "size": b.size, "sha256": b.sha256}
                        for b in self.bundles],
        }, separators=(",", ":")).encode()


def parse(data: bytes) -> Manifest:
    """A manifest from its stored bytes; ManifestError unless it has exactly our shape."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError("manifest too large")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise ManifestError("manifest is not JSON") from None
    if not isinstance(raw, dict) or raw.get("version") != VERSION:
        raise ManifestError("unknown manifest version")
    if raw.get("object_format") != "sha1":
        raise ManifestError("unsupported object format")
    refs = raw.get("refs")
    if not isinstance(refs, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and _REF.fullmatch(k) and _OID.fullmatch(v)
            for k, v in refs.items()):
        raise ManifestError("bad refs")
    head = raw.get("head")
    if head is not None and (not isinstance(head, str) or not _REF.fullmatch(head)):
        raise ManifestError("bad head")
    digest, created, fence = raw.get("digest"), raw.get("created_at"), raw.get("fence")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise ManifestError("bad digest")
    if not isinstance(created, int | float) or isinstance(created, bool) or created < 0:
        raise ManifestError("bad created_at")
    if not isinstance(fence, int) or isinstance(fence, bool) or fence < 0:
        raise ManifestError("bad fence")
    bundles = raw.get("bundles")
    if not isinstance(bundles, list) or not 0 < len(bundles) <= MAX_BUNDLES:
        raise ManifestError("bad bundle list")
    entries = []
    for b in bundles:
        if not isinstance(b, dict):
            raise ManifestError("bad bundle entry")
        name, size, sha = b.get("name"), b.get("size"), b.get("sha256")
        if not (isinstance(name, str) and _BUNDLE.fullmatch(name)
                and isinstance(size, int) and not isinstance(size, bool) and size > 0
                and isinstance(sha, str) and _HEX64.fullmatch(sha)):
            raise ManifestError("bad bundle entry")
        entries.append(BundleEntry(name, size, sha))
    return Manifest({str(k): str(v) for k, v in refs.items()}, head, digest, float(created),
                    fence, tuple(entries))


def increment_base(previous: Manifest | None, present: set[str]) -> tuple[str, ...] | None:
    """The prerequisites of the next bundle (the previous tips), or None when the next
    publish must write a new base: nothing published yet, too many increments, or a
    previous tip missing here (``present``: which of them this repo holds)."""
    if previous is None or len(previous.bundles) > MAX_INCREMENTS:
        return None
    tips = tuple(sorted(set(previous.refs.values())))
    if not tips or not set(tips) <= present:
        return None
    return tips


def compacts(previous: Manifest, increment_size: int) -> bool:
    """Whether adding an increment of ``increment_size`` bytes should instead start over
    with a base: the increments would outweigh the base."""
    base = previous.bundles[0].size
    increments = sum(b.size for b in previous.bundles[1:]) + increment_size
    return increments > base


def stale_objects(names: set[str], manifest: Manifest) -> set[str]:
    """Bundle objects of a repo's folder that ``manifest`` no longer names."""
    keep = {b.name for b in manifest.bundles}
    return {n for n in names if n.endswith(".bundle") and n not in keep}


def same_refs(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Whether two ref maps are equal."""
    return dict(a) == dict(b)
