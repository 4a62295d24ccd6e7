"""Request bodies goblet never reads cost it nothing: a request shaped like an LFS link (any
token, no credential needed), a malformed link or an invalid git request is answered as
soon as its head arrives, and whatever body it carries is dropped unread, within
``goblet_request_body_timeout``. Before, mitmproxy held such bodies whole (up to
``goblet_max_request_bytes`` each, for as long as the client dripped them)."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator

import pytest

from tests.support.hostile_lfs import Scene, closed_within
from tests.support.tunnel import open_tunnel, read_response, rss_bytes

OID = "ab" * 32


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    s = Scene(tmp_path_factory.mktemp("bodies"), sets={"goblet_request_body_timeout": "3s"})
    yield s
    s.close()


def link() -> str:
    return f"/o/r.git/info/lfs/goblet/{secrets.token_urlsafe(32)}/{OID}"


PATHS = {
    "link": link,
    "malformed-link": lambda: f"/o/r.git/info/lfs/goblet/{secrets.token_urlsafe(32)}/"
                              f"{OID.upper()}",
    "invalid-git-path": lambda: "/o/./r.git/info/refs?service=git-upload-pack",
}


def head(scene: Scene, path: str, length: int, method: str = "GET") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{scene.api.port}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def tunnel(scene: Scene) -> socket.socket:
    return open_tunnel(scene.px.port, "127.0.0.1", scene.api.port, ca_file=scene.px.ca_cert)


@pytest.mark.parametrize("kind", sorted(PATHS))
def test_an_unread_body_is_answered_at_once_and_never_held(scene: Scene, kind: str) -> None:
    base = rss_bytes(scene.px.proc.pid)  # type: ignore[union-attr]
    socks = []
    chunk = b"x" * (1 << 20)
    try:
        for _ in range(6):
            s = tunnel(scene)
            s.sendall(head(scene, PATHS[kind](), 48 << 20))
            for _ in range(40):  # 40 of 48 MiB, then the client stalls
                s.sendall(chunk)
            socks.append(s)
        time.sleep(1)
        held = rss_bytes(scene.px.proc.pid)  # type: ignore[union-attr]
    finally:
        for s in socks:
            s.close()
    assert held - base < 96 << 20, f"{(held - base) >> 20} MiB held for 240 MiB of bodies"


@pytest.mark.parametrize("kind", sorted(PATHS))
def test_the_refusal_says_why_and_the_connection_ends(scene: Scene, kind: str) -> None:
    s = tunnel(scene)
    try:
        s.sendall(head(scene, PATHS[kind](), 100_000) + b"x" * 50_000)
        resp = read_response(s)
        assert resp.status == 400 and resp.body.startswith(b"goblet: ")
        assert resp.headers.get("connection") == "close"
        s.sendall(b"x" * 50_000)  # the rest of the body: dropped, then the connection ends
        assert closed_within(s, 10)
    finally:
        s.close()


def test_a_dripped_body_is_cut_at_the_body_timeout(scene: Scene) -> None:
    s = tunnel(scene)
    try:
        s.sendall(head(scene, link(), 1000) + b"x" * 10)
        started = time.monotonic()
        assert closed_within(s, 15)
        assert time.monotonic() - started < 12
    finally:
        s.close()


def test_an_invalid_upload_pack_post_gets_its_reason(scene: Scene) -> None:
    s = tunnel(scene)
    try:
        body = b"0014command=ls-refs\n0000"
        s.sendall(head(scene, "/o/../r.git/git-upload-pack", len(body), "POST") + body)
        resp = read_response(s)
        assert resp.status == 400 and b"repository path" in resp.body
    finally:
        s.close()


def test_a_link_without_a_body_is_still_answered(scene: Scene) -> None:
    s = tunnel(scene)
    try:
        s.sendall(f"GET {link()} HTTP/1.1\r\nHost: 127.0.0.1:{scene.api.port}\r\n\r\n"
                  .encode())
        resp = read_response(s)
        assert resp.status == 404 and b"unknown or expired" in resp.body
    finally:
        s.close()
