"""Red team: a small request body whose *parsing* costs the proxy seconds and gigabytes.

goblet caps what it decodes (``goblet_max_request_bytes``, counted after decoding) and
decodes compressed bodies in a worker thread. What it does with the decoded bytes is
not bounded the same way: the upload-pack request is then split into pkt-lines on the
event loop, one Python object per packet, before any rule looks at them. The smallest
packets are 4 bytes (``0000``) or 5 bytes (``0005a``), so a body at the cap holds
millions of them:

* 64 MiB (the default cap) of ``0000``, 65 KiB on the wire as gzip, keeps the event
  loop busy for many seconds (over 20 s on the 2-core test machine), during which no
  other client gets an answer, not even ``/healthz``; a client repeating it keeps the
  proxy down;
* 8 MiB of ``0005a`` (12 KiB as gzip) makes mitmdump allocate hundreds of MiB (one
  ``Pkt`` and one ``bytes`` per five bytes of body): far more than the cap the
  documentation promises to hold.

The same holds for the answers goblet reads: every 200 ref advertisement is buffered
whole and parsed twice on the event loop (once to decide it is a grant, once to read
it). Anyone can publish a repo with many refs on a forge; six concurrent ``info/refs``
of one with 150,000 tags (9 MiB) stall every other client for seconds.

Nor is there a bound across requests: each inspected body is held, decoded, for as
long as goblet takes to decide where it goes, and a fetch of an object the cache lacks
waits for the repo's writer lock (goblet fetches missing objects one request at a time).
Thirty-two small gzip requests against a slow upstream hold thirty-two decoded bodies.

Required (safe behaviour): another client is answered within a few seconds while such a
body or answer is parsed, and mitmdump's memory grows by at most a small multiple of the
cap, however many requests are in flight.
"""

from __future__ import annotations

import gzip
import http.client
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Repos
from tests.support import attack
from tests.support.attack import git_through, tunnel_connection
from tests.support.net import http_get
from tests.support.proxy import GobletProxy
from tests.support.repos import git as upstream_git
from tests.support.tunnel import RssSampler
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e

MiB = 1 << 20
CAP = 8 * MiB  # goblet_max_request_bytes of the memory test's proxy
DEFAULT_CAP = 64 * MiB  # goblet_max_request_bytes's default
UPLOAD_HEADERS = {"Git-Protocol": "version=2",
                  "Content-Type": "application/x-git-upload-pack-request",
                  "Content-Encoding": "gzip"}


def flush_bomb() -> bytes:
    """A v2 request of just under the default cap, nearly all of it 4-byte flush-pkts."""
    head = b"0012command=fetch\n0001"
    return head + b"0000" * ((DEFAULT_CAP - len(head)) // 4)


def tiny_packet_bomb() -> bytes:
    """A v2 fetch of just under CAP bytes whose arguments are 5-byte data-pkts."""
    head, tail = b"0012command=fetch\n0001", b"0000"
    return head + b"0005a" * ((CAP - len(head) - len(tail)) // 5) + tail


@pytest.fixture
def pproxy(start_proxy: Callable[[dict[str, str]], GobletProxy]) -> GobletProxy:
    """A fresh proxy per test (its own memory baseline) inspecting at most 8 MiB."""
    return start_proxy({"goblet_max_request_bytes": "8MiB", "goblet_upstream_timeout": "30"})


@pytest.fixture
def dproxy(start_proxy: Callable[[dict[str, str]], GobletProxy]) -> GobletProxy:
    """A fresh proxy with the default request cap."""
    return start_proxy({"goblet_upstream_timeout": "30"})


def post_in_background(proxy: GobletProxy, upstream: UpstreamServer, body: bytes
                       ) -> tuple[threading.Thread, dict[str, Any]]:
    """POST ``body`` (gzip-compressed here) to an upload-pack URL through the proxy."""
    wire = gzip.compress(body, 9)
    thread, out = attack.post_in_background(proxy, upstream, "/parse-bomb.git/git-upload-pack",
                                            UPLOAD_HEADERS, wire, timeout=150)
    out["wire_bytes"] = len(wire)
    return thread, out


def healthz_seconds(proxy: GobletProxy) -> float:
    """How long the proxy takes to answer ``GET /healthz`` (at most 120 s)."""
    started = time.monotonic()
    status, _ = http_get(proxy.port, "/healthz", timeout=120)
    assert status == 200
    return time.monotonic() - started


def test_a_body_of_flush_packets_does_not_stall_every_other_client(
    dproxy: GobletProxy, upstream: UpstreamServer
) -> None:
    assert healthz_seconds(dproxy) < 5  # the proxy is responsive to begin with
    thread, out = post_in_background(dproxy, upstream, flush_bomb())
    assert out["wire_bytes"] < 100_000  # the whole attack is one small request
    deadline = time.monotonic() + 30
    while "sent" not in out and "error" not in out and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(1.5)  # the body is in; goblet decodes it (thread) and parses it (loop)
    waited = healthz_seconds(dproxy)
    thread.join(150)
    assert dproxy.proc is not None and dproxy.proc.poll() is None
    # (parsing holds the GIL in goblet's worker threads: on 2 shared cores a healthz
    # may wait seconds; a blocked event loop makes it wait until all six are parsed)
    assert waited < 5, (
        f"while goblet parsed one {out['wire_bytes']}-byte request, another client waited "
        f"{waited:.1f}s for /healthz (the event loop was blocked)")


def test_a_body_of_tiny_packets_does_not_cost_many_times_the_cap_in_memory(
    pproxy: GobletProxy, upstream: UpstreamServer
) -> None:
    assert pproxy.proc is not None
    with RssSampler(pproxy.proc.pid, kill_above=3 << 30) as rss:
        thread, out = post_in_background(pproxy, upstream, tiny_packet_bomb())
        thread.join(150)
        time.sleep(0.2)
    assert out["wire_bytes"] < 100_000
    assert not rss.killed, "mitmdump grew by more than 3 GiB and was killed"
    assert "error" not in out, out.get("error")
    assert rss.growth < 16 * CAP, (
        f"one {out['wire_bytes']}-byte request (8 MiB decoded) grew mitmdump's RSS by "
        f"{rss.growth >> 20} MiB")


def with_many_tags(repos: Repos, count: int) -> str:
    """A public repo with ``count`` lightweight tags (written as one packed-refs file)."""
    name = repos.create(commits=2, tags=(), annotated_tags=())
    bare = repos.path(name)
    head = upstream_git("rev-parse", "HEAD", cwd=bare)
    lines = ["# pack-refs with: peeled fully-peeled sorted"]
    lines += [f"{head} refs/tags/t{i:07d}" for i in range(count)]
    (bare / "packed-refs").write_text("\n".join(lines) + "\n")
    return name


def test_ref_answers_with_many_refs_do_not_stall_every_other_client(
    dproxy: GobletProxy, upstream: UpstreamServer, repos: Repos
) -> None:
    name = with_many_tags(repos, 150_000)
    assert healthz_seconds(dproxy) < 5
    results: list[int] = []

    def list_refs() -> None:
        conn = tunnel_connection(dproxy, upstream, 150)
        try:
            conn.request("GET", f"/{name}/info/refs?service=git-upload-pack")
            resp = conn.getresponse()
            resp.read()
            results.append(resp.status)
        finally:
            conn.close()

    threads = [threading.Thread(target=list_refs, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)  # the answers are on their way through goblet
    waited = healthz_seconds(dproxy)
    for t in threads:
        t.join(150)
    assert results == [200] * 6
    # (parsing holds the GIL in goblet's worker threads: on 2 shared cores a healthz
    # may wait seconds; a blocked event loop makes it wait until all six are parsed)
    assert waited < 5, (
        f"while goblet read six ref answers of a repo with many refs, another client "
        f"waited {waited:.1f}s for /healthz (the event loop was blocked)")


def padded_fetch(oid: str) -> bytes:
    """A v2 fetch of ``oid`` padded to just under CAP with (cheap to parse) long lines."""
    line = ("filter " + "x" * 4000).encode()
    head = (pkt_line(b"command=fetch") + pkt_line(b"object-format=sha1") + b"0001"
            + pkt_line(f"want {oid}".encode()))
    tail = pkt_line(b"done") + b"0000"
    padding = pkt_line(line)
    return head + padding * ((CAP - len(head) - len(tail)) // len(padding)) + tail


def pkt_line(data: bytes) -> bytes:
    return b"%04x" % (len(data) + 5) + data + b"\n"


def test_many_requests_in_flight_do_not_each_hold_a_decoded_body(
    pproxy: GobletProxy, upstream: UpstreamServer, repos: Repos, tmp_path: Path
) -> None:
    name = repos.create(commits=2)
    git = git_through(pproxy, tmp_path / "home")
    git.clone(upstream.url(name), tmp_path / "warm")  # an anonymous grant
    wire = gzip.compress(padded_fetch("1" * 40), 9)
    assert len(wire) < 100_000
    assert pproxy.proc is not None
    done: list[int] = []

    def post() -> None:
        conn = tunnel_connection(pproxy, upstream, 120)
        try:
            conn.request("POST", f"/{name}/git-upload-pack", body=wire, headers=UPLOAD_HEADERS)
            resp = conn.getresponse()
            resp.read()
            done.append(resp.status)
        except (OSError, http.client.HTTPException):
            done.append(0)
        finally:
            conn.close()

    upstream.fault("stall", kinds=["fetch"])  # the upstream is slow to send objects
    try:
        with RssSampler(pproxy.proc.pid, kill_above=3 << 30) as rss:
            threads = [threading.Thread(target=post, daemon=True) for _ in range(32)]
            for t in threads:
                t.start()
            time.sleep(8)  # all 32 decoded and waiting for the repo's writer lock
    finally:
        upstream.fault("none")
    for t in threads:
        t.join(120)
    assert len(done) == 32
    assert not rss.killed
    # Each holding its decoded body would be 32 x CAP (256 MiB); the held-bytes budget
    # (2 x CAP) and two decoding threads measured 62-94 MiB, with the allocator's noise.
    assert rss.growth < 16 * CAP, (
        f"32 requests of {len(wire)} bytes each (8 MiB decoded) in flight grew mitmdump's "
        f"RSS by {rss.growth >> 20} MiB")
