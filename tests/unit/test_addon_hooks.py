"""The addon's mitmproxy hooks, driven with mitmproxy's own test helpers (no sockets to git)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from goblet import options as opts
from goblet.addon import Goblet
from goblet.addon.connections import close_client, closed_by_goblet
from goblet.addon.early import goblet_response, set_header
from goblet.auth.credentials import credential_from_headers
from goblet.decide import Decision, Route
from goblet.policy import gate
from goblet.protocol import pktline
from goblet.serve.plans import TOKEN_HEADER
from mitmproxy import exceptions, http
from mitmproxy.addons import proxyserver
from mitmproxy.test import taddons, tflow, tutils

HOST, PORT = "git.example.com", 443
OID = "1" * 40


def pkt(line: bytes) -> bytes:
    return pktline.encode_data(line)


LS_REFS = pkt(b"command=ls-refs") + b"0001" + pkt(b"peel\n") + pkt(b"ref-prefix HEAD\n") + b"0000"
FETCH = pkt(b"command=fetch") + b"0001" + pkt(b"want " + OID.encode() + b"\n") + pkt(b"done\n") \
    + b"0000"


def run(body: Callable[[Goblet, Any], Awaitable[None]], tmp_path: Path, **options: Any) -> None:
    """Run ``body(addon, tctx)`` inside a mitmproxy test context with a started addon
    (goblet ``options`` set before it starts)."""

    async def main() -> None:
        addon = Goblet()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, goblet_cache_dir=str(tmp_path / "cache"),
                           goblet_hosts=[HOST, "other.example:8443"], **options)
            await addon.running()
            try:
                await body(addon, tctx)
            finally:
                await addon.done()

    asyncio.run(main())


def git_flow(method: str, path: str, body: bytes = b"", **headers: str) -> http.HTTPFlow:
    req = tutils.treq(method=method.encode(), scheme=b"https", host=HOST, port=PORT,
                      authority=b"", path=path.encode(), content=body,
                      headers=http.Headers(host=HOST, **headers))
    flow = tflow.tflow(req=req)
    flow.server_conn.address = (HOST, PORT)  # the CONNECT tunnel's host
    flow.client_conn.sni = HOST
    return flow


def test_bad_options_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        addon = Goblet()
        with taddons.context(addon) as tctx:
            with pytest.raises(exceptions.OptionsError, match="bad host name"):
                tctx.configure(addon, goblet_hosts=["not a host"])
            with pytest.raises(exceptions.OptionsError, match="goblet_upstream_timeout"):
                tctx.configure(addon, goblet_upstream_timeout="forever")
            tctx.configure(addon, goblet_verdict_ttl="5m", goblet_cache_dir=str(tmp_path))
            assert addon.settings is not None and addon.settings.verdict_ttl == 300

    asyncio.run(main())


def test_non_git_and_push_requests_stream_through(tmp_path: Path) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        for method, path in [("GET", "/org/repo"), ("POST", "/org/repo.git/git-receive-pack"),
                             ("GET", "/org/repo.git/info/refs?service=git-receive-pack")]:
            f = git_flow(method, path)
            addon.requestheaders(f)
            assert f.request.stream is True, path
        upload = git_flow("POST", "/org/repo.git/git-upload-pack")
        addon.requestheaders(upload)
        assert not upload.request.stream

    run(body, tmp_path)


def test_other_hosts_and_mismatched_host_headers_are_not_cached(tmp_path: Path) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        f = git_flow("POST", "/org/repo.git/git-upload-pack")
        f.request.host = "elsewhere.example"
        addon.requestheaders(f)
        assert f.request.stream is True
        spoofed = git_flow("POST", "/org/repo.git/git-upload-pack")
        spoofed.request.headers["host"] = "other.example:8443"
        addon.requestheaders(spoofed)
        assert spoofed.request.stream is True

    run(body, tmp_path)


def test_oversized_bodies_pass_through_uninspected(tmp_path: Path) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        f = git_flow("POST", "/org/repo.git/git-upload-pack", content_length=str(10**9))
        addon.requestheaders(f)
        assert f.request.stream is True

    run(body, tmp_path)


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/org/repo.git/git-upload-pack", b"00zz", b"malformed request: bad pkt-line length"),
        ("/org/../repo.git/git-upload-pack", b"0000", b"bad repository path"),
    ],
)
def test_bad_requests_get_400_with_one_line(
    path: str, body: bytes, fragment: bytes, tmp_path: Path
) -> None:
    async def run_body(addon: Goblet, tctx: Any) -> None:
        f = git_flow("POST", path, body, git_protocol="version=2")
        addon.requestheaders(f)
        await addon.request(f)
        assert f.response is not None and f.response.status_code == 400
        assert fragment in f.response.content and f.response.content.count(b"\n") == 1

    run(run_body, tmp_path)


@pytest.mark.parametrize(("cold_clones", "fills"), [("fill", 1), ("stream", 0)])
def test_ls_refs_goes_upstream_and_records_the_verdict(
    cold_clones: str, fills: int, tmp_path: Path, mocker: Any
) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        f = git_flow("POST", "/org/repo.git/git-upload-pack", LS_REFS,
                     git_protocol="version=2", authorization="Bearer t0k")
        addon.requestheaders(f)
        await addon.request(f)
        assert f.response is None and f.request.host == HOST
        start = mocker.patch.object(addon.rt.decider.filler, "start")
        f.response = http.Response.make(
            200, pkt(OID.encode() + b" refs/heads/main symref-target:x\n") + b"0000",
            {"Content-Type": "application/x-git-upload-pack-result"},
        )
        addon.responseheaders(f)
        assert not f.response.stream  # the ref answer is read, not streamed
        await addon.response(f)
        tenant = addon.rt.keyer.tenant_id(addon_credential("Bearer t0k"))
        assert addon.rt.decider.verdicts.is_granted(tenant, "https://git.example.com/org/repo.git")
        # the cache has never seen this repo: in fill mode the ref answer starts its fill;
        # in stream mode the clone's own fetch fills it while it streams (no second download)
        assert start.call_count == fills

    run(body, tmp_path, goblet_cold_clones=cold_clones)


def addon_credential(value: str) -> Any:
    return credential_from_headers([("Authorization", value)])


@pytest.mark.parametrize("status", [401, 403, 404])
def test_upstream_refusal_revokes_a_grant(status: int, tmp_path: Path) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        url = "https://git.example.com/org/repo.git"
        tenant = addon.rt.keyer.tenant_id(addon_credential("Bearer t0k"))
        addon.rt.decider.verdicts.record(tenant, url, granted=True)
        f = git_flow("GET", "/org/repo.git/info/refs?service=git-upload-pack",
                     authorization="Bearer t0k")
        addon.requestheaders(f)
        await addon.request(f)
        f.response = http.Response.make(status, b"no")
        addon.responseheaders(f)
        await addon.response(f)
        assert not addon.rt.decider.verdicts.is_granted(tenant, url)

    run(body, tmp_path)


def test_a_cache_decision_rewrites_the_flow_to_the_backend(tmp_path: Path, mocker: Any) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        mocker.patch.object(addon.rt.decider, "decide",
                            return_value=Decision(Route.CACHE, "all wants cached"))
        f = git_flow("POST", "/org/repo.git/git-upload-pack", FETCH,
                     git_protocol="version=2", authorization="Bearer s3cret")
        addon.requestheaders(f)
        await addon.request(f)
        assert f.response is None
        assert (f.request.scheme, f.request.host, f.request.port) == (
            "http", "127.0.0.1", addon.rt.backend.port)
        token = f.request.headers[TOKEN_HEADER]
        assert "authorization" not in f.request.headers  # credentials never reach the backend
        plan = addon.rt.plans.take(token)
        assert plan is not None and plan.body == FETCH and plan.git_protocol == "version=2"
        f.response = http.Response.make(200, b"")
        addon.responseheaders(f)
        assert f.response.stream is True

    run(body, tmp_path)


def test_an_error_decision_answers_with_an_err_packet(tmp_path: Path, mocker: Any) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        mocker.patch.object(addon.rt.decider, "decide",
                            return_value=Decision(Route.ERROR, "goblet: upstream answered 502"))
        f = git_flow("POST", "/org/repo.git/git-upload-pack", FETCH, git_protocol="version=2")
        addon.requestheaders(f)
        await addon.request(f)
        assert f.response is not None and f.response.status_code == 200
        assert f.response.content == pktline.error_packet("goblet: upstream answered 502")

    run(body, tmp_path)


def test_an_answer_relayed_from_upstream_names_goblets_instance_once(
        tmp_path: Path, mocker: Any) -> None:
    """An answer goblet relays (offline mode forwards ref requests itself) keeps the
    upstream's headers, but X-Served-By is goblet's alone."""
    async def body(addon: Goblet, tctx: Any) -> None:
        mocker.patch.object(addon.rt.policy, "route", return_value=gate.Reply(
            200, b"0000", (("Content-Type", "text/plain"), ("X-Served-By", "upstream-7"))))
        f = git_flow("GET", "/org/repo.git/info/refs?service=git-upload-pack")
        addon.requestheaders(f)
        await addon.request(f)
        assert f.response is not None and f.response.content == b"0000"
        assert f.response.headers.get_all("x-served-by") == ["edge-9"]
        assert f.response.headers["content-type"] == "text/plain"

    run(body, tmp_path, goblet_instance="edge-9")


def test_a_held_body_that_never_ends_closes_only_its_own_client(tmp_path: Path) -> None:
    """An attacker's ls-refs POST whose body never arrives (no credential, or another
    one) is cut at goblet_request_body_timeout: its own connection closes, a client
    whose body arrived keeps its own, and a body passed on unread owes goblet nothing."""
    async def body(addon: Goblet, tctx: Any) -> None:
        flows = {}
        for name, auth in (("slow", {}), ("done", {"authorization": "Bearer other"}),
                           ("passed", {})):
            f = git_flow("POST", "/org/repo.git/git-upload-pack", LS_REFS,
                         git_protocol="version=2", **auth)
            f.client_conn.id = f"client-{name}-{id(f)}"
            addon.requestheaders(f)
            assert f.request.stream is False  # (held: goblet reads it)
            flows[name] = f
        await addon.request(flows["done"])  # its body arrived
        flows["passed"].request.stream = True  # (passed on unread meanwhile)
        await asyncio.sleep(1.3)
        assert closed_by_goblet(flows["slow"].client_conn.id)
        assert not closed_by_goblet(flows["done"].client_conn.id)
        assert not closed_by_goblet(flows["passed"].client_conn.id)

    run(body, tmp_path, goblet_request_body_timeout="1s")


def test_an_upstream_decision_leaves_the_flow_alone(tmp_path: Path, mocker: Any) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        mocker.patch.object(addon.rt.decider, "decide",
                            return_value=Decision(Route.UPSTREAM, "no fresh upstream grant"))
        f = git_flow("POST", "/org/repo.git/git-upload-pack", FETCH, git_protocol="version=2",
                     authorization="Bearer s3cret")
        addon.requestheaders(f)
        await addon.request(f)
        assert f.response is None
        assert (f.request.host, f.request.headers["authorization"]) == (HOST, "Bearer s3cret")
        assert f.request.content == FETCH

    run(body, tmp_path)


def test_tls_to_other_hosts_is_not_intercepted(tmp_path: Path) -> None:
    class Hello:
        def __init__(self, sni: str | None) -> None:
            self.sni = sni

    class Data:
        def __init__(self, address: tuple[str, int], sni: str | None) -> None:
            self.context = type("C", (), {"server": type("S", (), {"address": address})(),
                                          "client": type("K", (), {"id": "c1"})()})()
            self.client_hello = Hello(sni)
            self.ignore_connection = False

    async def body(addon: Goblet, tctx: Any) -> None:
        cases = [((HOST, 443), HOST, False), (("other.example", 8443), None, False),
                 (("other.example", 443), "other.example", True),
                 (("unrelated.example", 443), "unrelated.example", True)]
        for address, sni, ignored in cases:
            data = Data(address, sni)
            addon.tls_clienthello(data)  # type: ignore[arg-type]
            assert data.ignore_connection is ignored, address

    run(body, tmp_path)


# -------------------------------------------------------------- options changed at run time

RUNTIME_VALUES = {
    "goblet_store_max_bytes": "5GiB", "goblet_store_partitions": "shared,tenant",
    "goblet_hosts": ["a.example", "b.example:8443"], "goblet_refs_ttl": "45s",
    "goblet_verdict_ttl": "5m", "goblet_upstream_timeout": "7s", "goblet_instance": "i-2",
    "goblet_max_request_bytes": "2MiB", "goblet_request_body_timeout": "9s",
    "goblet_min_free_bytes": "3GiB", "goblet_log_format": "json",
    "goblet_cache_max_bytes": "10GiB", "goblet_pack_cache_max_bytes": "1GiB",
    "goblet_maintenance": "false", "goblet_full_repack_interval": "2d",
    "goblet_repack_threads": "3", "goblet_warm_interval": "20m",
    "goblet_isolation": "tenant", "goblet_max_partitions": "4", "goblet_negative_ttl": "9s",
    "goblet_offline": "true", "goblet_offline_grace": "2h", "goblet_allow_open_proxy": "true",
    "goblet_relay_internal": "on", "goblet_cold_clones": "fill", "goblet_lfs": "off",
    "goblet_lfs_link_ttl": "30s", "goblet_fast_dispatch": "off",
}


def test_every_option_applies_at_run_time_or_says_it_needs_a_restart(tmp_path: Path) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        rt = addon.rt
        assert rt is not None
        covered = {spec.name for spec in opts.OPTIONS if not spec.restart}
        files = {"goblet_warm_repos", "goblet_warm_credentials", "goblet_webhook_secret_file"}
        assert covered - files == set(RUNTIME_VALUES)
        tctx.configure(addon, **RUNTIME_VALUES)
        s = addon.settings
        assert s is not None and rt.settings is s and s.offline and s.isolation == "tenant"
        assert s.allow_open_proxy and not s.fast_dispatch
        assert (s.store_max_bytes, s.store_partitions) == (5 << 30, {"shared", "tenant"})
        d, v = rt.decider, rt.decider.verdicts
        assert (v.ttl, v.negative_ttl, v.keep) == (300, 9, 7200)
        assert rt.refs.refs_ttl() == 45
        assert (d.isolation, d.offline, d.offline_grace) == ("tenant", True, 7200)
        assert d.filler.stall_timeout == 7 and rt.backend.follow_timeout == 7
        assert rt.forwarder is not None
        assert rt.forwarder.timeout == 7
        assert (rt.evictor.max_bytes, rt.evictor.min_free_bytes) == (10 << 30, 3 << 30)
        assert rt.health.min_free_bytes == 3 << 30 and rt.packcache.max_bytes == 1 << 30
        assert rt.maintainer.policy.full_every == 2 * 86400 and rt.maintainer.policy.threads == 3
        assert rt.lifecycle.maintenance is False and rt.partitions.max_per_repo == 4
        assert rt.warmer.interval == 1200 and rt.reporter.instance == "i-2"
        assert d.tee is False  # cold clones: fill, then serve
        assert not rt.lfs.enabled
        # a flow now gets a tenant partition
        f = git_flow("GET", "/org/repo.git/info/refs?service=git-upload-pack",
                     authorization="Bearer t0k")
        f.request.host, f.request.port = "b.example", 8443
        f.request.headers["host"] = "b.example:8443"
        f.server_conn.address, f.client_conn.sni = ("b.example", 8443), "b.example"
        addon.requestheaders(f)
        state = addon._flows[f]
        assert state.repo is not None and state.repo.partition.startswith("tenant:")
        for name, value in (("goblet_cache_dir", str(tmp_path / "elsewhere")),
                            ("goblet_metrics_port", "9999"), ("goblet_prefix_port", "9998"),
                            ("goblet_metrics_host", "127.0.0.2")):
            with pytest.raises(exceptions.OptionsError, match=f"{name}.*restart"):
                tctx.configure(addon, **{name: value})

    run(body, tmp_path)


def test_goblet_answers_are_sent_byte_for_byte() -> None:
    """An answer goblet makes or relays keeps its body as given, even a compressed one
    (an upstream's gzip answer relayed in offline mode was once compressed again)."""
    raw = gzip.compress(b"000eversion 2\n0000", mtime=0)
    resp = goblet_response(200, raw, [("Content-Type", "text/plain"), ("Content-Encoding", "gzip")])
    assert resp.raw_content == raw and resp.content == b"000eversion 2\n0000"
    assert resp.headers["content-length"] == str(len(raw))
    assert resp.status_code == 200 and resp.reason == "OK"
    assert goblet_response(404, b"", []).reason == "Not Found"
    framed = goblet_response(200, b"abc", [("Content-Length", "99"),
                                           ("Transfer-Encoding", "chunked")])
    assert framed.headers.get_all("content-length") == ["3"]
    assert "transfer-encoding" not in framed.headers
    checked = http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(
        [(b"Content-Type", b"text/plain"), (b"Content-Length", b"3")]), b"abc", None,
        resp.timestamp_start, resp.timestamp_end)  # (with mitmproxy's type checks)
    made = goblet_response(200, b"abc", [("Content-Type", "text/plain")])
    made.timestamp_start = made.timestamp_end = resp.timestamp_start
    assert made.get_state() == checked.get_state() and vars(made.data) == vars(checked.data)
    assert made.copy().get_state() == checked.get_state()


@pytest.mark.parametrize("upstream", [[], [(b"x-served-BY", b"spoofed"), (b"X-Served-By", b"2")]])
def test_an_answer_names_the_instance_once_whatever_upstream_sent(
        upstream: list[tuple[bytes, bytes]]) -> None:
    headers = http.Headers([(b"Content-Type", b"text/plain"), *upstream])
    set_header(headers, "X-Served-By", "edge-1")
    assert headers.get_all("x-served-by") == ["edge-1"]
    assert headers["content-type"] == "text/plain" and len(headers.fields) == 2


def test_clients_goblet_closes_are_remembered_as_its_doing() -> None:
    """A flow whose client goblet closed (a deadline, a stalled fill) must not be counted
    as abandoned by its client."""
    with taddons.context():
        close_client("client-a")
    assert closed_by_goblet("client-a") and not closed_by_goblet("client-b")


def test_an_open_proxy_is_refused_before_anything_listens_and_when_asked_later(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """At start-up a refusal is one error line and mitmproxy's server off (nothing is
    bound; mitmproxy's start-up check then exits); once running, a change that would open
    the proxy raises OptionsError, which makes mitmproxy keep the old values."""

    async def main() -> None:
        starting = Goblet()
        with taddons.context(proxyserver.Proxyserver(), starting) as tctx:
            tctx.configure(starting, goblet_cache_dir=str(tmp_path / "a"), listen_host="0.0.0.0")
            assert tctx.options.server is False
            await starting.running()
            assert starting.rt is None  # refused: no runtime, no "goblet ready"
        refusals = [r for r in caplog.records if "refusing to start" in r.getMessage()]
        assert len(refusals) == 1 and refusals[0].levelname == "ERROR"
        assert refusals[0].exc_info is None  # one line, no traceback
        running = Goblet()
        with taddons.context(proxyserver.Proxyserver(), running) as tctx:
            tctx.configure(running, goblet_cache_dir=str(tmp_path / "b"),
                           listen_host="127.0.0.1")
            await running.running()
            try:
                assert running.rt is not None and tctx.options.server is True
                with pytest.raises(exceptions.OptionsError, match="refusing to start"):
                    tctx.configure(running, listen_host="0.0.0.0")
                assert tctx.options.server is True
            finally:
                await running.done()

    asyncio.run(main())


def test_before_the_runtime_is_up_the_prefix_port_refuses_and_the_proxy_port_passes_on(
        tmp_path: Path) -> None:
    """The path-prefix port never relays, not even while goblet starts (it is exempt
    from the open-proxy check for that); the proxy port passes requests on untouched."""

    async def main() -> None:
        addon = Goblet()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, goblet_cache_dir=str(tmp_path / "cache"),
                           goblet_hosts=[HOST], goblet_prefix_port="18081")
            assert addon.rt is None  # (not running yet)
            relayed = tflow.tflow(req=tutils.treq(host="10.9.9.2", port=8000, path=b"/"))
            relayed.client_conn.sockname = ("0.0.0.0", 18081)
            addon.requestheaders(relayed)
            assert relayed.response is not None and relayed.response.status_code == 503
            assert not relayed.request.stream
            passed = tflow.tflow(req=tutils.treq(host="10.9.9.2", port=8000, path=b"/"))
            passed.client_conn.sockname = ("127.0.0.1", 8080)
            addon.requestheaders(passed)
            assert passed.response is None and passed.request.stream

    asyncio.run(main())
