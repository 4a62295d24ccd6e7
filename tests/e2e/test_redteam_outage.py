"""Red team: faking an upstream outage so that offline mode serves a revoked tenant.

In offline mode goblet serves a tenant whose grant is past ``goblet_verdict_ttl`` (but
within the grace) only when goblet's *own* request to the upstream gets no answer; and a
network failure of goblet's own in the last 10 s counts as "down" for every request to
that host without asking again. The rules are meant to make outages impossible to fake.
Two ways a client still does it, while the upstream is up and answers every request:

* a slow answer to one request the client chose: goblet replays offline-mode ref
  requests itself, and a timeout of that replay is recorded as an outage of the whole
  host, although the client picked the request (here a one-shot ``stall`` of the
  upstream stands for any request the upstream is slow to answer: a huge ref list, a
  busy shard);
* blocking goblet's event loop for longer than ``goblet_upstream_timeout`` with a body
  that is expensive to parse (see ``test_redteam_parse_cost.py``): goblet's own request
  in flight meanwhile times out when the loop comes back, and that counts as an outage.

In both, alice's read access was revoked upstream; the upstream answers her 404; goblet
must not answer her fetch from the cache. A regression test checks the defence that does
hold: a 5xx to the client's own request is not an outage while goblet's credential-free
confirmation succeeds.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Repos, started_upstream
from tests.support import attack, rawhttp
from tests.support.attack import ALICE, OFFLINE, git_through, proxy_for, send
from tests.support.proxy import GobletProxy
from tests.support.tunnel import open_tunnel, read_response
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e

VERDICT_TTL = 2


def offline_sets(**sets: str) -> dict[str, str]:
    return {**OFFLINE, "goblet_verdict_ttl": f"{VERDICT_TTL}s", **sets}


def warm_then_revoke(repos: Repos, upstream: UpstreamServer, proxy: GobletProxy,
                     tmp_path: Path) -> tuple[str, str]:
    """alice clones a private repo through goblet; then the upstream revokes her and her
    grant goes stale. Returns (repo name, its HEAD commit)."""
    return attack.warm_then_revoke(git_through(proxy, tmp_path / "home"), repos, upstream,
                                   tmp_path / "warm", VERDICT_TTL, commits=3)


def fetch(upstream: UpstreamServer, proxy: GobletProxy | None, name: str, head: str,
          timeout: float = 60) -> rawhttp.RawResponse:
    return attack.fetch(upstream, proxy, name, head, ALICE, timeout=timeout)


def assert_refused_like_upstream(via: rawhttp.RawResponse, straight: rawhttp.RawResponse) -> None:
    assert straight.status == 404 and b"packfile" not in straight.body  # the reference
    assert b"packfile" not in via.body, (
        "the upstream was up and refuses alice, yet goblet served her from the cache "
        f"({via.status}, {via.body[:120]!r})")
    assert via.status == straight.status


@pytest.fixture
def oproxy(start_proxy: Callable[[dict[str, str]], GobletProxy]) -> GobletProxy:
    return start_proxy(offline_sets(goblet_upstream_timeout="2"))


def test_one_slow_answer_to_a_client_request_is_not_an_outage_for_everyone(
    oproxy: GobletProxy, upstream: UpstreamServer, repos: Repos, tmp_path: Path
) -> None:
    name, head = warm_then_revoke(repos, upstream, oproxy, tmp_path)
    other = repos.create(commits=2)

    # Anyone's ref request for any repo of the host, which the upstream is slow to answer.
    upstream.fault("stall", kinds=["info_refs"], count=1)
    try:
        slow = send(upstream, oproxy, "GET", f"/{other}/info/refs?service=git-upload-pack",
                    {"Git-Protocol": "version=2"}, timeout=60)
    finally:
        upstream.fault("none")  # releases the stalled request: the upstream is fine
    # goblet gave up on it after goblet_upstream_timeout; its own probe then found the
    # upstream fine, so the request either failed alone or went on to the upstream, which
    # answered it: never an outage recorded for everyone
    assert slow.status >= 500 or slow.headers.get("server") == "goblet-test-upstream", slow

    via = fetch(upstream, oproxy, name, head)
    straight = fetch(upstream, None, name, head)
    assert_refused_like_upstream(via, straight)


def test_a_client_request_answered_500_is_not_an_outage_while_goblets_own_request_works(
    oproxy: GobletProxy, upstream: UpstreamServer, repos: Repos, tmp_path: Path
) -> None:
    name, head = warm_then_revoke(repos, upstream, oproxy, tmp_path)
    upstream.fault("error500", kinds=["info_refs"], count=1)
    try:
        resp = send(upstream, oproxy, "GET", f"/{name}/info/refs?service=git-upload-pack",
                    {"Git-Protocol": "version=2", **ALICE})
    finally:
        upstream.fault("none")
    assert resp.status == 500 and b"packfile" not in resp.body
    via = fetch(upstream, oproxy, name, head)
    straight = fetch(upstream, None, name, head)
    assert_refused_like_upstream(via, straight)


# -- the event loop blocked by a body that is expensive to parse ----------------------------

LATENCY_MS = 1000


@pytest.fixture
def slow_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamServer]:
    """An upstream one second away (a WAN link): goblet's own requests are in flight 1 s."""
    with started_upstream(tmp_path_factory, "slow-upstream", latency_ms=LATENCY_MS) as server:
        yield server


def bomb_head_and_body(upstream: UpstreamServer) -> tuple[bytes, bytes]:
    """An upload-pack POST whose body is 64 MiB (the default cap) of flush-pkts."""
    body = b"0012command=fetch\n0001" + b"0000" * (16 * 1024 * 1024 - 8)
    head = (f"POST /loop-bomb.git/git-upload-pack HTTP/1.1\r\n"
            f"Host: {upstream.host}\r\nGit-Protocol: version=2\r\n"
            "Content-Type: application/x-git-upload-pack-request\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head, body


def probe_in_flight(upstream: UpstreamServer, name: str) -> bool:
    """Whether goblet's own info/refs for ``name`` (with alice's credential) reached the
    upstream and has not been answered yet."""
    return any(r["kind"] == "info_refs" and r["path"].startswith(f"/{name}/")
               and r["user"] == "alice" and not r["status"]
               for r in upstream.stats()["requests"])


def test_blocking_the_event_loop_does_not_turn_goblets_own_probe_into_an_outage(
    slow_upstream: UpstreamServer, confdir: Path, tmp_path: Path
) -> None:
    upstream = slow_upstream
    repos = Repos(upstream)
    with proxy_for(tmp_path / "proxy", upstream, confdir,
                   offline_sets(goblet_upstream_timeout="3")) as proxy:
        name, head = warm_then_revoke(repos, upstream, proxy, tmp_path)
        upstream.reset_stats()
        head_bytes, body = bomb_head_and_body(upstream)
        bomb = open_tunnel(proxy.port, "127.0.0.1", upstream.port, ca_file=proxy.ca_cert,
                           timeout=120)
        result: dict[str, Any] = {}

        def alice_fetches() -> None:
            try:
                result["via"] = fetch(upstream, proxy, name, head, timeout=120)
            except (OSError, ssl.SSLError) as e:
                result["error"] = repr(e)

        try:
            bomb.sendall(head_bytes + body[:-1])  # everything but the last byte
            thread = threading.Thread(target=alice_fetches, daemon=True)
            thread.start()
            # alice's grant is stale: goblet asks the upstream itself (1 s away) ...
            deadline = time.monotonic() + 30
            while not probe_in_flight(upstream, name):
                assert time.monotonic() < deadline, "goblet never asked the upstream"
                time.sleep(0.02)
            bomb.sendall(body[-1:])  # ... and meanwhile the event loop parses the bomb
            thread.join(120)
            with contextlib.suppress(OSError, ssl.SSLError):
                read_response(bomb)
        finally:
            bomb.close()
        assert "error" not in result, result.get("error")
        straight = fetch(upstream, None, name, head)
        assert_refused_like_upstream(result["via"], straight)
