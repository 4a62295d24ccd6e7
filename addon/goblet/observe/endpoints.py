"""``/metrics``, ``/healthz`` and ``/readyz``: on the proxy port and on a port of their own.

On the proxy port they are answered when a request is sent to the proxy
itself as plain HTTP (``curl http://127.0.0.1:8080/metrics``), so probes and
Prometheus need no proxy settings. With ``goblet_metrics_port`` they are also
served by a tiny h11 server on that port (GET and HEAD; POST only to the
paths the webhooks take, when they are configured).

Whoever reaches that port can send it anything, so what it holds is bounded:
a request (head and body) must arrive within ``REQUEST_TIMEOUT`` seconds;
bodies are read and dropped unless a webhook wants one; a webhook's head is
first shown to ``screen``, whose answer (401 for a request that cannot be
signed, say) is given at once, unread; and a webhook body is kept only when
its ``Content-Length`` is at most ``MAX_POST_BODY`` (else 413, unread) and,
counting bytes as they arrive (an announced length holds nothing), the bodies
held at once stay within ``BODY_BUDGET`` and those of one peer (``_peer``)
within ``PEER_BUDGET`` (else 503, unread from there on). So a body from one
peer always fits while at most one other holds bodies; a peer holding its
whole share delays the next bodies of its own address, not another's.
A request h11 cannot parse gets a one-line 4xx (``h11loop.error_answer``) and
the connection is closed; nothing of it reaches a handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11

from goblet.observe.health import Readiness
from goblet.serve.h11loop import REFUSE, error_answer, incoming

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
# POST path, headers by lower-case name → the answer from the head alone, or None: read on
Screen = Callable[[str, dict[str, str]], Awaitable[Answer | None]]
MAX_POST_BODY = 5 * 1024 * 1024
BODY_BUDGET = 2 * MAX_POST_BODY  # POST bodies held at once, over every connection
PEER_BUDGET = MAX_POST_BODY  # of which held at once for one peer (see ``_peer``)
REQUEST_TIMEOUT = 30.0
DISCARD_SECONDS, DISCARD_BYTES = 5.0, 8 * MAX_POST_BODY  # after a refusal, at most
TEXT = "text/plain; charset=utf-8"


@dataclass(slots=True)
class _Connection:
    """One connection to the endpoints' port, as the POST body budgets see it."""

    peer: str  # ``_peer``
    held: int = 0  # bytes of the current request's body held
    refusal: Answer | None = None  # the current request's answer, instead of ``hooks``'s


class EndpointServer:
    """Serves the endpoints on their own address, and POSTs to the paths ``wants``
    accepts to ``hooks`` (webhooks), each shown first to ``screen`` (if given): an
    answer from it is sent at once, before any of the body is read or budgeted,
    and ``hooks`` is not called."""

    def __init__(self, handler: Handler, hooks: PostHandler | None = None,
                 wants: Callable[[str], bool] = lambda path: False,
                 screen: Screen | None = None) -> None:
        self.handler = handler
        self.hooks = hooks
        self.wants = wants
        self.screen = screen
        self.port = 0
        self.held = 0  # bytes of POST bodies held now
        self.held_by: dict[str, int] = {}  # of which by peer (``_peer``), none at 0
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
        state = _Connection(_peer(writer.get_extra_info("peername")))
        try:
            async with contextlib.aclosing(
                incoming(conn, reader, chunk=16 * 1024, idle_timeout=REQUEST_TIMEOUT,
                         request_timeout=REQUEST_TIMEOUT,
                         keep=lambda request: self._keep(state, request),
                         hold=lambda n: self._hold(state, n))
            ) as requests:
                async for request, body in requests:
                    try:
                        await self._answer(conn, writer, request, body, state.refusal)
                    finally:
                        self._release(state)
                    if body is None:  # refused unread: the last request of the connection
                        await _discard(reader)
        except h11.RemoteProtocolError as e:
            log.debug("endpoint connection ended: %s", e)
            with contextlib.suppress(ConnectionError, TimeoutError):
                writer.write(error_answer(conn, e))
                if writer.can_write_eof():
                    writer.write_eof()  # the answer is all: the client sees its end at once
                await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
                await _discard(reader)  # (closing with unread input would reset the answer)
        except (ConnectionError, TimeoutError, h11.ProtocolError) as e:
            log.debug("endpoint connection ended: %s", e)
        finally:
            self._release(state)
            writer.close()

    async def _keep(self, state: _Connection, request: h11.Request) -> int:
        """Bytes of ``request``'s body to keep (see the module docstring), REFUSE when
        it is answered unread: with ``state.refusal``, or by ``hooks`` (413) if none."""
        target = request.target.decode("latin-1")
        if request.method != b"POST" or self.hooks is None or not self.wants(target):
            return 0
        if self.screen is not None:
            state.refusal = await self.screen(target, _headers(request))
            if state.refusal is not None:
                return REFUSE
        length = dict(request.headers).get(b"content-length", b"")
        if not length.isdigit() or int(length) > MAX_POST_BODY:
            return REFUSE  # handed to ``hooks`` as None: too large (413)
        return int(length)  # held as it arrives: ``_hold``

    def _hold(self, state: _Connection, n: int) -> bool:
        """Whether ``n`` more bytes of the body ``state``'s connection is receiving fit
        both budgets; then they are held until ``_release``, else the request is
        refused (503)."""
        if self.held + n > BODY_BUDGET or self.held_by.get(state.peer, 0) + n > PEER_BUDGET:
            state.refusal = Answer(503, TEXT, b"busy: too many payloads at once\n")
            return False
        state.held += n
        self.held += n
        self.held_by[state.peer] = self.held_by.get(state.peer, 0) + n
        return True

    def _release(self, state: _Connection) -> None:
        """Let go of what ``state``'s connection holds, once its request is answered
        (or the connection ended); forget its refusal."""
        self.held -= state.held
        if (left := self.held_by.pop(state.peer, 0) - state.held) > 0:
            self.held_by[state.peer] = left
        state.held, state.refusal = 0, None

    async def _answer(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                      request: h11.Request, body_in: bytes | None,
                      refusal: Answer | None) -> None:
        target = request.target.decode("latin-1")
        if refusal is not None:
            result = refusal
        elif request.method == b"POST" and self.hooks is not None and self.wants(target):
            result = await self.hooks(target, _headers(request), body_in)
        elif request.method not in (b"GET", b"HEAD"):
            known = target.split("?", 1)[0] in PATHS
            result = (Answer(405, TEXT, b"method not allowed\n") if known
                      else Answer(404, TEXT, b"not found\n"))
        else:
            result = await self.handler(target)
        body = b"" if request.method == b"HEAD" else result.body
        writer.write(conn.send(h11.Response(status_code=result.status, headers=[
            ("Content-Type", result.content_type),
            ("Content-Length", str(len(result.body))),
            ("Cache-Control", "no-store"),
        ])) or b"")
        writer.write(conn.send(h11.Data(data=body)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()


def _peer(peername: object) -> str:
    """Whose bodies count together against ``PEER_BUDGET``, from a socket's peer name:
    its IPv4 address, or the /64 of its IPv6 one (the usual share of one site, so
    that one host cannot pose as many), an IPv4-mapped IPv6 address as the IPv4
    one; "" when unknown (every such peer then shares one budget)."""
    if not isinstance(peername, tuple) or not peername or not isinstance(peername[0], str):
        return ""
    try:
        address = ipaddress.ip_address(peername[0])
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


def _headers(request: h11.Request) -> dict[str, str]:
    """``request``'s headers by lower-case name (the last of a repeated one)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}


async def _discard(reader: asyncio.StreamReader) -> None:
    """Read and drop what a client still sends after a refusal, for a while (so that it
    reads the answer rather than a reset), then let the connection close."""
    loop = asyncio.get_running_loop()
    end, left = loop.time() + DISCARD_SECONDS, DISCARD_BYTES
    with contextlib.suppress(ConnectionError, TimeoutError):
        while left > 0 and (wait := end - loop.time()) > 0:
            data = await asyncio.wait_for(reader.read(64 * 1024), wait)
            if not data:
                return
            left -= len(data)
