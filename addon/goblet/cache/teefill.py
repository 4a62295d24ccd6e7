"""A cold clone's first fill, made from the very answer the upstream streams to the client.

Without it a cold clone is a fill (upstream → cache) and then a serve
(cache → client), one after the other: twice the wait, twice the bytes. With
it the client's own fetch goes to the upstream (with the client's own
credential, so the upstream decides as always) and its answer streams to the
client as it arrives, while ``feed`` copies the pack inside it (the side-band
1 payload, ``protocol/response.PackDemux``) into a file of a claimed
temporary repo. Once the answer is complete:

1. ``git index-pack --stdin --check-self-contained-and-connected`` (at low
   CPU priority, so the client's own index-pack goes first) stores and
   verifies the pack; the pack must hold every object its objects reach;
2. the branches and tags the upstream listed
   to this client in the ls-refs just before (the clone asked for all of
   them: see ``eligible``) are created in one ``update-ref`` transaction,
   HEAD follows the upstream's, the state file is written, and the repo is
   renamed into ``repos/`` — exactly what a first fill leaves;
3. the fill is reported like any other (metrics, maintenance scheduled).

Any failure — the client goes away, the upstream cuts the answer or sends an
error, index-pack refuses the pack, another fill got there first, the
process is killed (the temporary repo is claimed, recovery deletes it) — and
nothing is kept: the next request fills the usual way. How it failed is
told truthfully (``FailureKind``): the client's doing (``CLIENT``: it went
away, or read too slowly), the upstream's, or this host's.

The answer moves at the client's pace (the proxy reads the upstream no faster
than the client takes the bytes), so the copy is bounded (``overdue``): a
tee fill gives up the copy when it is not done after the fill's
``max_seconds``, or when the answer waits for a client that took less than
``LOW_SPEED_LIMIT`` bytes/s over the last ``stall_timeout`` seconds. Giving
up removes the temporary repo and releases the locks at once; the client's
answer keeps streaming, now a plain pass-through. Only an upstream that sends
nothing for ``stall_timeout`` seconds (the client waiting for nothing) ends
the client's connection too (``on_stall``), as its answer would never end.

A tee fill holds the repo's writer lock (and, with a fleet tier, the repo's
fleet-wide turn) from ``start`` to its end, so it is the only fill of the
repo across every process sharing the cache dir (and the fleet). Nothing
sharing the cache dir ever waits for a tee fill: while it runs, other
requests for the repo pass to the upstream (``decide.py``), here and in other
processes (whose ``start`` finds the lock taken). Other instances of a fleet
(``Busy.FLEET``) wait for its end and restore what it published, as for any
fill of the fleet's leader (``fleet/tier.py``), but no longer than
``goblet_upstream_timeout``: its turn is marked streaming, then they fill on
their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from goblet.auth.verdicts import RefView
from goblet.cache.fill import (
    LOW_SPEED_LIMIT,
    FailureKind,
    Filler,
    FillError,
    FillResult,
    result_of,
)
from goblet.cache.locks import LockTimeout
from goblet.cache.recovery import remove_tree
from goblet.cache.store import CacheRepo
from goblet.fleet.turns import Role
from goblet.git.runner import CANNOT_RUN, READ_CHUNK, kill_and_reap
from goblet.protocol.errors import ProtocolError
from goblet.protocol.request import FetchRequest
from goblet.protocol.response import PackDemux
from goblet.protocol.routes import RESULT_TYPE

log = logging.getLogger(__name__)

INCOMING = "goblet-incoming.pack"
# The client holds the answer back when the proxy keeps at least BACKLOG_BYTES for it at
# each of BOUND_SAMPLES samples SAMPLE_SECONDS apart: requests waiting for the fill then
# stop waiting (a fast client drains what the proxy holds in far less than a sample).
BACKLOG_BYTES, BOUND_SAMPLES, SAMPLE_SECONDS = 32 * 1024, 4, 0.5
DENIALS = (401, 403, 404)


def full_clone(req: FetchRequest, view: RefView | None) -> bool:
    """Whether ``req`` asks for what a first fill fetches: final (``done``), no
    ``have``, ``shallow``, ``deepen*`` or ``filter``, nothing the cache could not
    serve, and exactly every branch and tag of a ref list that listed them all."""
    if not req.done or req.haves or req.shallows or req.shaped or req.unservable:
        return False
    if view is None or not view.complete:
        return False
    tips = set(view.mirrored.values())
    return bool(tips) and set(req.wants) == tips


def eligible(req: FetchRequest, view: RefView | None, head: str | None) -> bool:
    """Whether a tee fill can take ``req``'s answer: a full clone in protocol v2 (whose
    answer ``PackDemux`` reads; v0/v1 answers without side-band are a raw pack), of a
    repo whose upstream HEAD symref (``head``) is known, so the copy's HEAD follows it
    (a repo made without it would keep ``git init``'s HEAD, maybe a branch the upstream
    does not have)."""
    return req.version == 2 and head is not None and full_clone(req, view)


def cut_by(client_gone: bool) -> FailureKind:
    """Whose doing an answer that broke off was: the client's if its connection was
    gone when the answer broke off (it went away), else the upstream's."""
    return FailureKind.CLIENT if client_gone else FailureKind.UPSTREAM


@dataclass(frozen=True, slots=True)
class Pace:
    """How a tee fill's answer moves, sampled at the end of an interval."""

    elapsed: float  # seconds since the tee fill started
    interval: float  # seconds since the previous sample
    moved: int  # bytes of the answer that passed in that interval
    idle: float  # seconds since the last byte of the answer passed
    backlog: int  # bytes of the answer the proxy holds for the client, not yet taken
    # bytes the client took in that interval (what passed, plus the backlog it drained);
    # None: as ``moved``
    taken: int | None = None


@dataclass(frozen=True, slots=True)
class Overdue:
    """Why a tee fill gives up its copy, and whether the client's connection ends too."""

    kind: FailureKind
    reason: str
    close_client: bool = False


def overdue(pace: Pace, *, window: float, max_seconds: float,
            min_rate: float = LOW_SPEED_LIMIT) -> Overdue | None:
    """Whether a tee fill gives up now (pure); None: it carries on.

    - Not complete after ``max_seconds``: given up, the client's doing if the answer
      waits for it (``backlog``), else the upstream's.
    - The answer waits for the client and the client took less than ``min_rate``
      bytes/s of it over the interval: given up, the client's doing (a slow reader).
      What it took counts the backlog it drained: the proxy reads the upstream in bursts
      once a client's backlog drains, so a steady slow reader may see no upstream bytes
      pass for a while.
    - Nothing waits for the client and nothing came for ``window`` seconds: the
      upstream stalled; given up, and the client's connection is closed too.

    Giving up ends the copy only: the client's answer streams on (but for a stall).
    """
    slow_client = pace.backlog > 0
    if pace.elapsed >= max_seconds:
        who = "the client reads it slowly" if slow_client else "the upstream sends it slowly"
        return Overdue(FailureKind.CLIENT if slow_client else FailureKind.UPSTREAM,
                       f"answer not complete after {max_seconds:.0f}s ({who})")
    taken = pace.moved if pace.taken is None else pace.taken
    if slow_client and taken < min_rate * pace.interval:
        return Overdue(FailureKind.CLIENT, f"the client took less than {min_rate:.0f} bytes/s "
                                           f"for {pace.interval:.0f}s")
    if not slow_client and pace.idle >= window:
        return Overdue(FailureKind.UPSTREAM, f"no data from the upstream for {window:.0f}s",
                       close_client=True)
    return None


class Busy(enum.Enum):
    """Why ``TeeFill.start`` made no tee fill."""

    LOCK = "lock"  # another fill holds the writer lock (in this process or another)
    FLEET = "fleet"  # another instance of the fleet holds the repo's turn


class TeeFill:
    """One tee fill (see the module docstring); ``task`` ends with the repo made, or a
    FillError. Made by ``start``, which takes the repo's writer lock first."""

    @classmethod
    async def start(cls, filler: Filler, repo: CacheRepo, view: RefView, head: str | None,
                    *, nice: int = 10) -> TeeFill | Busy:
        """A tee fill holding ``repo``'s writer lock until its task ends; at once, which
        other fill holds the repo if another does (``Busy``)."""
        held = contextlib.AsyncExitStack()
        try:
            await held.enter_async_context(filler.locks.writer(repo.key, timeout=0))
        except (LockTimeout, OSError):
            return Busy.LOCK
        if filler.fleet is not None:  # the fleet's turn too: one fill per repo fleet-wide
            turn = await held.enter_async_context(
                filler.fleet.turn(repo, wait=False, streaming=True))
            if turn.role is Role.BUSY:
                await held.aclose()
                return Busy.FLEET
        return cls(filler, repo, view, head, held, nice=nice)

    def __init__(self, filler: Filler, repo: CacheRepo, view: RefView, head: str | None,
                 held: contextlib.AsyncExitStack, *, nice: int = 10,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.filler = filler
        self._held = held
        self.repo = repo
        self.refs = view.mirrored
        self.head = head
        self.nice = nice
        self._clock = clock
        self._demux = PackDemux(2)
        self._file: BinaryIO | None = None
        self._target: Path | None = None
        self._failure: FillError | None = None  # why the copy failed, once it did
        self._ended = asyncio.Event()
        self._last_data = clock()
        self._moved = 0  # bytes of the answer since the last ``Pace`` sample
        self._backlog = 0  # the client's backlog at the last ``Pace`` sample
        self._started = clock()
        self._begun = asyncio.Event()
        # Called when the upstream stalls: the client's own request then fails too.
        self.on_stall: Callable[[], None] = lambda: None
        # Bytes of the answer the proxy holds for the client, not yet taken (0: unknown).
        self.client_backlog: Callable[[], int] = lambda: 0
        # Set once the client was seen holding the answer back (``BACKLOG_BYTES``): the
        # fill then goes at the client's pace, and nobody else should wait for it.
        self.client_bound = asyncio.Event()
        # Created at once, so it can be tracked as the repo's fill before ``begin``.
        self.task: asyncio.Task[FillResult] = asyncio.get_running_loop().create_task(
            self._complete(), name=f"goblet-tee-{repo.key[:12]}")

    async def begin(self) -> bool:
        """Claim and create the temporary repo; False (nothing left, the task fails) if
        that fails."""
        try:
            target, self._claim = self.filler.store.claim_temp(self.repo)
        except OSError as e:
            log.warning("no tee fill for %s: %s", self.repo.url, e)
            self._begun.set()
            return False
        try:
            await self.filler.store.init_bare(target)
            self._file = (target / INCOMING).open("wb")
        except OSError as e:
            log.warning("no tee fill for %s: %s", self.repo.url, e)
            remove_tree(target)
            self._claim.release()
            self._begun.set()
            return False
        self._target = target
        self._begun.set()
        return True

    @property
    def copying(self) -> bool:
        """Whether the copy still goes on (the answer has not ended, nothing failed)."""
        return not self._ended.is_set()

    def accepts(self, status: int, content_type: str, content_encoding: str | None) -> bool:
        """Whether an answer with these headers can be read (else the tee fill ends: a
        refusal of the client's credential is ``DENIED``, any other answer ``UPSTREAM``)."""
        if status == 200 and not content_encoding and \
                content_type.split(";", 1)[0].strip().lower() == RESULT_TYPE:
            return True
        kind = FailureKind.DENIED if status in DENIALS else FailureKind.UPSTREAM
        answer = f"{status} {content_type}".strip()
        if content_encoding:
            answer += f" ({content_encoding})"
        self.fail(kind, f"the upstream answered {answer}")
        return False

    def feed(self, data: bytes) -> bytes:
        """A response ``stream`` callable: copies the pack, returns ``data`` unchanged
        (also once the copy ended: the client's answer is never held up by it)."""
        if not data:
            return data  # the end of the answer: ``finish`` or ``cut`` says how it ended
        self._last_data = self._clock()
        self._moved += len(data)
        if self._file is not None and self.copying:
            try:
                pack = self._demux.feed(data)
                if pack:
                    self._file.write(pack)
            except ProtocolError as e:
                self.fail(FailureKind.UPSTREAM, f"cannot read the answer: {e}")
            except OSError as e:
                self.fail(FailureKind.LOCAL, f"cannot store the answer: {e}")
        return data

    def finish(self) -> None:
        """The answer arrived whole (as far as HTTP goes): store its pack, if the copy
        still goes on."""
        self._ended.set()

    def cut(self, reason: str, *, client_gone: bool) -> None:
        """The answer broke off: the client went away (``client_gone``: its connection
        was gone when it broke off), or the upstream's answer (or connection) broke."""
        self.fail(cut_by(client_gone), reason or "the answer did not complete")

    def fail(self, kind: FailureKind, reason: str) -> None:
        """End the copy now: nothing is kept and the locks are released (the task fails
        with ``kind`` and ``reason``). Only the first ending counts."""
        if self._ended.is_set():
            return
        self._failure = FillError(kind, reason)
        self._ended.set()

    def _pace(self, interval: float) -> Pace:
        now = self._clock()
        backlog = self.client_backlog()
        pace = Pace(now - self._started, interval, self._moved, now - self._last_data,
                    backlog, max(0, self._moved + self._backlog - backlog))
        self._moved, self._backlog = 0, backlog
        return pace

    async def _wait_for_end(self) -> None:
        """Wait for the answer's end, giving up the copy when it is ``overdue``."""
        window = max(1.0, self.filler.stall_timeout)
        while self.copying:
            left = self.filler.max_seconds - (self._clock() - self._started)
            interval = max(0.01, min(window, left))
            try:
                await asyncio.wait_for(self._ended.wait(), interval)
            except TimeoutError:
                verdict = overdue(self._pace(interval), window=window,
                                  max_seconds=self.filler.max_seconds)
                if verdict is not None:
                    self.fail(verdict.kind, verdict.reason)
                    if verdict.close_client:
                        self.on_stall()

    async def _watch_client(self) -> None:
        """Set ``client_bound`` once the client holds the answer back (see
        ``BACKLOG_BYTES``); sampled while the copy goes on."""
        held = 0
        while self.copying and not self.client_bound.is_set():
            await asyncio.sleep(SAMPLE_SECONDS)
            held = held + 1 if self.client_backlog() >= BACKLOG_BYTES else 0
            if held >= BOUND_SAMPLES:
                self.client_bound.set()

    async def _complete(self) -> FillResult:
        async with self._held:
            return await self._completed()

    async def _completed(self) -> FillResult:
        await self._begun.wait()
        if self._target is None or self._file is None:
            raise FillError(FailureKind.LOCAL, "cannot create the cache repo")
        target, observer = self._target, self.filler.observer
        result, reason = "local_error", "crashed"
        if observer is not None:
            observer.fill_started(self.repo)
        watcher = asyncio.get_running_loop().create_task(self._watch_client())
        try:
            await self._wait_for_end()
            watcher.cancel()
            self._file.close()
            ending = self._demux.close()
            if self._failure is not None:
                raise FillError(self._failure.kind, self._failure.reason)
            if not ending.complete:
                raise FillError(FailureKind.UPSTREAM, ending.reason)
            filled = await self._store(target)
            result, reason = "ok", ""
            return filled
        except FillError as e:
            result, reason = result_of(e.kind), e.reason
            raise
        finally:
            watcher.cancel()
            if not self._file.closed:
                self._file.close()
            if target.exists():
                remove_tree(target)
            self._claim.release()
            if observer is not None:
                grown = self._demux.pack_bytes if result == "ok" else 0
                observer.fill_finished(self.repo, result, self._clock() - self._started,
                                       grown, reason)

    async def _store(self, target: Path) -> FillResult:
        await self._index_pack(target)
        if self.filler.store.exists(self.repo):  # made before ``start`` took the lock
            raise FillError(FailureKind.LOCAL, "another fill made the repo first")
        await self._set_refs(target)
        refs, head = await self.filler.store.read_refs(target)
        if set(refs.items()) != set(self.refs.items()):
            raise FillError(FailureKind.LOCAL, "refs did not come out as listed")
        self.filler.store.write_state(target, self.repo, refs, head)
        target.rename(self.repo.path)
        return FillResult(True, len(refs), self._clock() - self._started)

    async def _index_pack(self, target: Path) -> None:
        """Store and check the received pack in ``target`` (reading it from disk)."""
        git = self.filler.git
        try:
            proc = await git.spawn(["index-pack", "--stdin",
                                    "--check-self-contained-and-connected", "--threads=1"],
                                   git_dir=target, nice=self.nice)
        except OSError as e:
            (target / INCOMING).unlink(missing_ok=True)
            raise FillError(FailureKind.LOCAL, f"index-pack could not run: {e}") from None
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        outputs = asyncio.gather(proc.stdout.read(), proc.stderr.read())
        try:
            with (target / INCOMING).open("rb") as pack:
                while chunk := await asyncio.to_thread(pack.read, READ_CHUNK):
                    proc.stdin.write(chunk)
                    await proc.stdin.drain()
            proc.stdin.close()
            _, err = await asyncio.wait_for(outputs, self.filler.max_seconds)
            status, said = await proc.wait(), err.decode("utf-8", "replace").strip()[-200:]
            if status in CANNOT_RUN:  # (git missing or not executable: not the pack's fault)
                raise FillError(FailureKind.LOCAL, f"index-pack could not run: {said}")
            if status != 0:
                raise FillError(FailureKind.UPSTREAM, f"index-pack refused the pack: {said}")
        except (OSError, TimeoutError) as e:
            raise FillError(FailureKind.LOCAL, f"index-pack failed: {e}") from None
        finally:
            await kill_and_reap(proc)
            outputs.cancel()
            (target / INCOMING).unlink(missing_ok=True)

    async def _set_refs(self, target: Path) -> None:
        git = self.filler.git
        lines = "".join(f"create {name} {oid}\n" for name, oid in sorted(self.refs.items()))
        res = await git.run(["update-ref", "--stdin"], git_dir=target,
                            stdin=("start\n" + lines + "commit\n").encode())
        if not res.ok:
            raise FillError(FailureKind.LOCAL, f"cannot set refs: {res.stderr_line()}")
        if self.head and self.head in self.refs:
            res = await git.run(["symbolic-ref", "HEAD", self.head], git_dir=target)
            if not res.ok:
                raise FillError(FailureKind.LOCAL, f"cannot set HEAD: {res.stderr_line()}")
