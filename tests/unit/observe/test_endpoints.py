"""The endpoints' own port holds little, whatever reaches it: bodies are read only for
the webhooks it takes, each bounded, all of them together within a budget."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import pytest
from goblet.observe import endpoints
from goblet.observe.endpoints import (
    BODY_BUDGET,
    MAX_POST_BODY,
    PEER_BUDGET,
    Answer,
    EndpointServer,
    Screen,
)

TEXT = "text/plain; charset=utf-8"
HOOK = "/webhooks/github"


class Hooks:
    """A webhook handler that records what it got and holds each request until let go."""

    def __init__(self) -> None:
        self.got: list[tuple[str, int | None]] = []
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def __call__(self, path: str, headers: dict[str, str], body: bytes | None) -> Answer:
        self.got.append((path, None if body is None else len(body)))
        if body is None:
            return Answer(413, TEXT, b"too large\n")
        self.entered.set()
        await self.release.wait()
        return Answer(200, TEXT, b"accepted\n")


async def page(path: str) -> Answer:
    return Answer(200, TEXT, b"page\n")


class Client(Protocol):
    """Opens a connection from ``source`` (an address on the loopback network) to the
    server and sends ``data`` on it."""

    def __call__(self, data: bytes, source: str = "127.0.0.1"
                 ) -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]: ...


Scenario = Callable[[EndpointServer, Hooks, Client], Awaitable[None]]


def run(scenario: Scenario, screen: Screen | None = None) -> None:
    """Run ``scenario`` against a fresh server whose webhook path is ``HOOK``; fail if
    an exception escaped a connection's handler (asyncio would only log it; handlers
    still running at the end are cancelled, which is no escape)."""
    escaped: list[dict[str, object]] = []

    def record(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        if not isinstance(context.get("exception"), asyncio.CancelledError):
            escaped.append(context)

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(record)
        hooks = Hooks()
        server = EndpointServer(page, hooks=hooks, wants=lambda p: p == HOOK, screen=screen)
        await server.start("127.0.0.1", 0)
        writers: list[asyncio.StreamWriter] = []

        async def send(data: bytes, source: str = "127.0.0.1"
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port,
                                                           local_addr=(source, 0))
            writers.append(writer)
            writer.write(data)
            await writer.drain()
            return reader, writer

        try:
            await scenario(server, hooks, send)
        finally:
            hooks.release.set()
            for w in writers:
                w.close()
            await server.stop()

    asyncio.run(main())
    assert escaped == []


def post(path: str, length: int, body: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
            + body)


async def status(reader: asyncio.StreamReader) -> int:
    line = await asyncio.wait_for(reader.readline(), 10)
    return int(line.split()[1])


async def until(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_a_body_for_any_other_path_is_never_held() -> None:
    async def scenario(server: EndpointServer, hooks: Hooks, send: Client) -> None:
        await send(post("/anything", 50 * MAX_POST_BODY, b"x" * (MAX_POST_BODY + 1024)))
        await asyncio.sleep(0.2)
        assert server.held == 0 and hooks.got == []
        reader, _ = await send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await status(reader) == 200  # the port still answers meanwhile

    run(scenario)


def test_a_webhook_body_too_large_or_of_no_length_is_refused_unread() -> None:
    async def scenario(server: EndpointServer, hooks: Hooks, send: Client) -> None:
        reader, _ = await send(post(HOOK, MAX_POST_BODY + 1))  # the body is never sent
        assert await status(reader) == 413
        chunked = f"POST {HOOK} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        reader, _ = await send(chunked)
        assert await status(reader) == 413
        assert hooks.got == [(HOOK, None), (HOOK, None)] and server.held == 0

    run(scenario)


def test_bodies_held_at_once_stay_within_the_budget_and_each_peers_share() -> None:
    """Bytes count as they arrive: one peer holds at most ``PEER_BUDGET``, all peers
    together at most ``BODY_BUDGET``; past either, a body is refused (503) as soon as
    a byte of it would not fit; what is held is let go once answered."""
    async def scenario(server: EndpointServer, hooks: Hooks, send: Client) -> None:
        full = post(HOOK, MAX_POST_BODY, b"{" * MAX_POST_BODY)
        first = await send(full, "127.0.0.2")
        await until(lambda: len(hooks.got) == 1)
        assert server.held == server.held_by["127.0.0.2"] == PEER_BUDGET
        reader, _ = await send(post(HOOK, 10, b"x" * 10), "127.0.0.2")  # its own share: full
        assert await status(reader) == 503
        second = await send(full, "127.0.0.3")  # another peer's share is whole
        await until(lambda: len(hooks.got) == 2)
        assert server.held == BODY_BUDGET
        reader, _ = await send(post(HOOK, 10, b"x" * 10), "127.0.0.4")  # the budget: full
        assert await status(reader) == 503
        hooks.release.set()
        assert [await status(r) for r, _ in (first, second)] == [200, 200]
        await until(lambda: server.held == 0 and server.held_by == {})
        reader, _ = await send(post(HOOK, 2, b"{}"), "127.0.0.2")
        assert await status(reader) == 200
        assert hooks.got == [(HOOK, MAX_POST_BODY)] * 2 + [(HOOK, 2)]

    run(scenario)


def test_an_announced_body_holds_nothing_until_its_bytes_arrive() -> None:
    """Connections that announce the largest body and send none of it, or part of it,
    hold only what arrived: the next body, even from the same peer, fits beside them
    (unless that peer's arrived bytes fill its share)."""
    heads: list[str] = []

    async def screen(path: str, headers: dict[str, str]) -> Answer | None:
        heads.append(path)
        return None

    async def scenario(server: EndpointServer, hooks: Hooks, send: Client) -> None:
        hooks.release.set()
        for _ in range(2):
            await send(post(HOOK, MAX_POST_BODY), "127.0.0.2")
        await until(lambda: len(heads) == 2)
        assert server.held == 0
        for source in ("127.0.0.2", "127.0.0.1"):
            reader, _ = await send(post(HOOK, 2, b"{}"), source)
            assert await status(reader) == 200
        await send(post(HOOK, MAX_POST_BODY, b"{" * (MAX_POST_BODY - 1)), "127.0.0.3")
        await until(lambda: server.held == MAX_POST_BODY - 1)
        reader, _ = await send(post(HOOK, 2, b"{}"), "127.0.0.1")
        assert await status(reader) == 200
        reader, _ = await send(post(HOOK, 2, b"{}"), "127.0.0.3")  # over its share by 1
        assert await status(reader) == 503
        assert hooks.got == [(HOOK, 2)] * 3 and server.held == MAX_POST_BODY - 1

    run(scenario, screen)


def test_the_budget_leaves_room_for_at_least_two_payloads() -> None:
    assert endpoints.BODY_BUDGET >= 2 * endpoints.MAX_POST_BODY
    # one peer's share leaves room for a whole body from another
    assert endpoints.MAX_POST_BODY <= endpoints.PEER_BUDGET <= (
        endpoints.BODY_BUDGET - endpoints.MAX_POST_BODY)


@pytest.mark.parametrize(("peername", "peer"), [
    (("127.0.0.1", 1), "127.0.0.1"),
    (("::ffff:10.0.0.1", 1, 0, 0), "10.0.0.1"),  # a dual-stack socket's IPv4 client
    (("2001:db8:1:2:3:4:5:6", 1, 0, 0), "2001:db8:1:2::/64"),
    (("2001:db8:1:2:ffff::1", 1, 0, 0), "2001:db8:1:2::/64"),
    (("fe80::1%lo", 1, 0, 1), "fe80::/64"),
    (None, ""), ((), ""), (("not an address", 1), ""), ("/run/x.sock", ""),
])
def test_peers_are_addresses_or_ipv6_64s(peername: object, peer: str) -> None:
    assert endpoints._peer(peername) == peer


HUGE_LENGTH = b"Content-Length: " + b"9" * 5000 + b"\r\n"


def test_a_request_h11_cannot_parse_gets_a_one_line_400_and_the_connection_closes() -> None:
    """A Content-Length of more digits than int() takes, on a webhook path or any other:
    400 with its reason, the end of the connection, nothing handed to a handler."""
    async def scenario(server: EndpointServer, hooks: Hooks, send: Client) -> None:
        for method, path in (("POST", HOOK), ("GET", "/healthz")):
            reader, _ = await send(f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode()
                                   + HUGE_LENGTH + b"\r\n")
            answer = await asyncio.wait_for(reader.read(), 10)  # up to the server's close
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head.lower()
            assert body == b"malformed request\n"
        assert hooks.got == [] and server.held == 0
        reader, _ = await send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await status(reader) == 200

    run(scenario)


def test_a_head_the_screen_refuses_is_answered_at_once_unread_and_holds_nothing() -> None:
    """Heads without ``X-Signed`` are refused by the screen: even announcing the
    largest body and sending none of it, they get their answer, and the handler is
    never called; a head the screen passes is read on as before."""
    seen: list[tuple[str, str | None]] = []

    async def screen(path: str, headers: dict[str, str]) -> Answer | None:
        seen.append((path, headers.get("x-signed")))
        return None if "x-signed" in headers else Answer(401, TEXT, b"unsigned\n")

    async def scenario(server: EndpointServer, hooks: Hooks, send: Client) -> None:
        hooks.release.set()
        readers = [(await send(post(HOOK, MAX_POST_BODY)))[0] for _ in range(3)]
        assert [await status(r) for r in readers] == [401] * 3
        assert hooks.got == [] and server.held == 0
        signed = post(HOOK, 2, b"{}").replace(b"\r\n\r\n", b"\r\nX-Signed: 1\r\n\r\n", 1)
        reader, _ = await send(signed)
        assert await status(reader) == 200 and hooks.got == [(HOOK, 2)]
        reader, _ = await send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await status(reader) == 200
        assert seen == [(HOOK, None)] * 3 + [(HOOK, "1")]  # webhook POSTs only

    run(scenario, screen)
