"""The bound on what a client may have buffered in mitmproxy's HTTP/1 server: a head
without end gets 431; bytes sent while an answer is awaited close the connection;
bodies, which are read as they come, are not affected. Driven through mitmproxy's own
server layer (the bound wraps it), event by event."""

from __future__ import annotations

from typing import Any

from goblet.addon import headlimit
from mitmproxy import connection, options
from mitmproxy.proxy import commands, context, events
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import RequestProtocolError

PAD = b"X-Pad: " + b"a" * 1000 + b"\r\n"


def server() -> tuple[_http1.Http1Server, connection.Client]:
    assert headlimit.install() is None
    client = connection.Client(peername=("192.0.2.1", 5000), sockname=("127.0.0.1", 8080),
                               timestamp_start=0)
    client.state = connection.ConnectionState.OPEN
    layer = _http1.Http1Server(context.Context(client, options.Options()))
    list(layer.handle_event(events.Start()))
    return layer, client


def feed(layer: _http1.Http1Server, client: connection.Client, data: bytes) -> list[Any]:
    return list(layer.handle_event(events.DataReceived(client, data)))


def closed(out: list[Any]) -> bool:
    return any(isinstance(c, commands.CloseConnection) for c in out)


def test_the_bound_is_put_in_place_once() -> None:
    assert headlimit.install() is None
    wrapped = _http1.Http1Server._handle_event
    assert getattr(wrapped, "_goblet_head_limit", False)
    assert headlimit.install() is None and _http1.Http1Server._handle_event is wrapped


def test_a_head_without_end_gets_431_and_is_read_no_further() -> None:
    layer, client = server()
    out = feed(layer, client, b"GET /r.git/info/refs HTTP/1.1\r\nHost: h\r\n")
    for _ in range(70):  # (70 KB)
        out += feed(layer, client, PAD)
    sent = [c.data for c in out if isinstance(c, commands.SendData)]
    assert sent == [headlimit.TOO_LARGE] and closed(out)
    assert len(layer.buf) <= headlimit.MAX_REQUEST_HEAD


def test_bytes_sent_while_an_answer_is_awaited_close_the_connection() -> None:
    layer, client = server()
    feed(layer, client, b"GET /r.git/info/refs HTTP/1.1\r\nHost: h\r\n\r\n")
    assert getattr(layer.state, "__func__", None) is _http1.Http1Server.wait
    out: list[Any] = []
    for _ in range(100):
        out += feed(layer, client, PAD)
    assert closed(out) and len(layer.buf) <= headlimit.MAX_REQUEST_HEAD
    errors = [c.event for c in out if isinstance(c, ReceiveHttp)
              and isinstance(c.event, RequestProtocolError)]
    assert errors and "64 KiB" in errors[0].message


def test_a_large_complete_head_and_a_large_body_are_not_affected() -> None:
    layer, client = server()
    out = feed(layer, client, b"POST /r.git/git-upload-pack HTTP/1.1\r\nHost: h\r\n"
               + PAD * 40 + b"Content-Length: 1048576\r\n\r\n")
    for _ in range(256):
        out += feed(layer, client, bytes(4096))
    assert not closed(out)
    assert not any(isinstance(c, commands.SendData) for c in out)


def test_the_refusal_is_one_line_git_shows() -> None:
    head, _, body = headlimit.TOO_LARGE.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and b"Connection: close" in head
    assert body == b"goblet: request head over 64 KiB\n"
    assert f"Content-Length: {len(body)}".encode() in head


CHUNKED = b"POST /r.git/git-upload-pack HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_chunked_body_is_read_as_it_comes_its_framing_without_end_is_not() -> None:
    layer, client = server()
    out = feed(layer, client, CHUNKED)
    for _ in range(256):  # 1 MiB in 4 KiB chunks, each in its own read
        out += feed(layer, client, b"1000\r\n" + bytes(4096) + b"\r\n")
    assert not closed(out) and len(layer.buf) < 64
    for line in (b"10;ext=", b"0\r\nX-Trailer: "):  # a size line, a trailer: no end
        layer, client = server()
        out = feed(layer, client, CHUNKED + line)
        for _ in range(70):
            out += feed(layer, client, b"a" * 1000)
        assert closed(out) and len(layer.buf) <= headlimit.MAX_REQUEST_HEAD
