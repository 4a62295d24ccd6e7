"""The bound on request heads is in place on the mitmproxy goblet runs on (a mitmproxy
with another layout would leave it out: this fails then, not production silently)."""

from __future__ import annotations

from goblet.addon import headlimit
from mitmproxy.proxy.layers.http import _http1


def test_the_bound_is_put_in_place_once() -> None:
    assert headlimit.install() is None
    wrapped = _http1.Http1Server.read_headers
    assert getattr(wrapped, "_goblet_head_limit", False)
    assert headlimit.install() is None and _http1.Http1Server.read_headers is wrapped


def test_the_refusal_is_one_line_git_shows() -> None:
    head, _, body = headlimit.TOO_LARGE.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and b"Connection: close" in head
    assert body == b"goblet: request head over 64 KiB\n"
    assert f"Content-Length: {len(body)}".encode() in head
