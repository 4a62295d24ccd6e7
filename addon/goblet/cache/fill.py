"""Fills: bring a cache repo up to date with its upstream, one at a time per repo.

A fill is ``git fetch --atomic --prune`` of branches and tags with the
credential of the client that triggered it, passed as ``http.extraHeader``
through the environment (never argv, URL or disk). Fills are single-flight:
callers asking for a fill of a repo that is already being filled join it.
A repo's first fill builds it in ``tmp/`` and renames it into place only when
the fetch succeeded, so a half-written repo is never visible.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from goblet.auth.credentials import Credential
from goblet.cache.locks import LockTimeout, RepoLocks
from goblet.cache.recovery import clean_residue, remove_tree
from goblet.cache.store import OID_RE, CacheRepo, RepoStore
from goblet.cache.usage import pack_bytes
from goblet.git.runner import GitResult, GitRunner, GitTimeout

if TYPE_CHECKING:
    from goblet.fleet.tier import FleetTier

log = logging.getLogger(__name__)

REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
# The least a fill's transfer may average over ``stall_timeout`` seconds (bytes/s): git's
# ``http.lowSpeedLimit`` for fetches, the slowest client a tee fill copies for.
LOW_SPEED_LIMIT = 1000
_HTTP_STATUS = re.compile(r"returned error: ([0-9]{3})")
_NOT_FOUND = re.compile(r"repository '[^']*' not found")
_DIAGNOSTIC = re.compile(r"^[a-z][a-z-]*: .*$", re.MULTILINE)  # "fatal: …", "fetch-pack: …"
_QUOTED = re.compile(r"'[^'\n]*'")
# A ref of the cache that the upstream cannot also have (it has one whose name is a
# directory of it, or the reverse): git's atomic fetch will not drop one and create the
# other in one transaction. E.g. the upstream replaced ``topic/x`` with ``topic``.
# (git's own line only, not text the upstream sent: "remote: …", "fatal: remote error: …")
_CLASH = re.compile(r"^error: cannot lock ref '(refs/(?:heads|tags)/[^'\n]+)': "
                    r"'(refs/(?:heads|tags)/[^'\n]+)' exists; cannot create '\1'$",
                    re.MULTILINE)
MAX_CLASHES = 8  # refs in such a clash a fill drops and fetches again for, at most
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 header field name
_NETWORK_HINTS = (
    "could not resolve host", "failed to connect", "connection refused", "timed out",
    "operation too slow", "early eof", "unexpected disconnect", "rpc failed",
    "ssl", "tls", "connection reset", "remote end hung up", "empty reply", "recv failure",
    "send failure", "transfer closed", "protocol error",
)


class FailureKind(enum.Enum):
    """Why a fill failed, as far as the client's answer goes."""

    DENIED = "denied"  # upstream refused the credential (401/403/404)
    UPSTREAM = "upstream"  # network error, timeout, 5xx, truncated answer
    LOCAL = "local"  # our side: disk, git, locks
    CLIENT = "client"  # a tee fill's client went away or read too slowly (``teefill.py``)


class FillError(Exception):
    """A fill or exact-object fetch failed; ``reason`` is one safe line; ``clash``: the
    cache ref whose name clashes with one the upstream has (``_CLASH``), if that was it."""

    def __init__(self, kind: FailureKind, reason: str, status: int | None = None, *,
                 clash: str | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.status = status
        self.clash = clash


@dataclass(frozen=True, slots=True)
class FillResult:
    """What a successful fill did."""

    created: bool
    refs: int
    seconds: float


def classify_failure(result: GitResult) -> FillError:
    """Turn a failed ``git fetch`` into a FillError (pure; reads only stderr)."""
    text = result.stderr.decode("utf-8", "replace")
    line = result.stderr_line()
    m = _HTTP_STATUS.search(text)
    if m:
        status = int(m.group(1))
        kind = FailureKind.DENIED if status in (401, 403, 404) else FailureKind.UPSTREAM
        return FillError(kind, f"upstream answered {status}", status)
    lowered = text.lower()
    if _NOT_FOUND.search(text):
        return FillError(FailureKind.DENIED, "upstream answered 404", 404)
    if "could not read username" in lowered or "authentication failed" in lowered:
        return FillError(FailureKind.DENIED, "upstream asked for credentials", 401)
    # git's own diagnostics only ("fatal: …", "error: …"), without what they quote: a
    # ref name (from the upstream, or a restored bundle) may spell any hint ("…/tls")
    told = _QUOTED.sub("''", "\n".join(_DIAGNOSTIC.findall(text))).lower()
    if any(hint in told for hint in _NETWORK_HINTS):
        return FillError(FailureKind.UPSTREAM, f"upstream fetch failed: {line}")
    clash = next((m for m in _CLASH.finditer(text) if _relatives(m.group(1), m.group(2))),
                 None)
    return FillError(FailureKind.LOCAL, f"cache update failed: {line}",
                     clash=clash.group(2) if clash else None)


def _relatives(a: str, b: str) -> bool:
    """Whether one ref name is a directory of the other (they cannot both exist)."""
    return a.startswith(b + "/") or b.startswith(a + "/")


def header_config(url: str, credential: Credential) -> list[tuple[str, str]]:
    """``http.<origin>/.extraHeader`` entries replaying the client's credential.

    Scoped to the upstream origin so a header never follows a redirect elsewhere.
    The first, empty entry clears any inherited extraHeader list.
    """
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}/"
    if credential.upstream_anonymous:
        return []
    entries = [(f"http.{origin}.extraHeader", "")]
    for name, value in credential.headers:
        if not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\0"):
            continue  # cannot be replayed safely; the fill then lacks it and upstream decides
        entries.append((f"http.{origin}.extraHeader", f"{name}: {value}"))
    return entries


OnProgress = Callable[[str], None]  # receives git's progress lines during a fill


class FillObserver(Protocol):
    """Told about every fill and exact-object fetch (metrics, logs)."""

    def fill_started(self, repo: CacheRepo) -> None:
        """A fill begins (after the writer lock was taken)."""

    def fill_finished(
        self, repo: CacheRepo, result: str, seconds: float, bytes_in: int, reason: str
    ) -> None:
        """A fill ended: ``result`` is ok, denied, upstream_error, local_error or
        abandoned (``result_of``)."""


_RESULTS = {FailureKind.DENIED: "denied", FailureKind.UPSTREAM: "upstream_error",
            FailureKind.LOCAL: "local_error", FailureKind.CLIENT: "abandoned"}


def result_of(kind: FailureKind) -> str:
    """The ``result`` a fill that failed with ``kind`` is reported with (metrics, log)."""
    return _RESULTS[kind]


class Filler:
    """Runs fills and exact-object fetches, single-flight per repo."""

    def __init__(
        self,
        store: RepoStore,
        locks: RepoLocks,
        git: GitRunner,
        *,
        stall_timeout: float,
        max_seconds: float = 3600.0,
        observer: FillObserver | None = None,
    ) -> None:
        self.observer = observer
        self.store = store
        self.locks = locks
        self.git = git
        self.stall_timeout = stall_timeout
        self.max_seconds = max_seconds
        self._inflight: dict[str, asyncio.Task[FillResult]] = {}
        self._by_id: set[str] = set()  # repo keys with an exact-object fetch under way
        # The fleet tier (``fleet/tier.py``), if configured: a first fill restores from
        # the shared store, and every fill takes the repo's fleet-wide turn.
        self.fleet: FleetTier | None = None
        self._restored: dict[str, int] = {}  # repo key -> pack bytes restored from the fleet

    def in_flight(self, repo: CacheRepo) -> asyncio.Task[FillResult] | None:
        """The running fill of ``repo``, if any."""
        task = self._inflight.get(repo.key)
        return task if task is not None and not task.done() else None

    def start(
        self, repo: CacheRepo, credential: Credential, head: str | None = None,
        progress: OnProgress | None = None,
    ) -> asyncio.Task[FillResult]:
        """Start a fill of ``repo``, or return the one already running.

        The task's exception, if any, is a FillError. Callers that do not
        await the task need not retrieve it: failures are logged here.
        """
        running = self.in_flight(repo)
        if running is not None:
            return running
        task = asyncio.get_running_loop().create_task(
            self._fill(repo, credential, head, progress), name=f"goblet-fill-{repo.key[:12]}"
        )
        self._inflight[repo.key] = task
        task.add_done_callback(lambda t: self._finished(repo, t))
        return task

    def track(self, repo: CacheRepo, task: asyncio.Task[FillResult]) -> None:
        """Count ``task`` (a fill made another way, see ``teefill.py``) as ``repo``'s fill
        in flight: later callers join it as they would join ``start``'s."""
        self._inflight[repo.key] = task
        task.add_done_callback(lambda t: self._finished(repo, t))

    def _finished(self, repo: CacheRepo, task: asyncio.Task[FillResult]) -> None:
        if self._inflight.get(repo.key) is task:
            del self._inflight[repo.key]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, FillError):
            log.error("fill of %s crashed", repo.url, exc_info=exc)

    @asynccontextmanager
    async def _observed(self, repo: CacheRepo, path: Path) -> AsyncIterator[None]:
        """Report one fill (or exact-object fetch) of ``repo`` to the observer."""
        started = time.monotonic()
        before = pack_bytes(path) if path.exists() else 0
        if self.observer is not None:
            self.observer.fill_started(repo)
        result, reason = "local_error", "crashed"
        try:
            yield
            result, reason = "ok", ""
        except FillError as e:
            result, reason = result_of(e.kind), e.reason
            raise
        finally:
            restored = self._restored.pop(repo.key, 0)  # not from the upstream
            grown = max(0, pack_bytes(repo.path) - before - restored) if result == "ok" else 0
            if self.observer is not None:
                self.observer.fill_finished(
                    repo, result, time.monotonic() - started, grown, reason
                )

    def _fetch_config(self, repo: CacheRepo, credential: Credential) -> list[tuple[str, str]]:
        return [
            ("http.lowSpeedLimit", str(LOW_SPEED_LIMIT)),
            ("http.lowSpeedTime", str(max(1, round(self.stall_timeout)))),
            *header_config(repo.url, credential),
        ]

    async def _fetch(self, git_dir: Path, args: Sequence[str], repo: CacheRepo,
                     credential: Credential, progress: OnProgress | None = None) -> None:
        try:
            res = await self.git.run(
                ["fetch", "--no-write-fetch-head", "--no-auto-maintenance",
                 "--no-recurse-submodules", "--no-show-forced-updates",
                 "--progress" if progress else "--quiet", *args],
                git_dir=git_dir,
                config=self._fetch_config(repo, credential),
                timeout=self.max_seconds,
                on_stderr=progress,
            )
        except GitTimeout as e:
            raise FillError(FailureKind.UPSTREAM, str(e)) from None
        except (OSError, ValueError) as e:
            raise FillError(FailureKind.LOCAL, f"cannot run git: {e}") from None
        if not res.ok:
            raise classify_failure(res)

    def _turn(self, repo: CacheRepo) -> AbstractAsyncContextManager[Any]:
        """The fleet-wide turn at filling ``repo``: waited for by a first fill, taken
        if free by an update (which then publishes); nothing without a fleet tier."""
        if self.fleet is None:
            return nullcontext()
        return self.fleet.turn(repo, wait=not self.store.exists(repo))

    async def _fill(self, repo: CacheRepo, credential: Credential, head: str | None,
                    progress: OnProgress | None = None) -> FillResult:
        started = time.monotonic()
        try:
            async with self._turn(repo), \
                    self.locks.writer(repo.key, timeout=self.max_seconds), \
                    self._observed(repo, repo.path):
                try:
                    return await self._fill_locked(repo, credential, head, started, progress)
                except OSError as e:
                    raise FillError(FailureKind.LOCAL, f"cache update failed: {e}") from e
        except LockTimeout as e:
            raise FillError(FailureKind.LOCAL, str(e)) from None

    async def _fill_locked(
        self, repo: CacheRepo, credential: Credential, head: str | None, started: float,
        progress: OnProgress | None = None,
    ) -> FillResult:
        if not self.store.exists(repo):
            return await self._create(repo, credential, head, started, progress)
        await asyncio.to_thread(clean_residue, repo.path)
        return await self._update(repo, repo.path, credential, head, started=started,
                                  progress=progress)

    async def _create(
        self, repo: CacheRepo, credential: Credential, head: str | None, started: float,
        progress: OnProgress | None,
    ) -> FillResult:
        """First fill: build the repo in tmp/ under a claim, rename it into place when whole.

        The claim is held from before the temporary repo exists until it was
        renamed or deleted, so recovery in any process sharing the cache dir
        deletes it only once this process is gone.
        """
        try:
            # Synchronous (a few syscalls): no cancellation can strand a held claim.
            target, claim = self.store.claim_temp(repo)
        except OSError as e:
            raise FillError(FailureKind.LOCAL, f"cannot create cache repo: {e}") from None
        try:
            try:
                await self.store.init_bare(target)
                if self.fleet is not None and await self.fleet.restore(
                        repo, target, deadline=started + self.max_seconds):
                    # from the shared store; the fetch below adds only what moved since
                    self._restored[repo.key] = await asyncio.to_thread(pack_bytes, target)
            except OSError as e:
                remove_tree(target)
                raise FillError(FailureKind.LOCAL, f"cannot create cache repo: {e}") from None
            return await self._update(repo, target, credential, head, started=started,
                                      progress=progress)
        finally:
            claim.release()

    async def _update(
        self, repo: CacheRepo, target: Path, credential: Credential, head: str | None, *,
        started: float, progress: OnProgress | None,
    ) -> FillResult:
        """Fetch into ``target`` (``repo.path``, or a new repo in tmp/ renamed there at the end)."""
        created = target != repo.path
        try:
            for dropped in range(MAX_CLASHES + 1):
                try:
                    await self._fetch(target, ["--atomic", "--prune", "--no-tags", repo.url,
                                               *REFSPECS], repo, credential, progress)
                    break
                except FillError as e:  # (the upstream has a ref this one's name clashes
                    if e.clash is None or dropped == MAX_CLASHES:  # with: it has not this)
                        raise
                    await self._drop_ref(target, e.clash, e)
            if head is None and created:
                head = await self.upstream_head(repo, credential)
            refs, current_head = await self.store.read_refs(target)
            if head is not None and head != current_head and (head in refs or not refs):
                res = await self.git.run(["symbolic-ref", "HEAD", head], git_dir=target)
                if res.ok:
                    current_head = head
            self.store.write_state(target, repo, refs, current_head)
            if created:
                target.rename(repo.path)
        except BaseException:
            # Leave nothing behind: a new repo disappears whole, an existing one
            # loses the temporary packs of the failed transfer (refs are untouched:
            # the fetch is --atomic).
            if created:
                remove_tree(target)
            else:
                clean_residue(target)
            raise
        return FillResult(created, len(refs), time.monotonic() - started)

    async def _drop_ref(self, git_dir: Path, ref: str, error: FillError) -> None:
        """Delete the cache's ``ref``, which clashed with a ref the upstream has (so
        it cannot have this one: a prune would drop it); ``error`` if that fails."""
        log.info("goblet: %s: dropping %s, whose name clashes with an upstream ref",
                 git_dir.name, ref)
        res = await self.git.run(["update-ref", "-d", ref], git_dir=git_dir)
        if not res.ok:
            raise error

    async def upstream_head(self, repo: CacheRepo, credential: Credential, *,
                            timeout: float | None = None) -> str | None:
        """Where upstream's HEAD points (``ls-remote --symref``); None if unknown.

        Asked with ``credential`` like a fill, within ``timeout`` seconds
        (default ``max_seconds``).
        """
        try:
            res = await self.git.run(["ls-remote", "--symref", repo.url, "HEAD"],
                                     config=self._fetch_config(repo, credential),
                                     timeout=self.max_seconds if timeout is None else timeout)
        except (GitTimeout, OSError, ValueError):
            return None
        for line in res.stdout.decode("utf-8", "replace").splitlines() if res.ok else ():
            target, _, name = line.removeprefix("ref: ").partition("\t")
            if line.startswith("ref: ") and name == "HEAD" and target.startswith("refs/"):
                return target
        return None

    async def fetch_oids(
        self, repo: CacheRepo, credential: Credential, oids: Sequence[str]
    ) -> None:
        """Fetch exact objects (e.g. a PR merge commit) into an existing repo.

        Raises FillError if upstream refuses or the repo does not exist yet, or if
        another such fetch of the repo is under way: one at a time per repo, none
        queued (each holds the repo's writer lock for an upstream round trip, and any
        client can ask for ids that do not exist: a queue of them would hold up the
        repo's fills).
        """
        wanted = [o for o in oids if OID_RE.fullmatch(o)]
        if not wanted:
            return
        if not self.store.exists(repo):
            raise FillError(FailureKind.LOCAL, "cache repo does not exist")
        if repo.key in self._by_id:
            raise FillError(FailureKind.LOCAL, "another fetch of objects by id is under way")
        self._by_id.add(repo.key)
        try:
            await self._fetch_oids(repo, credential, wanted)
        finally:
            self._by_id.discard(repo.key)

    async def _fetch_oids(self, repo: CacheRepo, credential: Credential,
                          wanted: list[str]) -> None:
        try:
            async with self.locks.writer(repo.key, timeout=self.max_seconds), \
                    self._observed(repo, repo.path):
                await asyncio.to_thread(clean_residue, repo.path)
                try:
                    await self._fetch(
                        repo.path, ["--no-tags", repo.url, *wanted], repo, credential
                    )
                finally:
                    clean_residue(repo.path)
        except LockTimeout as e:
            raise FillError(FailureKind.LOCAL, str(e)) from None
