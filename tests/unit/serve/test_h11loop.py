"""incoming_requests: the request loop both loopback servers share, fed bytes directly.

Each request is handed over after its body; bytes may arrive whole, one at a
time or pipelined; the next request is read only once the previous answer was
sent and both sides may go on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import h11
import pytest
from goblet.serve.h11loop import REFUSE, error_answer, incoming, incoming_requests
from hypothesis import given, settings
from hypothesis import strategies as st

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n0\r\n\r\n")
CLOSE = b"GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def answer(conn: h11.Connection) -> bytes:
    out = conn.send(h11.Response(status_code=200, headers=[("Content-Length", "2")])) or b""
    out += conn.send(h11.Data(data=b"ok")) or b""
    return out + (conn.send(h11.EndOfMessage()) or b"")


async def served(pieces: list[bytes], *, eof: bool = True, answered: bool = True,
                 idle_timeout: float | None = None) -> list[str]:
    """The targets handed over when the client sends ``pieces`` (then closes)."""
    reader = asyncio.StreamReader()
    for piece in pieces:
        reader.feed_data(piece)
    if eof:
        reader.feed_eof()
    conn = h11.Connection(h11.SERVER)
    targets = []
    async with contextlib.aclosing(
        incoming_requests(conn, reader, chunk=7, idle_timeout=idle_timeout)
    ) as requests:
        async for request in requests:
            targets.append(request.target.decode())
            if answered:
                answer(conn)
    return targets


def run(pieces: list[bytes], **kw: object) -> list[str]:
    return asyncio.run(served(pieces, **kw))  # type: ignore[arg-type]


def test_one_request_whole() -> None:
    assert run([GET]) == ["/a"]


def test_keep_alive_requests_in_turn_whole_and_byte_at_a_time() -> None:
    stream = GET + POST + CHUNKED + GET
    assert run([stream]) == ["/a", "/b", "/c", "/a"]
    assert run([bytes([b]) for b in stream]) == ["/a", "/b", "/c", "/a"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 40), max_size=40))
def test_any_split_of_the_stream_hands_over_the_same_requests(sizes: list[int]) -> None:
    stream = POST + CHUNKED + GET + CLOSE
    pieces, at = [], 0
    for size in sizes:
        pieces.append(stream[at:at + size])
        at += size
    pieces.append(stream[at:])
    assert run([p for p in pieces if p]) == ["/b", "/c", "/a", "/d"]


def test_a_request_is_handed_over_only_after_its_body() -> None:
    async def scenario() -> list[str]:
        reader = asyncio.StreamReader()
        reader.feed_data(POST[:-2])  # two bytes of the body still missing
        conn = h11.Connection(h11.SERVER)
        requests = incoming_requests(conn, reader, chunk=64)
        waiting = asyncio.ensure_future(anext(requests))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        reader.feed_data(POST[-2:])
        request = await asyncio.wait_for(waiting, 5)
        await requests.aclose()
        return [request.target.decode()]

    assert asyncio.run(scenario()) == ["/b"]


def test_connection_close_ends_after_its_answer_and_trailing_data_is_not_read() -> None:
    assert run([CLOSE + GET]) == ["/d"]


def test_no_next_request_unless_the_answer_was_sent() -> None:
    assert run([GET + GET], answered=False) == ["/a"]


def test_the_client_closing_between_requests_ends_the_loop() -> None:
    assert run([GET, POST]) == ["/a", "/b"]
    assert run([]) == []


def test_a_client_cut_mid_request_is_a_protocol_error() -> None:
    with pytest.raises(h11.RemoteProtocolError):
        run([POST[:-1]])
    with pytest.raises(h11.RemoteProtocolError):
        run([GET[:-2]])


HUGE_LENGTH = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"


@pytest.mark.parametrize("garbage", [b"NOT HTTP\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n",
                                     b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
                                     HUGE_LENGTH])
def test_malformed_requests_are_protocol_errors(garbage: bytes) -> None:
    with pytest.raises(h11.RemoteProtocolError) as raised:
        run([GET + garbage])
    assert raised.value.error_status_hint == 400


def test_a_content_length_too_long_for_int_is_a_protocol_error_not_a_value_error() -> None:
    """h11 checks a Content-Length is digits, then int() refuses more than 4300 of them:
    the loop raises what h11 raises for any other malformed request."""
    with pytest.raises(h11.RemoteProtocolError) as raised:
        run([HUGE_LENGTH])
    assert isinstance(raised.value.__cause__, ValueError)


async def failed(stream: bytes) -> tuple[h11.Connection, h11.RemoteProtocolError]:
    """The connection and the error after ``stream``, each request answered."""
    reader = asyncio.StreamReader()
    reader.feed_data(stream)
    reader.feed_eof()
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
    try:
        async with contextlib.aclosing(incoming_requests(conn, reader, chunk=64)) as requests:
            async for _ in requests:
                answer(conn)
    except h11.RemoteProtocolError as e:
        return conn, e
    raise AssertionError("no protocol error")


@pytest.mark.parametrize(("stream", "status", "reason"), [
    (HUGE_LENGTH, 400, b"malformed request\n"),
    (b"NOT HTTP\r\n\r\n", 400, b"malformed request\n"),
    (GET + b"GET /b HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 20000, 431,
     b"request head too large\n"),
])
def test_error_answer_is_a_one_line_4xx_that_closes(stream: bytes, status: int,
                                                    reason: bytes) -> None:
    conn, error = asyncio.run(failed(stream))
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(error_answer(conn, error))
    response = client.next_event()
    assert isinstance(response, h11.Response) and response.status_code == status
    assert (b"connection", b"close") in response.headers
    data = client.next_event()
    assert isinstance(data, h11.Data) and data.data == reason
    assert isinstance(client.next_event(), h11.EndOfMessage)


def test_no_error_answer_once_an_answer_was_begun() -> None:
    """A client that breaks off its request once the answer is under way: h11 permits
    no second response head, so there is nothing to send but the close. (The loop
    itself hands a request over only after its body, so it cannot get there.)"""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    conn.send(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
    conn.receive_data(b"")
    with pytest.raises(h11.RemoteProtocolError) as raised:
        conn.next_event()
    assert conn.our_state is h11.SEND_BODY
    assert error_answer(conn, raised.value) == b""


def test_a_silent_client_times_out() -> None:
    with pytest.raises(TimeoutError):
        run([GET[:10]], eof=False, idle_timeout=0.05)


# -- bodies kept, dropped or refused; requests that trickle in ----------------------------


def keeping(limit: int) -> Callable[[h11.Request], Awaitable[int]]:
    """A ``keep`` that says ``limit`` for every request."""
    async def keep(request: h11.Request) -> int:
        return limit
    return keep


async def bodies(stream: bytes, keep: object, **kw: object) -> list[tuple[str, bytes | None]]:
    reader = asyncio.StreamReader()
    reader.feed_data(stream)
    reader.feed_eof()
    conn = h11.Connection(h11.SERVER)
    got = []
    async with contextlib.aclosing(
        incoming(conn, reader, chunk=7, keep=keep, **kw)  # type: ignore[arg-type]
    ) as requests:
        async for request, body in requests:
            got.append((request.target.decode(), body))
            answer(conn)
    return got


def test_bodies_are_kept_up_to_what_keep_says_and_dropped_otherwise() -> None:
    stream = POST + CHUNKED + GET
    assert asyncio.run(bodies(stream, None)) == [("/b", b""), ("/c", b""), ("/a", b"")]
    assert asyncio.run(bodies(stream, keeping(5))) == [
        ("/b", b"hello"), ("/c", b"abc"), ("/a", b"")]
    # over the limit: handed over as None, and nothing after it is read
    assert asyncio.run(bodies(stream, keeping(4))) == [("/b", None)]


def test_hold_is_asked_for_every_piece_of_a_kept_body_and_may_cut_it_short() -> None:
    asked: list[int] = []

    def hold_up_to(total: int) -> object:
        def hold(n: int) -> bool:
            asked.append(n)
            return sum(asked) <= total
        return hold

    stream = POST + CHUNKED + GET
    assert asyncio.run(bodies(stream, keeping(5), hold=hold_up_to(8))) == [
        ("/b", b"hello"), ("/c", b"abc"), ("/a", b"")]
    assert sum(asked) == 8  # the bodies' bytes, each asked for once; none for a GET
    asked.clear()
    # refused at the piece that does not fit: handed over as None, nothing after read
    assert asyncio.run(bodies(stream, keeping(5), hold=hold_up_to(6))) == [
        ("/b", b"hello"), ("/c", None)]
    asked.clear()
    assert asyncio.run(bodies(stream, None, hold=hold_up_to(0))) == [
        ("/b", b""), ("/c", b""), ("/a", b"")]
    assert asked == []  # bodies read and dropped are never held


def test_a_refused_request_is_handed_over_before_its_body_is_read() -> None:
    seen: list[str] = []

    async def keep(request: h11.Request) -> int:
        seen.append(request.target.decode())
        return REFUSE

    head = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n"
    assert asyncio.run(bodies(head + b"x" * 10, keep)) == [("/big", None)]
    assert seen == ["/big"]


def test_a_request_that_trickles_in_is_cut_at_its_deadline() -> None:
    async def scenario() -> None:
        reader = asyncio.StreamReader()
        conn = h11.Connection(h11.SERVER)
        head = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"

        async def drip() -> None:
            for byte in head + b"x" * 100:
                reader.feed_data(bytes([byte]))
                await asyncio.sleep(0.01)  # well within the idle timeout, every time

        feeding = asyncio.ensure_future(drip())
        try:
            with pytest.raises(TimeoutError):
                async with contextlib.aclosing(
                    incoming(conn, reader, chunk=64, idle_timeout=5, request_timeout=0.2)
                ) as requests:
                    async for _ in requests:
                        pytest.fail("the request arrived whole")
        finally:
            feeding.cancel()

    asyncio.run(scenario())
