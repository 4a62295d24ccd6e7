"""The loopback HTTP backend that streams ``upload-pack`` output.

mitmproxy cannot stream a response it makes itself, only one it receives
from a server. So cache hits are rewritten to this backend, which runs in the
addon's event loop on 127.0.0.1 with an ephemeral port, finds the ServePlan
by the request's token, and streams ``git upload-pack --stateless-rpc`` with
chunked encoding. HTTP framing is h11's (sans-IO); this module only moves
bytes and manages the child.

End-of-stream contract: the terminating chunk is sent only when upload-pack
exited 0. Otherwise the connection is aborted mid-body, so neither mitmproxy
nor git can mistake a cut pack for a complete one. If upload-pack fails
before its first byte, the client gets an ERR pkt-line instead. A client that
goes away gets its upload-pack killed and reaped.

Pack-cache followers never wait unboundedly: when the production they follow
fails, cannot be read, or does not grow for ``follow_timeout`` seconds, a
follower that sent nothing yet runs its own upload-pack; one that already
sent bytes is aborted. A production is finished on every path of its run,
failed as soon as its answer can no longer be stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import h11

from goblet.git.runner import READ_CHUNK, GitRunner, kill_and_reap
from goblet.protocol.pktline import error_packet
from goblet.protocol.refs import HeadSymrefDropper
from goblet.protocol.sideband import NoticeInserter
from goblet.serve.files import FilePlan, send_file
from goblet.serve.h11loop import incoming_requests
from goblet.serve.packcache import PackCache, Production, Role
from goblet.serve.plans import TOKEN_HEADER, PlanRegistry, ReplyPlan, ServePlan
from goblet.serve.tagview import TagViews

# upload-pack's settings for every cache answer, whatever the repo's config says. A
# sparse filter reads a blob (or a file on any ref) by name: never applied by the cache
# (``protocol/request.py`` sends such requests upstream already; this holds even then).
SERVE_CONFIG = (("uploadpackfilter.sparse:oid.allow", "false"),)

log = logging.getLogger(__name__)

_STDERR_KEEP = 8192
FOLLOW_TIMEOUT = 60.0


class ServeBackend:
    """An h11 server on 127.0.0.1 that runs ServePlans."""

    def __init__(self, git: GitRunner, plans: PlanRegistry,
                 packcache: PackCache | None = None, *,
                 follow_timeout: float = FOLLOW_TIMEOUT, views_dir: Path | None = None) -> None:
        """``follow_timeout``: seconds a pack-cache follower waits for the answer to grow;
        ``views_dir``: where plans with ``tags`` get their throwaway tag views (the cache
        dir's ``tmp/``)."""
        self.git = git
        self.plans = plans
        self.packcache = packcache
        self.follow_timeout = follow_timeout
        self.views = TagViews(views_dir) if views_dir is not None else None
        self.port = 0
        self._server: asyncio.Server | None = None
        self._children: set[asyncio.subprocess.Process] = set()
        self._reading: dict[str, int] = {}

    def reading(self, repo_key: str) -> bool:
        """Whether an answer from the repo ``repo_key`` is being served right now, or a
        plan to serve one waits for its turn."""
        return self._reading.get(repo_key, 0) > 0 or self.plans.pending(repo_key)

    @property
    def running(self) -> bool:
        """Whether the listening socket is open."""
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        """Listen on 127.0.0.1 with an ephemeral port (``self.port``)."""
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, limit=READ_CHUNK
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and kill any upload-pack still running."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for proc in list(self._children):
            await kill_and_reap(proc)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            async with contextlib.aclosing(
                incoming_requests(conn, reader, chunk=READ_CHUNK)
            ) as requests:
                async for request in requests:
                    plan = self.plans.take(_header(request, TOKEN_HEADER.encode()))
                    if plan is None:
                        await _send_simple(conn, writer, 403, b"goblet: unknown serve token\n")
                    elif isinstance(plan, ReplyPlan):
                        await _send_reply(conn, writer, plan)
                    elif isinstance(plan, FilePlan):
                        if not await send_file(conn, writer, plan, request.method):
                            break
                    elif not await self._serve(conn, writer, plan):
                        break
        except (ConnectionError, h11.ProtocolError) as e:
            log.debug("backend connection ended: %s", e)
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def _serve(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, plan: ServePlan
    ) -> bool:
        """Answer ``plan`` (pack cache or upload-pack); True if the connection may be reused."""
        self._reading[plan.repo_key] = self._reading.get(plan.repo_key, 0) + 1
        try:
            role, production = (self.packcache.begin(plan.cache_key) if self.packcache
                                else (Role.BYPASS, None))
            plan.stats.cache_role = role.value
            if role is Role.HIT:
                assert self.packcache is not None
                replayed = await _replay(conn, writer, plan,
                                         self.packcache.answer_path(plan.cache_key or ""))
                if replayed is not None:
                    return replayed
                plan.stats.cache_role = Role.BYPASS.value  # trimmed meanwhile: generate
            if role is Role.FOLLOW:
                assert production is not None
                followed = await _follow(conn, writer, plan, production, self.follow_timeout)
                if followed is not None:
                    return followed
                plan.stats.cache_role = Role.BYPASS.value  # the production let us down
                production = None
            return await self._run(conn, writer, plan, production)
        finally:
            self._reading[plan.repo_key] -= 1
            if not self._reading[plan.repo_key]:
                del self._reading[plan.repo_key]

    async def _run(self, conn: h11.Connection, writer: asyncio.StreamWriter, plan: ServePlan,
                   production: Production | None) -> bool:
        """Run upload-pack for ``plan``, storing its answer into ``production`` if given.

        The production is finished however this ends: stored only if the
        answer was sent completely, failed otherwise.
        """
        if production is None:
            return await self._upload_pack(conn, writer, plan, None)
        assert self.packcache is not None
        tee = _Tee(self.packcache, production)
        try:
            await tee.open()
            return await self._upload_pack(conn, writer, plan, tee)
        finally:
            await tee.finish(plan.stats.complete)

    async def _upload_pack(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                           plan: ServePlan, tee: _Tee | None) -> bool:
        """Run upload-pack for ``plan``: in the repo, or with ``plan.tags`` in a tag view
        of it that lives as long as this run. When no view can be made, a request that
        may do without following tags (``plan.untagged``) runs in the repo without."""
        if plan.tags is None:
            return await self._upload_pack_in(conn, writer, plan, tee, repo_dir=plan.repo_dir,
                                              body=plan.body)
        async with contextlib.AsyncExitStack() as stack:
            try:
                if self.views is None:
                    raise OSError("no directory for tag views")
                view = await stack.enter_async_context(
                    self.views.using(plan.repo_dir, plan.tags))
            except OSError as e:
                why = f"cannot make a tag view: {e.strerror or e}"
                log.warning("%s: %s", plan.label, why)
                if plan.untagged is not None:  # (another answer: not stored under this key)
                    if tee is not None:
                        await tee.finish(False)
                    return await self._upload_pack_in(conn, writer, plan, None,
                                                      repo_dir=plan.repo_dir,
                                                      body=plan.untagged)
                plan.stats.error = why
                await _send_git_error(conn, writer, plan, "goblet: cache unavailable, retry")
                return True
            return await self._upload_pack_in(conn, writer, plan, tee, repo_dir=view,
                                              body=plan.body)

    async def _upload_pack_in(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                              plan: ServePlan, tee: _Tee | None, *, repo_dir: Path,
                              body: bytes) -> bool:
        stats = plan.stats
        extra = {"GIT_PROTOCOL": plan.git_protocol} if plan.git_protocol else None
        args = ["upload-pack", "--stateless-rpc"]
        if plan.advertise:
            args.append("--advertise-refs")
        try:
            proc = await self.git.spawn(
                [*args, str(repo_dir)], extra_env=extra,
                config=[*SERVE_CONFIG, *(("uploadpack.hideRefs", ref) for ref in plan.hidden_refs)])
        except OSError as e:
            stats.error = f"cannot start upload-pack: {e.strerror}"
            await _send_git_error(conn, writer, plan, "goblet: cache unavailable, retry")
            return True
        self._children.add(proc)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        feeder = asyncio.create_task(_feed(proc.stdin, body))
        stderr_task = asyncio.create_task(_tail(proc.stderr))
        try:
            chunk = await proc.stdout.read(READ_CHUNK)
            if not chunk:
                rc = await proc.wait()
                stats.returncode = rc
                stats.error = (await stderr_task).decode("utf-8", "replace").strip()[-300:]
                log.warning("upload-pack for %s produced nothing (status %s): %s",
                            plan.label, rc, stats.error)
                await _send_git_error(
                    conn, writer, plan, "goblet: the cache could not answer, retry"
                )
                return True
            await _stream(conn, writer, proc.stdout, plan, chunk, tee=tee)
            rc = await proc.wait()
            stats.returncode = rc
            if rc != 0:
                stats.error = (await stderr_task).decode("utf-8", "replace").strip()[-300:]
                log.warning("upload-pack for %s failed mid-stream (status %d): %s",
                            plan.label, rc, stats.error)
                writer.transport.abort()
                return False
            return await _end(conn, writer, plan)
        except (ConnectionError, OSError) as e:
            stats.error = f"client went away: {e.__class__.__name__}"
            log.info("client of %s went away after %d bytes", plan.label, stats.bytes_sent)
            writer.transport.abort()
            return False
        finally:
            await kill_and_reap(proc)
            self._children.discard(proc)
            feeder.cancel()
            stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await feeder
            with contextlib.suppress(asyncio.CancelledError):
                await stderr_task


class _Tee:
    """Copies an answer into a pack-cache production while it is being sent.

    Contract: ``finish`` ends the production (idempotent). When the answer
    can no longer be stored — its file cannot be opened or written — the
    production is failed at once, so its followers need not wait for this
    run to end; the run itself goes on for its own client.
    """

    def __init__(self, packcache: PackCache, production: Production) -> None:
        self.packcache = packcache
        self.production = production
        self.file: BinaryIO | None = None
        self.size = 0

    async def open(self) -> None:
        """Open the production's file; on failure fail the production."""
        try:
            self.file = self.packcache.open_production(self.production)
        except OSError as e:
            log.warning("pack cache unavailable, not storing this answer: %s", e)
            await self.packcache.finish(self.production, False)

    async def write(self, data: bytes) -> None:
        """Append ``data`` and wake the followers; on failure fail the production."""
        if self.file is None:
            return
        try:
            await asyncio.to_thread(self.file.write, data)
            await asyncio.to_thread(self.file.flush)
        except OSError as e:
            log.warning("pack cache write failed, not storing this answer: %s", e)
            self._close()
            await self.packcache.finish(self.production, False)
            return
        self.size += len(data)
        await self.packcache.grew(self.production, self.size)

    async def finish(self, ok: bool) -> None:
        """End the production: stored if ``ok`` and every byte reached the file."""
        stored = ok and self.file is not None
        self._close()
        await self.packcache.finish(self.production, stored)

    def _close(self) -> None:
        if self.file is None:
            return
        try:
            self.file.close()
        except OSError as e:  # a failed final flush: the answer is not stored
            log.warning("pack cache write failed, not storing this answer: %s", e)
        self.file = None


def _head(conn: h11.Connection, writer: asyncio.StreamWriter, plan: ServePlan) -> None:
    writer.write(conn.send(h11.Response(
        status_code=200,
        headers=[(b"Content-Type", plan.content_type.encode()),
                 (b"Cache-Control", b"no-cache"), (b"Transfer-Encoding", b"chunked")],
    )) or b"")


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, plan: ServePlan,
                data: bytes) -> None:
    writer.write(conn.send(h11.Data(data=data)) or b"")
    plan.stats.bytes_sent += len(data)
    await writer.drain()


async def _end(conn: h11.Connection, writer: asyncio.StreamWriter, plan: ServePlan) -> bool:
    plan.stats.complete = True
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()
    return True


async def _replay(conn: h11.Connection, writer: asyncio.StreamWriter, plan: ServePlan,
                  path: Path) -> bool | None:
    """Stream a stored answer; None if it vanished before it could be opened."""
    try:
        f = path.open("rb")
    except OSError:
        return None
    notice = _notice_inserter(plan)
    try:
        _head(conn, writer, plan)
        while chunk := await asyncio.to_thread(f.read, READ_CHUNK):
            await _send_noticed(conn, writer, plan, notice, chunk)
        await _send_noticed(conn, writer, plan, notice, None)
        return await _end(conn, writer, plan)
    except (ConnectionError, OSError) as e:
        plan.stats.error = f"client went away: {e.__class__.__name__}"
        writer.transport.abort()
        return False
    finally:
        f.close()


def _more_than(production: Production, sent: int) -> Callable[[], bool]:
    """Predicate: the production grew past ``sent`` bytes, or ended."""
    return lambda: production.size > sent or production.done


async def _progress(production: Production, sent: int,
                    timeout: float) -> tuple[int, bool, bool] | None:
    """(size, done, failed) once the production grew past ``sent`` or ended.

    None if neither happened within ``timeout`` seconds.
    """
    try:
        async with asyncio.timeout(timeout), production.grown:
            await production.grown.wait_for(_more_than(production, sent))
    except TimeoutError:
        return None
    return production.size, production.done, production.failed


async def _follow(conn: h11.Connection, writer: asyncio.StreamWriter, plan: ServePlan,
                  production: Production, timeout: float) -> bool | None:
    """Stream an answer another request is producing, as it grows.

    Returns None, having sent nothing, if the production fails, stalls for
    ``timeout`` seconds or cannot be read before its first byte was sent:
    the caller then answers by itself. Once bytes went out, the same aborts
    the connection (never a clean end of a partial answer). Otherwise True
    if the connection may be reused, False if the client went away.
    """
    try:
        f = production.tmp.open("rb")
    except OSError as e:
        log.info("cannot follow answer %s (%s); running upload-pack", production.key[:12], e)
        return None
    sent = 0
    notice = _notice_inserter(plan)
    try:
        while True:
            progress = await _progress(production, sent, timeout)
            if progress is None or progress[2]:
                return _follow_failed(writer, plan, production, sent, stalled=progress is None)
            available, done, _ = progress
            while sent < available:
                chunk = await asyncio.to_thread(f.read, min(READ_CHUNK, available - sent))
                if not chunk:
                    break
                if not sent:
                    _head(conn, writer, plan)
                sent += len(chunk)
                await _send_noticed(conn, writer, plan, notice, chunk)
            if done and sent >= available:
                if not sent:
                    _head(conn, writer, plan)
                await _send_noticed(conn, writer, plan, notice, None)
                return await _end(conn, writer, plan)
    except (ConnectionError, OSError) as e:
        if not sent and not isinstance(e, ConnectionError):
            log.info("cannot follow answer %s (%s); running upload-pack", production.key[:12], e)
            return None
        plan.stats.error = f"client went away: {e.__class__.__name__}"
        writer.transport.abort()
        return False
    finally:
        f.close()


def _follow_failed(writer: asyncio.StreamWriter, plan: ServePlan, production: Production,
                   sent: int, *, stalled: bool) -> bool | None:
    """A followed production failed or stalled: fall back (None) or abort (False)."""
    what = "stalled" if stalled else "failed"
    if not sent:
        log.info("answer %s %s before its first byte; running upload-pack",
                 production.key[:12], what)
        return None
    plan.stats.error = f"the answer being shared {what}"
    writer.transport.abort()  # never a clean end of a partial answer
    return False


def _notice_inserter(plan: ServePlan) -> NoticeInserter | None:
    """The inserter of ``plan``'s notice into a stored answer being replayed or followed
    (stored answers never hold one: the producer stores what upload-pack wrote)."""
    return NoticeInserter(plan.notice) if plan.notice else None


async def _send_noticed(conn: h11.Connection, writer: asyncio.StreamWriter, plan: ServePlan,
                        notice: NoticeInserter | None, chunk: bytes | None) -> None:
    """Send ``chunk`` with the notice inserted; None: the answer ended, send what is held."""
    if notice is not None:
        chunk = notice.close() if chunk is None else notice.feed(chunk)
    if chunk:
        await _send(conn, writer, plan, chunk)


async def _stream(conn: h11.Connection, writer: asyncio.StreamWriter,
                  stdout: asyncio.StreamReader, plan: ServePlan, first: bytes, *,
                  tee: _Tee | None = None) -> None:
    """Send the 200 head, then ``plan.prefix``, ``first`` and the rest of ``stdout``."""
    inserter: NoticeInserter | HeadSymrefDropper | None = None
    if plan.notice:
        inserter = NoticeInserter(plan.notice)
    elif plan.drop_head_symref:
        inserter = HeadSymrefDropper()
    _head(conn, writer, plan)
    chunk = plan.prefix + first
    while chunk:
        if tee is not None:
            await tee.write(chunk)
        if inserter is not None:
            chunk = inserter.feed(chunk)
        if chunk:
            await _send(conn, writer, plan, chunk)
        chunk = await stdout.read(READ_CHUNK)
    if inserter is not None and (rest := inserter.close()):
        await _send(conn, writer, plan, rest)


def _header(req: h11.Request, name: bytes) -> str | None:
    lname = name.lower()
    for key, value in req.headers:
        if key.lower() == lname:
            return value.decode("latin-1")
    return None


async def _feed(stdin: asyncio.StreamWriter, body: bytes) -> None:
    try:
        stdin.write(body)
        await stdin.drain()
    except (ConnectionError, OSError):
        return
    finally:
        stdin.close()


async def _tail(stream: asyncio.StreamReader) -> bytes:
    kept = b""
    while chunk := await stream.read(READ_CHUNK):
        kept = (kept + chunk)[-_STDERR_KEEP:]
    return kept


async def _send_simple(
    conn: h11.Connection, writer: asyncio.StreamWriter, status: int, body: bytes
) -> None:
    writer.write(conn.send(h11.Response(
        status_code=status,
        headers=[(b"Content-Type", b"text/plain"), (b"Content-Length", str(len(body)).encode())],
    )) or b"")
    writer.write(conn.send(h11.Data(data=body)) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()


async def _send_reply(conn: h11.Connection, writer: asyncio.StreamWriter,
                      plan: ReplyPlan) -> None:
    writer.write(conn.send(h11.Response(status_code=plan.status, headers=[
        *plan.headers, (b"Content-Length", str(len(plan.body)).encode())])) or b"")
    writer.write(conn.send(h11.Data(data=plan.body)) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()
    plan.stats.bytes_sent, plan.stats.complete = len(plan.body), True


async def _send_git_error(
    conn: h11.Connection, writer: asyncio.StreamWriter, plan: ServePlan, msg: str
) -> None:
    body = error_packet(msg)
    writer.write(conn.send(h11.Response(
        status_code=200,
        headers=[(b"Content-Type", plan.content_type.encode()),
                 (b"Content-Length", str(len(body)).encode())],
    )) or b"")
    writer.write(conn.send(h11.Data(data=body)) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()
