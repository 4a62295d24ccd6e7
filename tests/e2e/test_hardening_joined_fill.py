"""A fill that fails for the credential that started it blames no one who joined it.

Fills are single-flight per repo: in ``shared`` isolation a fetch of a repo whose first
fill is running waits for that fill, whoever started it. When the fill fails (the
upstream refuses its credential, or answers 500), the failure is the starter's: another
tenant who joined it (bob, whom the upstream serves) must get the upstream's own answer,
and no denial may be recorded for him (``FetchDecider._after_failure`` in decide.py). A
blamed bob would get a goblet error for an upstream fault that was not his, or a denial
verdict that makes his next fetch bypass the cache as if the upstream had refused him.
(Only ``shared`` isolation lets tenants share a fill: in ``tenant`` and ``user`` isolation
each has a cache copy of his own, and ``public`` fills are anonymous.) Both cold-clone
modes are run: with ``stream`` alice's fetch starts the fill and goes upstream itself,
with ``fill`` her ref request starts it and her fetch waits for it.

The race is forced with the test upstream's ``stall`` fault, not with timing: the first
request of alice's fill (``GET info/refs`` with her credential) is held at the upstream
while bob lists the refs and sends his fetch, which joins the running fill. Only then is
the stall released, and the fill's next request fails: 404 (alice was revoked meanwhile)
or 500. Nothing outside goblet shows the moment bob's fetch starts waiting; the test
waits until goblet has read his request body (``goblet_request_bodies_total``), then a
short moment for the decision to reach the fill, and checks afterwards in the access log
that bob's fetch did join the failed fill (so a lost race fails, never passes silently).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import Repos
from tests.support import attack, rawhttp
from tests.support.attack import ALICE, BOB
from tests.support.cachedir import repos_for
from tests.support.net import free_port, metric_sum, wait_for
from tests.support.proxy import GobletProxy
from tests.support.repos import list_refs
from tests.support.upstream_client import UpstreamServer

JOINED = "a fill for another credential failed"  # the reason of a joiner not blamed
_LINE = re.compile(r"git (?P<kind>\w+) (?P<url>\S+) tenant=(?P<tenant>\S+) "
                   r"outcome=(?P<outcome>\w+) status=(?P<status>\S+) .*?"
                   r"(?: reason=(?P<reason>'.*'|\".*\"))?$")


def access(proxy: GobletProxy, url: str) -> list[dict[str, str]]:
    """goblet's access-log lines for ``url``, oldest first (kind, tenant, outcome, reason)."""
    found = []
    for line in proxy.log_text().splitlines():
        m = _LINE.search(line)
        if m and m["url"] == url:
            found.append({**m.groupdict(), "reason": (m["reason"] or "''")[1:-1]})
    return found


def logged(proxy: GobletProxy, url: str, tenant: str, fetches: int) -> list[dict[str, str]]:
    """``tenant``'s access-log lines for ``url`` once its ``fetches``-th fetch is logged
    (goblet logs a request after its answer is out, so the client may see it first)."""
    def lines() -> list[dict[str, str]] | None:
        found = [ln for ln in access(proxy, url) if ln["tenant"] == tenant]
        return found if sum(ln["kind"] == "fetch" for ln in found) >= fetches else None

    return wait_for(f"{fetches} fetch(es) in the access log", lines, timeout=10)


def ls_refs(upstream: UpstreamServer, proxy: GobletProxy, name: str,
            auth: dict[str, str]) -> rawhttp.RawResponse:
    return attack.post_upload(upstream, proxy, name, auth, rawhttp.v2_ls_refs_body())


def fetch_in_background(upstream: UpstreamServer, proxy: GobletProxy, name: str, head: str,
                        auth: dict[str, str]) -> tuple[threading.Thread, dict[str, Any]]:
    return attack.post_in_background(proxy, upstream, f"/{name}/git-upload-pack",
                                     {**attack.UPLOAD_HEADERS, **auth},
                                     rawhttp.v2_fetch_body(head), timeout=60)


def stalled(upstream: UpstreamServer, name: str) -> dict[str, Any] | None:
    """The upstream request of ``name`` held by the stall fault, once it arrived."""
    return next((r for r in upstream.stats()["requests"]
                 if r["path"].startswith(f"/{name}/") and r["fault"] == "stall"), None)


@pytest.mark.parametrize("failure", ["refused", "upstream_500"])
@pytest.mark.parametrize("cold_clones", ["stream", "fill"])
def test_a_tenant_joining_a_fill_that_fails_for_another_credential_is_not_blamed(
    cold_clones: str, failure: str, repos: Repos, upstream: UpstreamServer,
    start_proxy: Callable[[dict[str, str]], GobletProxy],
) -> None:
    metrics = free_port()
    px = start_proxy({"goblet_upstream_timeout": "10", "goblet_cold_clones": cold_clones,
                      "goblet_metrics_port": str(metrics)})
    name = repos.create(public=False, readers=("alice", "bob"), commits=3)
    url = upstream.url(name)
    head = list_refs(repos.path(name))["refs/heads/main"]

    # alice starts the repo's first fill, with her credential; its first upstream
    # request is held. (With cold_clones=fill her ls-refs starts it and her fetch waits
    # for it; with stream her fetch starts it and goes upstream itself.)
    upstream.fault("stall", kinds=["info_refs"], count=1)
    try:
        assert ls_refs(upstream, px, name, ALICE).status == 200
        alice, _ = fetch_in_background(upstream, px, name, head, ALICE)
        held = wait_for("alice's fill to reach the upstream", lambda: stalled(upstream, name),
                        timeout=15)
        assert held["user"] == "alice" and held["kind"] == "info_refs"
        if failure == "refused":
            repos.grant(name, public=False, readers=("bob",))  # the fill's next request: 404

        # bob, whom the upstream serves, lists the refs and fetches: his fetch joins the
        # running fill (goblet has read his body; the decision awaits the fill at once).
        assert ls_refs(upstream, px, name, BOB).status == 200
        bodies = metric_sum(metrics, "goblet_request_bodies_total", result="inspected")
        bob, bob_got = fetch_in_background(upstream, px, name, head, BOB)
        wait_for("goblet to read bob's fetch", lambda: metric_sum(
            metrics, "goblet_request_bodies_total", result="inspected") > bodies or None,
            timeout=15)
        time.sleep(0.3)
        assert bob.is_alive(), f"bob's fetch did not wait for the running fill: {bob_got}"
    finally:  # release the stall: the fill's ls-refs is refused (404) or answered 500
        if failure == "upstream_500":
            upstream.fault("error500", kinds=["ls_refs"], count=1)
        else:
            upstream.fault("none")
    alice.join(60)
    bob.join(60)

    failed = [r for r in upstream.stats()["requests"]
              if r["path"].startswith(f"/{name}/") and r["kind"] == "ls_refs"
              and r["user"] == "alice" and r["status"] in (404, 500)]
    assert failed, "alice's fill did not fail at the upstream"

    # bob got the upstream's own answer: the pack it sends him directly.
    straight = attack.fetch(upstream, None, name, head, BOB)
    assert straight.status == 200 and b"packfile" in straight.body  # the reference
    assert bob_got.get("status") == 200 and b"packfile" in bob_got.get("body", b""), (
        f"bob was blamed for the failure of alice's fill: {bob_got}")

    # No denial was recorded for bob: his next fetch (no ref request first) counts as
    # granted (not "no fresh upstream grant"), fills the cache with his credential, and
    # the one after it is served from there.
    bob_tenant = wait_for("bob's ls-refs in the access log", lambda: next(iter(
        [ln["tenant"] for ln in access(px, url) if ln["kind"] == "ls_refs"][1:]), None))
    again = attack.fetch(upstream, px, name, head, BOB)
    assert again.status == 200 and b"packfile" in again.body
    bob_lines = logged(px, url, bob_tenant, 2)
    assert all(ln["outcome"] != "denied" and "no fresh upstream grant" not in ln["reason"]
               for ln in bob_lines), f"alice's failed fill was held against bob: {bob_lines}"
    wait_for("bob's fill to make the cache repo", lambda: repos_for(px.cache_dir, url) or None,
             timeout=15)
    served = attack.fetch(upstream, px, name, head, BOB)
    assert served.status == 200 and b"packfile" in served.body
    bob_lines = logged(px, url, bob_tenant, 3)
    assert bob_lines[-1]["outcome"] == "cache", bob_lines

    # And the race was the one intended: bob's first fetch waited for alice's fill and
    # was answered after it failed (a fetch that came late would pass, proving nothing).
    joined = next(ln for ln in bob_lines if ln["kind"] == "fetch")
    assert joined["reason"] == JOINED, f"bob's fetch did not join alice's fill: {joined}"
