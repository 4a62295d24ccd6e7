"""The loopback HTTP backend that streams ``upload-pack`` output (DESIGN §3).

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import h11

from goblet.cache.gitrun import READ_CHUNK, GitRunner, kill_and_reap
from goblet.protocol.pktline import error_packet
from goblet.protocol.sideband import NoticeInserter
from goblet.serve.packcache import PackCache, Production, Role
from goblet.serve.plans import TOKEN_HEADER, PlanRegistry, ServePlan

log = logging.getLogger(__name__)

_STDERR_KEEP = 8192


class ServeBackend:
    """An h11 server on 127.0.0.1 that runs ServePlans."""

    def __init__(self, git: GitRunner, plans: PlanRegistry,
                 packcache: PackCache | None = None) -> None:
        self.git = git
        self.plans = plans
        self.packcache = packcache
        self.port = 0
        self._server: asyncio.Server | None = None
        self._children: set[asyncio.subprocess.Process] = set()
        self._reading: dict[str, int] = {}

    def reading(self, repo_key: str) -> bool:
        """Whether an answer from the repo ``repo_key`` is being served right now."""
        return self._reading.get(repo_key, 0) > 0

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
            while True:
                event = await self._next_event(conn, reader)
                if not isinstance(event, h11.Request):
                    break
                token = _header(event, TOKEN_HEADER.encode())
                while not isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    event = await self._next_event(conn, reader)
                if isinstance(event, h11.ConnectionClosed):
                    break
                plan = self.plans.take(token)
                if plan is None:
                    await _send_simple(conn, writer, 403, b"goblet: unknown serve token\n")
                    keep = True
                else:
                    keep = await self._serve(conn, writer, plan)
                if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError) as e:
            log.debug("backend connection ended: %s", e)
        finally:
            if not writer.transport.is_closing():
                writer.close()

    @staticmethod
    async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await reader.read(READ_CHUNK)
            conn.receive_data(data)

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
                return await _follow(conn, writer, plan, production)
            return await self._run(conn, writer, plan, production)
        finally:
            self._reading[plan.repo_key] -= 1
            if not self._reading[plan.repo_key]:
                del self._reading[plan.repo_key]

    async def _run(self, conn: h11.Connection, writer: asyncio.StreamWriter, plan: ServePlan,
                   production: Production | None) -> bool:
        """Run upload-pack for ``plan``, storing its answer into ``production`` if given."""
        tee = _Tee(self.packcache, production) if production is not None else None
        try:
            return await self._upload_pack(conn, writer, plan, tee)
        finally:
            if tee is not None:
                await tee.finish(plan.stats.complete)

    async def _upload_pack(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                           plan: ServePlan, tee: _Tee | None) -> bool:
        stats = plan.stats
        extra = {"GIT_PROTOCOL": plan.git_protocol} if plan.git_protocol else None
        args = ["upload-pack", "--stateless-rpc"]
        if plan.advertise:
            args.append("--advertise-refs")
        try:
            proc = await self.git.spawn(
                [*args, str(plan.repo_dir)], extra_env=extra,
                config=[("uploadpack.hideRefs", ref) for ref in plan.hidden_refs])
        except OSError as e:
            stats.error = f"cannot start upload-pack: {e.strerror}"
            await _send_git_error(conn, writer, plan, "goblet: cache unavailable, retry")
            return True
        self._children.add(proc)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        feeder = asyncio.create_task(_feed(proc.stdin, plan.body))
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
    """Copies an answer into a pack-cache production while it is being sent."""

    def __init__(self, packcache: PackCache | None, production: Production) -> None:
        self.packcache = packcache
        self.production = production
        self.file: BinaryIO | None = production.tmp.open("r+b")
        self.size = 0

    async def write(self, data: bytes) -> None:
        if self.file is None or self.packcache is None:
            return
        try:
            await asyncio.to_thread(self.file.write, data)
            await asyncio.to_thread(self.file.flush)
        except OSError as e:
            log.warning("pack cache write failed, not storing this answer: %s", e)
            self.file.close()
            self.file = None
            return
        self.size += len(data)
        await self.packcache.grew(self.production, self.size)

    async def finish(self, ok: bool) -> None:
        stored = ok and self.file is not None
        if self.file is not None:
            self.file.close()
        if self.packcache is not None:
            await self.packcache.finish(self.production, stored)


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
    try:
        _head(conn, writer, plan)
        while chunk := await asyncio.to_thread(f.read, READ_CHUNK):
            await _send(conn, writer, plan, chunk)
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


async def _follow(conn: h11.Connection, writer: asyncio.StreamWriter, plan: ServePlan,
                  production: Production) -> bool:
    """Stream an answer another request is producing, as it grows."""
    try:
        f = production.tmp.open("rb")
    except OSError:
        writer.transport.abort()
        return False
    sent = 0
    try:
        _head(conn, writer, plan)
        while True:
            async with production.grown:
                await production.grown.wait_for(_more_than(production, sent))
                available, done, failed = production.size, production.done, production.failed
            if failed:
                plan.stats.error = "the answer being shared failed"
                writer.transport.abort()  # never a clean end of a partial answer
                return False
            while sent < available:
                chunk = await asyncio.to_thread(f.read, min(READ_CHUNK, available - sent))
                if not chunk:
                    break
                sent += len(chunk)
                await _send(conn, writer, plan, chunk)
            if done and sent >= available:
                return await _end(conn, writer, plan)
    except (ConnectionError, OSError) as e:
        plan.stats.error = f"client went away: {e.__class__.__name__}"
        writer.transport.abort()
        return False
    finally:
        f.close()


async def _stream(conn: h11.Connection, writer: asyncio.StreamWriter,
                  stdout: asyncio.StreamReader, plan: ServePlan, first: bytes, *,
                  tee: _Tee | None = None) -> None:
    """Send the 200 head, then ``plan.prefix``, ``first`` and the rest of ``stdout``."""
    inserter = NoticeInserter(plan.notice) if plan.notice else None
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
