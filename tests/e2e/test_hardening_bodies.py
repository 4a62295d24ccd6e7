"""Hostile request bodies: compression bombs, huge chunked bodies, odd encodings.

goblet reads an upload-pack body to decide where it goes. A body is inspected only while
it stays within ``goblet_max_request_bytes`` on the wire *and* after decoding; anything
bigger is passed to the upstream uninspected, streamed, without ever being held (or
inflated) in mitmdump's memory. A body goblet cannot decode is the client's fault (400,
one line); encodings goblet does not decode itself are the upstream's business.

Every attack runs against a fresh mitmdump (so its memory baseline is its own) in front
of the real HTTPS upstream; mitmdump's resident memory is sampled while the request is
in flight, and a normal git clone through the same proxy must work meanwhile.
"""

from __future__ import annotations

import contextlib
import gzip
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import brotli  # type: ignore[import-untyped]
import pytest
import zstandard

from tests.e2e.conftest import Repos
from tests.support import attack, rawhttp
from tests.support.attack import (
    UPLOAD_HEADERS,
    clone_head,
    git_through,
    post_upload,
    upload_posts,
)
from tests.support.gitclient import GitClient
from tests.support.net import metric_sum, wait_for
from tests.support.proxy import GobletProxy
from tests.support.tunnel import RssSampler, open_tunnel
from tests.support.upstream_client import UpstreamServer

MiB = 1 << 20
GiB = 1 << 30
LIMIT = MiB  # goblet_max_request_bytes of these proxies
RSS_BUDGET = 200 * MiB  # allowed growth of mitmdump's RSS while a hostile body is in flight
SAFETY_KILL = GiB  # growth at which the sampler kills mitmdump (and the test fails)


def compressed_zeros(total: int, *, gzip_format: bool) -> bytes:
    """``total`` zero bytes as a gzip (else zlib) stream, about 1030 times smaller.

    Built without compressing ``total`` bytes: one 16 MiB piece is deflated at level 9
    after a full flush (so it refers to nothing before it), repeated, and closed with an
    empty final block and the checksum and length of the whole.
    """
    piece = 16 * MiB
    assert total % piece == 0
    block = bytes(piece)
    squeezer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if gzip_format
                                else zlib.MAX_WBITS)
    first = squeezer.compress(block) + squeezer.flush(zlib.Z_FULL_FLUSH)  # with the header
    again = squeezer.compress(block) + squeezer.flush(zlib.Z_FULL_FLUSH)  # self-contained
    check = 0 if gzip_format else 1
    for _ in range(total // piece):
        check = zlib.crc32(block, check) if gzip_format else zlib.adler32(block, check)
    trailer = (struct.pack("<II", check, total & 0xFFFFFFFF) if gzip_format
               else struct.pack(">I", check))
    return first + again * (total // piece - 1) + b"\x03\x00" + trailer


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """1 GiB of zeros as gzip and as deflate (zlib): each just under 1 MiB on the wire."""
    made = {"gzip": compressed_zeros(GiB, gzip_format=True),
            "deflate": compressed_zeros(GiB, gzip_format=False)}
    for body in made.values():
        assert len(body) < LIMIT  # small enough that goblet would read it whole
    return made


@pytest.fixture
def bproxy(start_proxy: Callable[[dict[str, str]], GobletProxy]) -> GobletProxy:
    """A fresh proxy per test (its own memory baseline) inspecting at most 1 MiB."""
    return start_proxy({"goblet_max_request_bytes": "1MiB", "goblet_upstream_timeout": "60"})


def bgit(tmp_path: Path, proxy: GobletProxy) -> GitClient:
    return git_through(proxy, tmp_path / "home")


def upload_post_statuses(upstream: UpstreamServer, name: str) -> list[int | None]:
    """The statuses of the POSTs to ``name``'s git-upload-pack the upstream has received."""
    return [r["status"] for r in upstream.stats()["requests"]
            if r["method"] == "POST" and r["path"] == f"/{name}/git-upload-pack"]


def log_lines(proxy: GobletProxy, name: str) -> list[str]:
    """The access-log lines of ``name`` (the repo URL ends with ``/name``)."""
    return [ln for ln in proxy.log_text().splitlines() if f"/{name} " in ln and "git " in ln]


def post_in_background(
    proxy: GobletProxy, upstream: UpstreamServer, name: str, headers: dict[str, str],
    body: bytes | Iterator[bytes], *, chunked: bool = False,
) -> tuple[threading.Thread, dict[str, Any]]:
    """POST ``body`` to ``name``'s git-upload-pack through the proxy, from a thread.

    The result dict gets ``status`` and ``body`` of the answer, or ``error``.
    """
    return attack.post_in_background(proxy, upstream, f"/{name}/git-upload-pack",
                                     {**UPLOAD_HEADERS, **headers}, body, chunked=chunked)


def attack_while_cloning(
    proxy: GobletProxy, upstream: UpstreamServer, repos: Repos, tmp_path: Path,
    headers: dict[str, str], body: bytes | Iterator[bytes], *, chunked: bool = False,
) -> tuple[str, dict[str, Any], RssSampler]:
    """Send the hostile body; clone another repo meanwhile; return (repo, answer, memory)."""
    name = repos.create(commits=2)
    other = repos.create(commits=4)
    git = bgit(tmp_path, proxy)
    assert proxy.proc is not None
    with RssSampler(proxy.proc.pid, kill_above=SAFETY_KILL) as rss:
        thread, answer = post_in_background(proxy, upstream, name, headers, body,
                                            chunked=chunked)
        clone = git.clone(upstream.url(other), tmp_path / "meanwhile", check=False)
        thread.join(150)
    assert not rss.killed, f"mitmdump's RSS grew past {SAFETY_KILL >> 20} MiB: killed"
    assert rss.growth < RSS_BUDGET, f"mitmdump's RSS grew by {rss.growth >> 20} MiB"
    assert not thread.is_alive(), "the hostile request got no answer"
    assert clone.returncode == 0, clone.stderr
    return name, answer, rss


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compression_bomb_is_passed_upstream_uninspected(
    encoding: str, bombs: dict[str, bytes], bproxy: GobletProxy, upstream: UpstreamServer,
    repos: Repos, tmp_path: Path,
) -> None:
    name, answer, _ = attack_while_cloning(
        bproxy, upstream, repos, tmp_path, {"Content-Encoding": encoding}, bombs[encoding])
    assert "error" not in answer, answer
    # It went to the upstream as it came, and the upstream's answer came back.
    assert upload_post_statuses(upstream, name) == [answer["status"]]
    line = wait_for("the access-log line", lambda: next(iter(log_lines(bproxy, name)), None))
    assert "inspection limit" in line, line
    assert "Traceback" not in bproxy.log_text()


def test_a_huge_chunked_body_is_streamed_not_buffered(
    bproxy: GobletProxy, upstream: UpstreamServer, repos: Repos, tmp_path: Path
) -> None:
    def zeros() -> Iterator[bytes]:
        block = bytes(256 * 1024)
        for _ in range(1024):  # 256 MiB
            yield block

    name, answer, _ = attack_while_cloning(bproxy, upstream, repos, tmp_path, {}, zeros(),
                                           chunked=True)
    assert "error" not in answer, answer
    assert upload_post_statuses(upstream, name) == [answer["status"]]
    assert bproxy.proc is not None and bproxy.proc.poll() is None
    # Still serving.
    bgit(tmp_path, bproxy).clone(upstream.url(repos.create(commits=2)), tmp_path / "after")


def test_a_corrupt_gzip_body_gets_a_one_line_400(
    bproxy: GobletProxy, upstream: UpstreamServer, repos: Repos, tmp_path: Path
) -> None:
    name = repos.create(commits=2)
    whole = gzip.compress(rawhttp.v2_fetch_body("a" * 40) * 20)
    resp = post_upload(upstream, bproxy, name, {"Content-Encoding": "gzip"},
                       whole[: len(whole) // 2])
    assert resp.status == 400, resp
    assert resp.body.startswith(b"goblet: ") and resp.body.count(b"\n") == 1, resp.body
    assert b"Traceback" not in resp.body
    assert upload_posts(upstream, name) == 0  # refused by goblet, not the upstream
    bgit(tmp_path, bproxy).clone(upstream.url(name), tmp_path / "still-works")


# Encodings goblet does not decode itself, and a list of encodings (even of ones it does).
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "br": brotli.compress, "zstd": zstandard.ZstdCompressor().compress,
    "gzip, identity": gzip.compress,
}


@pytest.mark.parametrize("encoding", list(COMPRESSORS))
def test_encodings_goblet_does_not_decode_go_upstream_uninspected(
    encoding: str, bproxy: GobletProxy, upstream: UpstreamServer, repos: Repos,
    tmp_path: Path,
) -> None:
    name = repos.create(commits=3)
    git = bgit(tmp_path, bproxy)
    head = clone_head(git, upstream.url(name), tmp_path / "warm")  # cached, a fresh grant
    body = COMPRESSORS[encoding](rawhttp.v2_fetch_body(head))
    before = upload_posts(upstream, name)
    resp = post_upload(upstream, bproxy, name, {"Content-Encoding": encoding}, body)
    assert upload_posts(upstream, name) == before + 1, (
        f"a {encoding} body was decoded and answered by goblet (status {resp.status})")
    assert b"Traceback" not in resp.body
    git.clone(upstream.url(name), tmp_path / "still-works")


def test_bodies_held_at_once_stay_within_their_budget_over_every_connection(
    bproxy: GobletProxy, upstream: UpstreamServer, repos: Repos, tmp_path: Path
) -> None:
    """Each body mitmproxy holds for goblet takes its length of a budget of twice the cap
    from its head on, whatever connection it came on: while two clients hold it all
    (each announced the cap and sent half), another client's request is passed on
    unread and still answered by the upstream; once they are gone, bodies are read
    again."""
    name = repos.create(commits=2)
    head = (f"POST /{name}/git-upload-pack HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\n"
            "Git-Protocol: version=2\r\nContent-Type: application/x-git-upload-pack-request\r\n"
            f"Content-Length: {LIMIT}\r\n\r\n").encode()

    def ls_refs(result: str) -> float | None:
        """One ls-refs through the proxy, answered 200: what it added to ``result``."""
        before = metric_sum(bproxy.port, "goblet_request_bodies_total", result=result)
        got = post_upload(upstream, bproxy, name, {}, rawhttp.v2_ls_refs_body())
        assert got.status == 200 and b"refs/heads/main" in got.body
        return metric_sum(bproxy.port, "goblet_request_bodies_total", result=result) - before

    assert ls_refs("inspected") == 1
    with contextlib.ExitStack() as hogs:
        for _ in range(2):
            hog = hogs.enter_context(open_tunnel(bproxy.port, "127.0.0.1", upstream.port,
                                                 ca_file=bproxy.ca_cert))
            hog.sendall(head + bytes(LIMIT // 2))
        # (their heads may still be on their way: ask until one is passed on)
        assert wait_for("a request passed on while the budget is held",
                        lambda: ls_refs("busy") or None)
        assert wait_for("the access-log line", lambda: next(
            (ln for ln in log_lines(bproxy, name) if "held at their budget" in ln), None))
    assert wait_for("bodies read again once the holders are gone",
                    lambda: ls_refs("inspected") or None)
