"""The server side of one HTTP/1.1 connection over h11 (sans-IO), as its requests.

Both loopback servers goblet runs (the serving backend and the endpoints'
port) answer bodiless requests one at a time on a keep-alive connection; this
is the loop they share. Each request is handed over once its body has been
read (and dropped, unless the caller keeps a bounded one: webhooks); the
caller then sends the whole answer through the same ``h11.Connection``
before asking for the next.

What h11 finds malformed raises ``h11.RemoteProtocolError``, and so does a
value h11 lets through its checks only to fail on it with a ValueError (a
Content-Length too long for int()), so callers catch that one kind of error;
``error_answer`` gives the bytes of the answer the client may still be sent
then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable

import h11


async def incoming_requests(conn: h11.Connection, reader: asyncio.StreamReader, *,
                            chunk: int, idle_timeout: float | None = None
                            ) -> AsyncGenerator[h11.Request, None]:
    """Each request of the connection, after the end of its body.

    The next request is read only when the previous answer was sent whole
    and the client may send another (both sides DONE); otherwise, and when
    the client closes the connection or sends no request, the iteration ends.
    A read that waits ``idle_timeout`` seconds raises TimeoutError; what
    h11 finds malformed (or cannot parse at all) raises
    ``h11.RemoteProtocolError``.
    """
    async with contextlib.aclosing(incoming(conn, reader, chunk=chunk,
                                            idle_timeout=idle_timeout)) as requests:
        async for request, _ in requests:
            yield request


REFUSE = -1  # from ``keep``: hand the request over at once, without its body


async def incoming(conn: h11.Connection, reader: asyncio.StreamReader, *, chunk: int,
                   idle_timeout: float | None = None, request_timeout: float | None = None,
                   keep: Callable[[h11.Request], Awaitable[int]] | None = None,
                   hold: Callable[[int], bool] | None = None
                   ) -> AsyncGenerator[tuple[h11.Request, bytes | None], None]:
    """``incoming_requests`` with each request's body.

    ``await keep(request)``, asked once its head has arrived and before any of
    its body is read (so it may decide from the head alone), says how many bytes of
    its body to keep (0, or no ``keep``: the body is read and dropped, ``b""``
    is handed over). A body over that many bytes, or a request ``keep``
    answers ``REFUSE``, is handed over as None at once, without reading the
    rest, and ends the iteration after it. ``hold(n)``, if given, is asked
    before each piece of n bytes of a kept body is kept (the pieces add up to
    the body): False hands the request over as None at once too, so a caller
    can account bytes as they arrive rather than as announced (and must
    release them once done with the request). ``request_timeout``: seconds for a
    whole request, head and body, to arrive from when goblet starts waiting
    for it (TimeoutError after that, however slowly bytes trickle in)."""
    loop = asyncio.get_running_loop()
    while True:
        deadline = None if request_timeout is None else loop.time() + request_timeout
        event = await _next_event(conn, reader, chunk, idle_timeout, deadline)
        if not isinstance(event, h11.Request):
            return
        request, body = event, bytearray()
        limit = await keep(request) if keep is not None else 0
        if limit == REFUSE:
            yield request, None
            return
        while not isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            event = await _next_event(conn, reader, chunk, idle_timeout, deadline)
            if isinstance(event, h11.Data) and limit:
                if len(body) + len(event.data) > limit or (
                        hold is not None and not hold(len(event.data))):
                    yield request, None
                    return
                body += event.data
        if isinstance(event, h11.ConnectionClosed):
            return
        yield request, bytes(body)
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        conn.start_next_cycle()


ERROR_REASONS = {431: "request head too large"}  # by status; any other: malformed request


def error_answer(conn: h11.Connection, error: h11.RemoteProtocolError) -> bytes:
    """The bytes of the answer to a request that raised ``error``: its
    ``error_status_hint`` (400, 431…) with a one-line plain-text reason and
    ``Connection: close``, when h11 still permits a response (our side IDLE or
    SEND_RESPONSE: nothing of an answer sent yet); b"" otherwise. Either way
    the connection must be closed after it; nothing of the client's input is
    echoed."""
    if conn.our_state not in {h11.IDLE, h11.SEND_RESPONSE}:
        return b""
    status = error.error_status_hint
    body = (ERROR_REASONS.get(status, "malformed request") + "\n").encode()
    return b"".join(conn.send(event) or b"" for event in (
        h11.Response(status_code=status, headers=[
            ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"), ("Connection", "close")]),
        h11.Data(data=body), h11.EndOfMessage()))


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader, chunk: int,
                      idle_timeout: float | None, deadline: float | None = None) -> object:
    loop = asyncio.get_running_loop()
    while True:
        try:
            event = conn.next_event()
        except ValueError as e:
            # h11 lets a few values through its checks and fails on them later: a
            # Content-Length of more digits than int() takes (4300), for one. h11 has
            # already put the client's side in ERROR; say so the way h11 does.
            raise h11.RemoteProtocolError(
                f"request not parsable: {type(e).__name__}", error_status_hint=400) from e
        if event is not h11.NEED_DATA:
            return event
        wait = idle_timeout
        if deadline is not None:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError("request not received in time")
            wait = left if wait is None else min(wait, left)
        conn.receive_data(await asyncio.wait_for(reader.read(chunk), wait))
