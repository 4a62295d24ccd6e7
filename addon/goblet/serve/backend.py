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

import h11

from goblet.cache.gitrun import READ_CHUNK, GitRunner, kill_and_reap
from goblet.protocol.pktline import error_packet
from goblet.protocol.sideband import NoticeInserter
from goblet.serve.plans import TOKEN_HEADER, PlanRegistry, ServePlan

log = logging.getLogger(__name__)

_STDERR_KEEP = 8192


class ServeBackend:
    """An h11 server on 127.0.0.1 that runs ServePlans."""

    def __init__(self, git: GitRunner, plans: PlanRegistry) -> None:
        self.git = git
        self.plans = plans
        self.port = 0
        self._server: asyncio.Server | None = None
        self._children: set[asyncio.subprocess.Process] = set()

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
        """Run upload-pack for ``plan``; True if the connection may be reused."""
        stats = plan.stats
        extra = {"GIT_PROTOCOL": plan.git_protocol} if plan.git_protocol else None
        args = ["upload-pack", "--stateless-rpc"]
        if plan.advertise:
            args.append("--advertise-refs")
        try:
            proc = await self.git.spawn([*args, str(plan.repo_dir)], extra_env=extra)
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
            await _stream(conn, writer, proc.stdout, plan, chunk)
            rc = await proc.wait()
            stats.returncode = rc
            if rc != 0:
                stats.error = (await stderr_task).decode("utf-8", "replace").strip()[-300:]
                log.warning("upload-pack for %s failed mid-stream (status %d): %s",
                            plan.label, rc, stats.error)
                writer.transport.abort()
                return False
            stats.complete = True
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            return True
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


async def _stream(conn: h11.Connection, writer: asyncio.StreamWriter,
                  stdout: asyncio.StreamReader, plan: ServePlan, first: bytes) -> None:
    """Send the 200 head, then ``plan.prefix``, ``first`` and the rest of ``stdout``."""
    stats = plan.stats
    inserter = NoticeInserter(plan.notice) if plan.notice else None
    writer.write(conn.send(h11.Response(
        status_code=200,
        headers=[(b"Content-Type", plan.content_type.encode()),
                 (b"Cache-Control", b"no-cache"), (b"Transfer-Encoding", b"chunked")],
    )) or b"")
    chunk = plan.prefix + first
    while chunk:
        if inserter is not None:
            chunk = inserter.feed(chunk)
        if chunk:
            writer.write(conn.send(h11.Data(data=chunk)) or b"")
            stats.bytes_sent += len(chunk)
            await writer.drain()
        chunk = await stdout.read(READ_CHUNK)
    if inserter is not None and (rest := inserter.close()):
        writer.write(conn.send(h11.Data(data=rest)) or b"")
        stats.bytes_sent += len(rest)


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
