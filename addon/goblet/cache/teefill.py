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
nothing is kept: the next request fills the usual way. A tee fill holds the
repo's writer lock (and, with a fleet tier, the repo's fleet-wide turn) from
``start`` to its end, so it is the only fill of the repo across every process
sharing the cache dir (and the fleet): while it runs, requests
here wait for it as for any fill, and other processes (whose ``start`` finds
the lock taken) fill the usual way, which waits for the lock and then finds
the repo made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from goblet.auth.verdicts import RefView
from goblet.cache.fill import FailureKind, Filler, FillError, FillResult
from goblet.cache.locks import LockTimeout
from goblet.cache.recovery import remove_tree
from goblet.cache.store import CacheRepo
from goblet.fleet.turns import Role
from goblet.git.runner import READ_CHUNK, kill_and_reap
from goblet.protocol.errors import ProtocolError
from goblet.protocol.request import FetchRequest
from goblet.protocol.response import PackDemux
from goblet.protocol.routes import RESULT_TYPE

log = logging.getLogger(__name__)

INCOMING = "goblet-incoming.pack"


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


def eligible(req: FetchRequest, view: RefView | None) -> bool:
    """Whether a tee fill can take ``req``'s answer: a full clone in protocol v2 (whose
    answer ``PackDemux`` reads; v0/v1 answers without side-band are a raw pack)."""
    return req.version == 2 and full_clone(req, view)


class TeeFill:
    """One tee fill (see the module docstring); ``task`` ends with the repo made, or a
    FillError. Made by ``start``, which takes the repo's writer lock first."""

    @classmethod
    async def start(cls, filler: Filler, repo: CacheRepo, view: RefView, head: str | None,
                    *, nice: int = 10) -> TeeFill | None:
        """A tee fill holding ``repo``'s writer lock until its task ends; None at once if
        another fill (here or in another process) holds the lock."""
        held = contextlib.AsyncExitStack()
        try:
            await held.enter_async_context(filler.locks.writer(repo.key, timeout=0))
        except (LockTimeout, OSError):
            return None
        if filler.fleet is not None:  # the fleet's turn too: one fill per repo fleet-wide
            turn = await held.enter_async_context(filler.fleet.turn(repo, wait=False))
            if turn.role is Role.BUSY:
                await held.aclose()
                return None
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
        self._failure = ""
        self._ended = asyncio.Event()
        self._ok = False
        self._last_data = clock()
        self._started = clock()
        self._begun = asyncio.Event()
        # Called when the upstream stalls: the client's own request then fails too.
        self.on_stall: Callable[[], None] = lambda: None
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

    def accepts(self, status: int, content_type: str, content_encoding: str | None) -> bool:
        """Whether an answer with these headers can be read (else the tee fill ends)."""
        if status == 200 and not content_encoding and \
                content_type.split(";", 1)[0].strip().lower() == RESULT_TYPE:
            return True
        self.finish(False, f"the upstream answered {status} {content_type}".strip())
        return False

    def feed(self, data: bytes) -> bytes:
        """A response ``stream`` callable: copies the pack, returns ``data`` unchanged."""
        if not data:
            return data  # the end of the answer: ``finish`` says how it ended
        self._last_data = self._clock()
        if self._file is not None and not self._failure:
            try:
                pack = self._demux.feed(data)
                if pack:
                    self._file.write(pack)
            except (ProtocolError, OSError) as e:
                self._failure = f"cannot store the answer: {e}"
        return data

    def finish(self, ok: bool, reason: str = "") -> None:
        """The answer ended: whole (``ok``) or not (``reason``)."""
        if not ok and not self._failure:
            self._failure = reason or "the answer did not complete"
        self._ok = ok
        self._ended.set()

    async def _wait_for_end(self) -> None:
        stall = max(1.0, self.filler.stall_timeout)
        while not self._ended.is_set():
            try:
                await asyncio.wait_for(self._ended.wait(), stall)
            except TimeoutError:
                if self._clock() - self._last_data >= stall:
                    self.finish(False, f"no data from the upstream for {stall:.0f}s")
                    self.on_stall()

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
        try:
            await self._wait_for_end()
            self._file.close()
            ending = self._demux.close()
            if not self._ok or self._failure or not ending.complete:
                result = "upstream_error"
                raise FillError(FailureKind.UPSTREAM, self._failure or ending.reason)
            filled = await self._store(target)
            result, reason = "ok", ""
            return filled
        except FillError as e:
            reason = e.reason
            if e.kind is FailureKind.LOCAL:
                result = "local_error"
            raise
        finally:
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
        proc = await git.spawn(["index-pack", "--stdin", "--check-self-contained-and-connected",
                                "--threads=1"], git_dir=target, nice=self.nice)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        outputs = asyncio.gather(proc.stdout.read(), proc.stderr.read())
        try:
            with (target / INCOMING).open("rb") as pack:
                while chunk := await asyncio.to_thread(pack.read, READ_CHUNK):
                    proc.stdin.write(chunk)
                    await proc.stdin.drain()
            proc.stdin.close()
            _, err = await asyncio.wait_for(outputs, self.filler.max_seconds)
            if await proc.wait() != 0:
                raise FillError(FailureKind.UPSTREAM, "index-pack refused the pack: "
                                + err.decode("utf-8", "replace").strip()[-200:])
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
