"""``/metrics``, ``/healthz`` and ``/readyz``: on the proxy port and on a port of their own.

On the proxy port they are answered when a request is sent to the proxy
itself as plain HTTP (``curl http://127.0.0.1:8080/metrics``), so probes and
Prometheus need no proxy settings. With ``goblet_metrics_port`` they are also
served by a tiny h11 server on that port (GET and HEAD only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11

from goblet.observe.health import Readiness
from goblet.serve.h11loop import incoming

log = logging.getLogger(__name__)

PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


@dataclass(frozen=True, slots=True)
class Answer:
    """An endpoint's HTTP answer."""

    status: int
    content_type: str
    body: bytes


async def answer(
    path: str,
    *,
    metrics: Callable[[], tuple[bytes, str]],
    readiness: Callable[[], Awaitable[Readiness]],
) -> Answer:
    """The answer for ``path`` (query ignored); 404 for anything else."""
    route = path.split("?", 1)[0]
    if route == "/healthz":
        return Answer(200, "text/plain; charset=utf-8", b"ok\n")
    if route == "/readyz":
        verdict = await readiness()
        if verdict.ready:
            return Answer(200, "text/plain; charset=utf-8", b"ready\n")
        text = "".join(f"not ready: {f}\n" for f in verdict.failures)
        return Answer(503, "text/plain; charset=utf-8", text.encode())
    if route == "/metrics":
        body, ctype = metrics()
        return Answer(200, ctype, body)
    return Answer(404, "text/plain; charset=utf-8", b"not found\n")


Handler = Callable[[str], Awaitable[Answer]]
# POST path, headers by lower-case name, body (None: over MAX_POST_BODY) → answer
PostHandler = Callable[[str, dict[str, str], bytes | None], Awaitable[Answer]]
MAX_POST_BODY = 5 * 1024 * 1024


class EndpointServer:
    """Serves the endpoints on their own address (and ``hooks``' POSTs: webhooks)."""

    def __init__(self, handler: Handler, hooks: PostHandler | None = None) -> None:
        self.handler = handler
        self.hooks = hooks
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0: ephemeral, see ``self.port``)."""
        self._server = await asyncio.start_server(self._handle, host or None, port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        try:
            async with contextlib.aclosing(
                incoming(conn, reader, chunk=16 * 1024, idle_timeout=30,
                         max_body=MAX_POST_BODY if self.hooks else 0)
            ) as requests:
                async for request, body in requests:
                    await self._answer(conn, writer, request, body)
        except (ConnectionError, TimeoutError, h11.ProtocolError) as e:
            log.debug("endpoint connection ended: %s", e)
        finally:
            writer.close()

    async def _answer(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                      request: h11.Request, body_in: bytes | None) -> None:
        if request.method == b"POST" and self.hooks is not None:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in request.headers}
            result = await self.hooks(request.target.decode("latin-1"), headers, body_in)
        elif request.method not in (b"GET", b"HEAD"):
            result = Answer(405, "text/plain; charset=utf-8", b"method not allowed\n")
        else:
            result = await self.handler(request.target.decode("latin-1"))
        body = b"" if request.method == b"HEAD" else result.body
        writer.write(conn.send(h11.Response(status_code=result.status, headers=[
            ("Content-Type", result.content_type),
            ("Content-Length", str(len(result.body))),
            ("Cache-Control", "no-store"),
        ])) or b"")
        writer.write(conn.send(h11.Data(data=body)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
