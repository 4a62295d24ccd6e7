"""A bound on the request heads mitmproxy buffers.

mitmproxy's HTTP/1 server side keeps every byte a client sends in the connection's
buffer until it is read, without limit (a known gap in mitmproxy 11): a request head
is read only once its blank line arrives, a chunked body's size and trailer lines
only once they end, and nothing is read while a request's answer is awaited. One
client sending header lines without end, or anything after a request whose answer is
slow, grows the proxy by what it sends, about 300 MB a second on loopback.
``install`` wraps the server's event handler so that past MAX_REQUEST_HEAD bytes
buffered, a head without end is answered ``431`` with a one-line reason, and in every
case the connection is closed. Real git heads are a few hundred bytes (a large token
or cookie a few KiB), chunk-size lines a few bytes, and git sends nothing while it
waits for an answer.

The wrapper keeps mitmproxy's own reader for everything else. If mitmproxy's
layout is not the one this was written for, nothing is wrapped and ``install``
says so (the caller logs it; a unit test fails): the proxy then runs as
mitmproxy alone would.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from mitmproxy.net.http import status_codes
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import RequestProtocolError

MAX_REQUEST_HEAD = 64 * 1024
_MARK = "_goblet_head_limit"
_REASON = f"goblet: request head over {MAX_REQUEST_HEAD // 1024} KiB\n".encode()
TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_REASON)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + _REASON
)


def _bounded(handle_event: Callable[..., Generator[Any, Any, None]],
             ) -> Callable[..., Generator[Any, Any, None]]:
    """``Http1Server._handle_event`` (``handle_event``, which adds what a client sends
    to the connection's buffer before its state reads it), then the bound."""
    server = _http1.Http1Server

    def bounded(self: Any, event: Any) -> Generator[Any, Any, None]:
        yield from handle_event(self, event)
        if not isinstance(event, events.DataReceived) or len(self.buf) <= MAX_REQUEST_HEAD:
            return
        state = getattr(self.state, "__func__", None)
        if state not in (server.read_headers, server.wait, server.read_body, server.done):
            return  # (passthrough: nothing is buffered)
        self.buf = type(self.buf)()  # lets go of what was buffered, and reads no further
        if state is server.done:  # (closed: what still comes is never read)
            return
        if state is server.read_headers:  # a head without end
            yield commands.SendData(self.conn, TOO_LARGE)
        yield commands.CloseConnection(self.conn)
        if state is not server.read_headers:
            # sent while its answer is awaited (git never does), or a body's framing
            # without end (a chunk-size or trailer line: a body itself is read as it
            # comes and never stays in the buffer)
            yield ReceiveHttp(RequestProtocolError(
                self.stream_id, "goblet: over 64 KiB from the client left unread",
                code=status_codes.CLIENT_CLOSED_REQUEST))
        self.state = self.done

    setattr(bounded, _MARK, True)
    bounded.__doc__ = handle_event.__doc__
    return bounded


def install() -> str | None:
    """Bound the request heads mitmproxy's HTTP/1 server reads (idempotent); None when
    done, else why it could not be."""
    server = getattr(_http1, "Http1Server", None)
    current = getattr(server, "_handle_event", None)
    if server is None or current is None or not all(
            hasattr(server, name) for name in ("read_headers", "read_body", "wait", "done")):
        return "mitmproxy's HTTP/1 server has another layout"
    if getattr(current, _MARK, False):
        return None
    server._handle_event = _bounded(current)
    return None
