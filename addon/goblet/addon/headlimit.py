"""A bound on the request heads mitmproxy buffers.

mitmproxy's HTTP/1 server side keeps every byte of a request head until its blank
line arrives, without limit (a known gap in mitmproxy 11): one client sending header
lines without end grows the proxy by what it sends, about 300 MB a second on
loopback, until the head deadline. ``install`` wraps that reader so that a head
still incomplete after MAX_REQUEST_HEAD bytes is answered ``431`` with a one-line
reason and its connection closed. Real git heads are a few hundred bytes; a large
token or cookie is a few KiB.

The wrapper keeps mitmproxy's own reader for everything else. If mitmproxy's
layout is not the one this was written for, nothing is wrapped and ``install``
says so (the caller logs it; a unit test fails): the proxy then runs as
mitmproxy alone would.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1

MAX_REQUEST_HEAD = 64 * 1024
_MARK = "_goblet_head_limit"
_REASON = f"goblet: request head over {MAX_REQUEST_HEAD // 1024} KiB\n".encode()
TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_REASON)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + _REASON
)


def _bounded(read_headers: Callable[..., Generator[Any, Any, None]],
             ) -> Callable[..., Generator[Any, Any, None]]:
    def bounded(self: Any, event: Any) -> Generator[Any, Any, None]:
        yield from read_headers(self, event)
        if (isinstance(event, events.DataReceived)
                and getattr(self.state, "__func__", None) is bounded
                and len(self.buf) > MAX_REQUEST_HEAD):
            # still waiting for the end of this head, and it is already too large
            self.buf = type(self.buf)()  # (lets go of what was buffered)
            yield commands.SendData(self.conn, TOO_LARGE)
            yield commands.CloseConnection(self.conn)
            self.state = self.done

    setattr(bounded, _MARK, True)
    bounded.__doc__ = read_headers.__doc__
    return bounded


def install() -> str | None:
    """Bound the request heads mitmproxy's HTTP/1 server reads (idempotent); None when
    done, else why it could not be."""
    server = getattr(_http1, "Http1Server", None)
    current = getattr(server, "read_headers", None)
    if server is None or current is None or not hasattr(server, "done"):
        return "mitmproxy's HTTP/1 server has another layout"
    if getattr(current, _MARK, False):
        return None
    server.read_headers = _bounded(current)
    return None
