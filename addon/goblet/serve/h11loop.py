"""The server side of one HTTP/1.1 connection over h11 (sans-IO), as its requests.

Both loopback servers goblet runs (the serving backend and the endpoints'
port) answer bodiless requests one at a time on a keep-alive connection; this
is the loop they share. Each request is handed over once its body has been
read (and dropped, unless the caller keeps a bounded one: webhooks); the caller then sends the whole
answer through the same ``h11.Connection`` before asking for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import h11


async def incoming_requests(conn: h11.Connection, reader: asyncio.StreamReader, *,
                            chunk: int, idle_timeout: float | None = None
                            ) -> AsyncGenerator[h11.Request, None]:
    """Each request of the connection, after the end of its body.

    The next request is read only when the previous answer was sent whole
    and the client may send another (both sides DONE); otherwise, and when
    the client closes the connection or sends no request, the iteration ends.
    A read that waits ``idle_timeout`` seconds raises TimeoutError; what
    h11 finds malformed raises ``h11.ProtocolError``.
    """
    async with contextlib.aclosing(incoming(conn, reader, chunk=chunk,
                                            idle_timeout=idle_timeout)) as requests:
        async for request, _ in requests:
            yield request


async def incoming(conn: h11.Connection, reader: asyncio.StreamReader, *, chunk: int,
                   idle_timeout: float | None = None, max_body: int = 0
                   ) -> AsyncGenerator[tuple[h11.Request, bytes | None], None]:
    """``incoming_requests`` with each request's body, kept up to ``max_body`` bytes
    (0: dropped, ``b""`` is handed over). A body over ``max_body`` is handed over as
    None at once, without reading the rest, and ends the iteration after it."""
    while True:
        event = await _next_event(conn, reader, chunk, idle_timeout)
        if not isinstance(event, h11.Request):
            return
        request, body = event, bytearray()
        while not isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            event = await _next_event(conn, reader, chunk, idle_timeout)
            if isinstance(event, h11.Data) and max_body:
                body += event.data
                if len(body) > max_body:
                    yield request, None
                    return
        if isinstance(event, h11.ConnectionClosed):
            return
        yield request, bytes(body)
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        conn.start_next_cycle()


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader, chunk: int,
                      idle_timeout: float | None) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await asyncio.wait_for(reader.read(chunk), idle_timeout))
