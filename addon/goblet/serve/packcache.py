"""The pack cache: identical fetches share one ``upload-pack`` run.

Decision (documented in docs/operations/cache.md): goblet caches the whole
``upload-pack`` answer at its own backend, not ``pack-objects`` output via
``uploadpack.packObjectsHook``. The backend already owns the stream, the
answer includes everything git needs (acknowledgments, shallow info,
side-band framing), and no hook script has to be installed for git to run.

Key: SHA-256 of the cache repo's key, the repo's refs digest, the
Git-Protocol value and the request with volatile capabilities removed
(``agent=``, ``session-id=``), and for an answer that follows tags the tags
of its view (``serve/tagview.py``): only requests following the same tags
share it. A request for another repo, or for the same repo after its refs
moved, never matches. Only final requests (with ``done``) are keyed.

Admission on the second occurrence: the first time a key is seen it is only
counted; from the second on, the request *produces* — its upload-pack output
goes to the client and into ``<key>.<pid>.<ns>.tmp``, claimed by an ``flock``
on ``<key>.<pid>.<ns>.lock`` (``locks.WorkClaim``) — and identical requests
arriving meanwhile *follow*, streaming the file as it grows (no waiting for
the whole pack). A finished answer is renamed to ``<key>.answer`` and later
requests are *hits*. A failed production is deleted; its followers that sent
nothing yet run their own upload-pack, the others' connections are aborted
(never a clean end of a partial answer). Stored answers are bounded by
``max_bytes``, least recently used first out, also when loaded at start-up.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from goblet.cache.locks import WorkClaim, claim_fresh
from goblet.cache.recovery import sweep_abandoned

log = logging.getLogger(__name__)

SEEN_MAX = 10_000
ANSWER_SUFFIX = ".answer"


class Role(enum.Enum):
    """How one request takes part in the pack cache."""

    BYPASS = "bypass"  # not cacheable, or first occurrence: run upload-pack
    PRODUCE = "produce"  # run upload-pack and store its answer
    FOLLOW = "follow"  # stream a production that is being written
    HIT = "hit"  # stream a stored answer


@dataclass(slots=True)
class Production:
    """An answer being written; followers wait on ``grown``.

    ``claim`` marks ``tmp`` as live work until the production is finished.
    """

    key: str
    tmp: Path
    claim: WorkClaim
    size: int = 0
    done: bool = False
    failed: bool = False
    grown: asyncio.Condition = field(default_factory=asyncio.Condition)


def cache_key(repo_key: str, refs_digest: str, git_protocol: str | None, identity: bytes,
              tags: bytes | None = None) -> str:
    """The pack-cache key of one request (pure); ``tags``: for an answer that follows
    tags in a tag view, ``tags_digest`` of the view's tags."""
    h = hashlib.sha256()
    for part in (repo_key.encode(), refs_digest.encode(), (git_protocol or "").encode()):
        h.update(b"%d:" % len(part) + part)
    h.update(identity)
    if tags is not None:
        h.update(b"tags:" + tags)
    return h.hexdigest()


def tags_digest(tags: Iterable[tuple[str, str]]) -> bytes:
    """SHA-256 of a tag view's tags ((refname, oid)), in name order (pure)."""
    return hashlib.sha256("".join(
        f"{name}\0{oid}\n" for name, oid in sorted(tags)).encode("utf-8", "surrogateescape")
    ).digest()


class PackCache:
    """Stored answers under ``root``; productions in memory."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._producing: dict[str, Production] = {}
        self._stored: OrderedDict[str, int] = OrderedDict()  # key -> bytes, LRU order
        self._stored_bytes = 0
        self._loaded = False

    @property
    def enabled(self) -> bool:
        """Whether answers are stored at all (``max_bytes`` > 0)."""
        return self.max_bytes > 0

    @property
    def stored_bytes(self) -> int:
        """Bytes of stored answers."""
        return self._stored_bytes

    def answer_path(self, key: str) -> Path:
        """Where the stored answer of ``key`` lives."""
        return self.root / f"{key}{ANSWER_SUFFIX}"

    def load(self) -> None:
        """Delete dead productions; index answers left by earlier runs; trim to ``max_bytes``.

        A production whose claim is held (another instance sharing the cache
        dir is writing it) is kept. Answers are indexed oldest first, so the
        oldest go first when the bound was lowered since they were stored
        (all of them when the pack cache is off).
        """
        self._loaded = True
        sweep_abandoned(self.root, keep=lambda name: name.endswith(ANSWER_SUFFIX))
        answers: list[tuple[float, str, int]] = []
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry.suffix != ANSWER_SUFFIX:
                continue
            try:
                st = entry.stat()
            except OSError:
                continue  # removed meanwhile (by a neighbour's trim)
            answers.append((st.st_mtime, entry.stem, st.st_size))
        for _, key, size in sorted(answers):
            self._store(key, size)
        self._trim()

    def begin(self, key: str | None) -> tuple[Role, Production | None]:
        """Decide this request's role; PRODUCE and FOLLOW come with the production."""
        if key is None or not self.enabled:
            return Role.BYPASS, None
        if not self._loaded:
            self.load()
        if key in self._stored and self.answer_path(key).is_file():
            self._stored.move_to_end(key)
            return Role.HIT, None
        self._forget(key)  # not stored, or its file was removed (by a neighbour's trim)
        running = self._producing.get(key)
        if running is not None and not running.failed:
            return Role.FOLLOW, running
        count = self._seen.pop(key, 0) + 1
        self._seen[key] = count
        while len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
        if count < 2:
            return Role.BYPASS, None
        production = self._start_production(key)
        if production is None:
            return Role.BYPASS, None
        self._producing[key] = production
        return Role.PRODUCE, production

    def _start_production(self, key: str) -> Production | None:
        """Claim and create the production file of ``key``; None if the disk says no."""
        try:
            tmp, claim = claim_fresh(self.root, key, ".tmp")
        except OSError as e:
            log.warning("pack cache unavailable: %s", e)
            return None
        try:
            tmp.touch(exist_ok=False)  # exists before any follower opens it
        except OSError as e:
            claim.release()
            log.warning("pack cache unavailable: %s", e)
            return None
        return Production(key, tmp, claim)

    def open_production(self, production: Production) -> BinaryIO:
        """The production's file, opened for writing by its producer. Raises OSError."""
        return production.tmp.open("r+b")

    async def grew(self, production: Production, size: int) -> None:
        """The producer wrote up to ``size`` bytes: wake the followers."""
        async with production.grown:
            production.size = size
            production.grown.notify_all()

    async def finish(self, production: Production, ok: bool) -> None:
        """End a production: store the answer if ``ok``, else throw it away.

        Idempotent; followers are woken either way. The claim is released
        last, once the file was renamed or deleted.
        """
        if production.done:
            return
        production.done = production.failed = True  # at once: a second call changes nothing
        if self._producing.get(production.key) is production:
            del self._producing[production.key]
        try:
            ok = ok and self._keep(production)
            if not ok:
                _unlink(production.tmp)
        finally:
            production.claim.release()
        production.failed = not ok
        self._trim()
        async with production.grown:
            production.grown.notify_all()

    def _keep(self, production: Production) -> bool:
        """Rename a finished production to its answer; False if that fails."""
        try:
            production.tmp.replace(self.answer_path(production.key))
        except OSError as e:
            log.warning("cannot store answer %s: %s", production.key[:12], e)
            return False
        self._store(production.key, production.size)
        return True

    def _store(self, key: str, size: int) -> None:
        """Index a stored answer as the most recently used."""
        self._forget(key)
        self._stored[key] = size
        self._stored_bytes += size

    def _forget(self, key: str) -> None:
        """Drop ``key`` from the index (its file is not touched)."""
        self._stored_bytes -= self._stored.pop(key, 0)

    def set_budget(self, max_bytes: int) -> None:
        """Change the budget and trim stored answers to it (0: keep none)."""
        self.max_bytes = max_bytes
        self._trim()

    def _trim(self) -> None:
        """Drop least recently used answers until within ``max_bytes`` (all if off)."""
        while self._stored and (not self.enabled or self._stored_bytes > self.max_bytes):
            key, size = self._stored.popitem(last=False)
            self._stored_bytes -= size
            _unlink(self.answer_path(key))


def _unlink(path: Path) -> None:
    """Delete a file of the pack cache; a failure is logged (the next load retries)."""
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        log.warning("cannot delete %s: %s", path.name, e)
