"""FlowPolicy, step by step: the state of a flow, where its request goes, the budget of held
bodies, and offline mode's own forwarding of ref requests.

The running parts are fakes (``policy/fakes``, ``offline/fakes``) except the tenant keyer,
the metrics and the store's naming of cache repos.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from goblet.auth.credentials import ANONYMOUS, Credential, TenantKeyer, credential_from_headers
from goblet.cache.store import RepoStore
from goblet.decide import Decision, Route
from goblet.git.runner import GitRunner
from goblet.observe.endpoints import Answer
from goblet.observe.metrics import Metrics
from goblet.offline.ask import UpstreamAsker
from goblet.offline.forward import UpstreamUnreachable
from goblet.offline.state import UpstreamState
from goblet.policy.bodies import BUSY, BUSY_RAW, PASSED_ON
from goblet.policy.flows import FlowState, Kind, Outcome
from goblet.policy.gate import Action, FlowPolicy, Reply, Serve, Upstream
from goblet.policy.offline import SERVICE_PREAMBLE
from goblet.policy.refcache import CachedRefs
from goblet.policy.requests import Classified
from goblet.protocol import pktline, request
from goblet.protocol.errors import ProtocolError
from goblet.protocol.request import NO_REF_PREFIX, cache_identity
from goblet.protocol.routes import RESULT_TYPE
from goblet.serve.plans import ServePlan

from tests.support.rawhttp import pkt, v2_fetch_body, v2_ls_refs_body
from tests.unit.fakes import settings_for
from tests.unit.offline.fakes import FakeForwarder, answer
from tests.unit.policy.fakes import Decider, Planner

HOST = "git.example"
REPO_PATH = "/org/repo.git"
UPLOAD = REPO_PATH + "/git-upload-pack"
INFO_REFS = REPO_PATH + "/info/refs?service=git-upload-pack"
V2 = "version=2"
OID = "1" * 40
ALICE = [("Authorization", "Bearer a"), ("User-Agent", "git/2.39.5"), ("Git-Protocol", V2)]
BOB = [("Authorization", "Bearer b")]
LS = v2_ls_refs_body()
FETCH = v2_fetch_body(OID)
V0_FETCH = pkt(f"want {OID} multi_ack_detailed side-band-64k") + b"0000" + pkt("done")
KEYER = TenantKeyer(b"k" * 32)


class Refs:
    """RefsFromCache as told: what ``answer`` gives (a ProtocolError is raised), a notice."""

    def __init__(self, got: object = None, notice: str | None = None) -> None:
        self.got, self.notice = got, notice
        self.asked: list[FlowState] = []

    async def answer(self, state: FlowState, git_protocol: str | None) -> Any:
        self.asked.append(state)
        if isinstance(self.got, ProtocolError):
            raise self.got
        return self.got

    def notice_for(self, tenant: str, key: str) -> str | None:
        return self.notice


class Gate:
    """A FlowPolicy over fakes; ``settings`` may be changed between requests."""

    def __init__(self, root: Path, pool: ThreadPoolExecutor, *, cap: int = 1 << 20,
                 offline: bool = False, isolation: str = "shared", refs: Refs | None = None,
                 forwarder: FakeForwarder | None = None) -> None:
        self.settings = settings_for(root, max_request_bytes=cap, offline=offline,
                                     isolation=isolation)
        self.decider, self.planner, self.metrics = Decider(), Planner(), Metrics()
        self.endpoints: list[str] = []
        asker = (UpstreamAsker(forwarder, UpstreamState())  # type: ignore[arg-type]
                 if forwarder else None)
        self.policy = FlowPolicy(
            lambda: self.settings, keyer=KEYER,
            store=RepoStore(root / "cache", GitRunner(home=root / "home")),
            decider=self.decider, asker=asker, metrics=self.metrics,  # type: ignore[arg-type]
            inspector=pool, planner=self.planner, endpoints=self.endpoint,
            refs=refs)  # type: ignore[arg-type]

    async def endpoint(self, path: str) -> Answer:
        self.endpoints.append(path)
        return Answer(200, "text/plain; version=0.0.4", b"goblet_up 1\n")

    def state(self, kind: Kind = Kind.UPLOAD_PACK, headers: list[tuple[str, str]] = ALICE, *,
              host: str = HOST, port: int = 443, git_protocol: str | None = V2,
              proxy_login: tuple[str, str] | None = None,
              proxyauth: str | None = None) -> FlowState:
        return self.policy.state_for(Classified(kind, REPO_PATH), host, port, headers=headers,
                                     proxy_login=proxy_login, proxyauth=proxyauth,
                                     git_protocol=git_protocol)

    def route(self, state: FlowState, body: bytes | None = None, *, enc: str | None = None,
              streamed: bool = False, method: str = "POST", path: str = UPLOAD,
              git_protocol: str | None = V2) -> Action:
        return asyncio.run(self.policy.route(
            state, method=method, path=path, streamed=streamed, headers=ALICE, raw=body,
            enc=enc, git_protocol=git_protocol))

    def bodies(self, result: str) -> float:
        """How many request bodies ended as ``result`` (``goblet_request_bodies_total``)."""
        return float(self.metrics.request_bodies.labels(result)._value.get())


@pytest.fixture
def gate(tmp_path: Path, pool: ThreadPoolExecutor) -> Gate:
    return Gate(tmp_path, pool)


# ------------------------------------------------------------------------------ state_for


def test_the_state_names_who_asks_for_which_repo_in_which_version(gate: Gate) -> None:
    state = gate.state()
    credential = credential_from_headers(ALICE)
    assert credential.headers == (("authorization", "Bearer a"),)  # git's own headers: none
    assert (state.kind, state.credential, state.tenant) == (
        Kind.UPLOAD_PACK, credential, KEYER.tenant_id(credential))
    assert state.repo is not None and state.repo.url == "https://git.example/org/repo.git"
    assert (state.repo.partition, state.host, state.version) == ("", HOST, 2)
    assert gate.state(headers=[], git_protocol=None).tenant == ANONYMOUS
    assert gate.state(git_protocol=None).version == 0
    assert gate.state(git_protocol="version=1").version == 1


@pytest.mark.parametrize(("host", "port", "url", "named"), [
    ("Git.Example", 443, "https://git.example/org/repo.git", "git.example"),
    ("git.example", 8443, "https://git.example:8443/org/repo.git", "git.example:8443"),
    ("::1", 8443, "https://[::1]:8443/org/repo.git", "[::1]:8443"),
])
def test_the_repo_url_and_host_are_canonical(gate: Gate, host: str, port: int, url: str,
                                             named: str) -> None:
    state = gate.state(host=host, port=port)
    assert state.repo is not None and (state.repo.url, state.host) == (url, named)


def partition(gate: Gate, headers: list[tuple[str, str]],
              login: tuple[str, str] | None = None, proxyauth: str | None = None) -> str:
    state = gate.state(headers=headers, proxy_login=login, proxyauth=proxyauth)
    assert state.repo is not None
    return state.repo.partition


@pytest.mark.parametrize("mode", ["shared", "public"])
def test_shared_modes_share_one_cache_repo(gate: Gate, mode: str) -> None:
    gate.settings = replace(gate.settings, isolation=mode)
    assert partition(gate, ALICE) == partition(gate, BOB) == ""


def test_tenant_isolation_gives_each_tenant_its_own_repo(gate: Gate) -> None:
    gate.settings = replace(gate.settings, isolation="tenant")
    alice = partition(gate, ALICE)
    assert alice == "tenant:" + KEYER.tenant_id(credential_from_headers(ALICE))
    assert partition(gate, BOB) != alice


def test_user_isolation_trusts_only_verified_proxy_logins(gate: Gate) -> None:
    gate.settings = replace(gate.settings, isolation="user")
    verified = partition(gate, ALICE, ("carol", "pw1"), "@/etc/users.htpasswd")
    assert verified.startswith("user:")
    assert partition(gate, BOB, ("carol", "pw2"), "@/etc/users.htpasswd") == verified
    # proxyauth=any accepts every name: the login is only part of the tenant
    claimed = gate.state(proxy_login=("carol", "pw1"), proxyauth="any")
    assert claimed.repo is not None and claimed.repo.partition == "tenant:" + claimed.tenant


# ------------------------------------------------------------------------------ route


@pytest.mark.parametrize(("method", "body"), [("GET", b"goblet_up 1\n"), ("HEAD", b"")])
def test_endpoints_are_answered_and_never_cached(gate: Gate, method: str, body: bytes) -> None:
    got = gate.route(gate.state(Kind.ENDPOINT), method=method, path="/metrics")
    assert got == Reply(200, body, (("Content-Type", "text/plain; version=0.0.4"),
                                    ("Cache-Control", "no-store")))
    assert gate.endpoints == ["/metrics"]


def test_an_invalid_request_is_refused_with_one_short_line(gate: Gate) -> None:
    state = FlowState(Kind.INVALID, reason="bad request:\r\n  header\tfolded " + "x" * 400)
    got = gate.route(state, b"")
    assert isinstance(got, Reply) and (got.status, got.outcome) == (400, Outcome.ERROR)
    assert got.body.startswith(b"goblet: bad request: header folded xxx")
    assert got.body.endswith(b"\n") and got.body.count(b"\n") == 1 and len(got.body) == 301
    assert got.headers == (("Content-Type", "text/plain; charset=utf-8"),)


def test_online_ref_requests_and_streamed_bodies_go_upstream_unread(gate: Gate) -> None:
    assert gate.route(gate.state(Kind.INFO_REFS), method="GET", path=INFO_REFS) == Upstream()
    state = gate.state()
    assert gate.route(state, b"garbage", streamed=True) == Upstream()
    assert state.kind is Kind.UPLOAD_PACK and state.body == b"" and gate.decider.asked == []
    assert gate.bodies("inspected") == gate.bodies("invalid") == 0


# ------------------------------------------------------------------------------ upload-pack


def test_a_fetch_the_cache_can_answer_is_served(gate: Gate) -> None:
    gate.decider.decision = Decision(Route.CACHE, "all wants cached")
    state = gate.state()
    got = gate.route(state, FETCH)
    assert isinstance(got, Serve) and got.outcome is Outcome.CACHE
    assert (got.plan.body, got.plan.git_protocol, got.plan.notice) == (FETCH, V2, None)
    assert gate.planner.asked == [{"notice": None, "final": True, "tags": None,
                                   "untagged": None, "identity": cache_identity(FETCH)}]
    (asked,) = gate.decider.asked
    assert asked.wants == (OID,) and asked.version == 2
    assert (state.kind, state.reason, state.body) == (Kind.FETCH, "all wants cached", FETCH)
    assert gate.bodies("inspected") == 1


@pytest.mark.parametrize(("git_protocol", "body", "served"), [
    (V2, v2_fetch_body(OID, extra=("include-tag",)), FETCH),
    (None, pkt(f"want {OID} multi_ack_detailed include-tag side-band-64k") + b"0000"
     + pkt("done"), V0_FETCH),
    (None, pkt(f"want {OID} multi_ack_detailed side-band-64k include-tag=1") + b"0000"
     + pkt("done"), V0_FETCH),
], ids=["v2", "v0", "v0-with-value"])
def test_a_fetch_the_cache_answers_follows_tags_only_as_decided(
        gate: Gate, git_protocol: str | None, body: bytes, served: bytes) -> None:
    # upload-pack would add the tag object of every cached tag pointing into the pack,
    # listed to this credential or not
    gate.decider.decision = Decision(Route.CACHE, "all wants cached")
    got = gate.route(gate.state(git_protocol=git_protocol), body)
    assert isinstance(got, Serve) and got.plan.body == served
    (asked,) = gate.decider.asked
    assert asked.include_tag
    assert gate.planner.asked[-1]["final"] is True  # (may be shared: the pack cache)
    assert got.plan.tags is None
    tags = frozenset({("refs/tags/v1", OID)})
    gate.decider.decision = Decision(Route.CACHE, "all wants cached", tags=tags)
    got = gate.route(gate.state(git_protocol=git_protocol), body)
    assert isinstance(got, Serve) and got.plan.body == body  # (rule 8: in a tag view)
    assert got.plan.tags == tags
    assert gate.planner.asked[-1]["final"] is True  # (the pack cache keys it by its tags)
    assert got.plan.untagged is None  # (no haves: a clone never backfills tags)
    # following no tag at all is answering without include-tag (no view, may be shared)
    gate.decider.decision = Decision(Route.CACHE, "all wants cached", tags=frozenset())
    got = gate.route(gate.state(git_protocol=git_protocol), body)
    assert isinstance(got, Serve) and got.plan.body == served and got.plan.tags is None
    assert gate.planner.asked[-1]["final"] is True
    # the pack-cache identity is always that of the body served
    assert [a["identity"] for a in gate.planner.asked] == [
        cache_identity(served), cache_identity(body), cache_identity(served)]


@pytest.mark.parametrize("padding", [10, 100_000])
def test_every_walk_over_a_large_fetch_body_is_made_off_the_event_loop(
        gate: Gate, padding: int) -> None:
    """A body of many tiny pkt-lines costs about 0.5 ms per KiB for each walk over it
    (parse, pack-cache identity, dropping include-tag): one over INLINE_REQUEST_BYTES is
    walked in a worker thread, whatever the route."""
    body = v2_fetch_body(OID, extra=("include-tag",)).removesuffix(b"0000") \
        + pkt("done") * padding + b"0000"
    walked: list[str] = []
    real = (request.cache_identity, request.without_include_tag)

    def spy(name: str, fn: Any) -> Any:
        def wrapped(data: bytes) -> Any:
            walked.append(threading.current_thread().name)
            return fn(data)
        return wrapped

    gate.decider.decision = Decision(Route.CACHE, "all wants cached", tags=frozenset())
    with mock.patch.object(request, "cache_identity", spy("identity", real[0])), \
            mock.patch.object(request, "without_include_tag", spy("untag", real[1])):
        got = gate.route(gate.state(), body)
    assert isinstance(got, Serve) and got.plan.body == real[1](body)
    assert gate.planner.asked[-1]["identity"] == real[0](got.plan.body)
    loop_thread = threading.main_thread().name
    assert walked and all((t == loop_thread) is (padding == 10) for t in walked), walked


def test_a_fetch_with_haves_following_tags_may_do_without_when_no_view_can_be_made(
        gate: Gate) -> None:
    body = v2_fetch_body(OID, extra=("include-tag", f"have {'b' * 40}"))
    tags = frozenset({("refs/tags/v1", OID)})
    gate.decider.decision = Decision(Route.CACHE, "all wants cached", tags=tags)
    got = gate.route(gate.state(), body)
    assert isinstance(got, Serve) and got.plan.body == body and got.plan.tags == tags
    assert got.plan.untagged == v2_fetch_body(OID, extra=(f"have {'b' * 40}",))


def test_a_fetch_is_read_in_the_clients_protocol_version_and_encoding(gate: Gate) -> None:
    gate.decider.decision = Decision(Route.CACHE, "all wants cached")
    got = gate.route(gate.state(git_protocol=None), gzip.compress(V0_FETCH), enc="gzip",
                     git_protocol=None)
    assert isinstance(got, Serve) and got.plan.body == V0_FETCH
    assert gate.decider.asked[0].version == 0 and gate.decider.asked[0].wants == (OID,)


@pytest.mark.parametrize("header", ["version=2 --upload-pack=evil", "version=2:x/y",
                                    "version=2:" + "k" * 300])
def test_a_git_protocol_upload_pack_must_not_see_leaves_the_request_upstream(
        gate: Gate, header: str) -> None:
    """goblet's upload-pack would run without it (in protocol v0), so the request is
    neither read as v2 nor answered from the cache: the upstream reads it as git does."""
    gate.decider.decision = Decision(Route.CACHE, "all wants cached")
    state = gate.state(git_protocol=header)
    got = gate.route(state, FETCH, git_protocol=header)
    assert isinstance(got, Upstream) and gate.decider.asked == []
    assert state.kind is Kind.UPLOAD_PACK and "Git-Protocol" in state.reason


@pytest.mark.parametrize(("header", "version"), [
    (None, 0), ("", 0), ("version=2", 2), ("version=1", 1), ("version=3", 0),
    ("version=1:version=2", 2), ("version=2:version=1", 2), ("object-format=sha1:version=2", 2),
])
def test_a_request_is_read_in_the_version_its_upload_pack_answers_in(
        gate: Gate, header: str | None, version: int) -> None:
    """git's server takes the highest ``version=`` it knows: so does goblet."""
    assert gate.state(git_protocol=header).version == version


def test_an_answer_given_offline_says_so(gate: Gate) -> None:
    gate.decider.decision = Decision(Route.CACHE, "offline", notice="goblet: upstream down")
    got = gate.route(gate.state(), FETCH)
    assert isinstance(got, Serve) and got.outcome is Outcome.OFFLINE
    assert got.plan.notice == "goblet: upstream down"


def test_a_fetch_after_refs_from_the_cache_is_told_their_age(tmp_path: Path,
                                                             pool: ThreadPoolExecutor) -> None:
    refs = Refs(notice="goblet: refs from cache, 3 s old")
    gate = Gate(tmp_path, pool, refs=refs)
    gate.decider.decision = Decision(Route.CACHE, "all wants cached")
    got = gate.route(gate.state(), FETCH)
    assert isinstance(got, Serve) and got.outcome is Outcome.CACHE
    assert got.plan.notice == "goblet: refs from cache, 3 s old" and refs.asked == []


@pytest.mark.parametrize("route", [Route.UPSTREAM, Route.TEE])
def test_a_fetch_going_upstream_lets_its_body_go(gate: Gate, route: Route) -> None:
    tee: Any = object() if route is Route.TEE else None
    gate.decider.decision = Decision(route, "not cached", tee=tee)
    state = gate.state()
    got = gate.route(state, FETCH)
    assert isinstance(got, Upstream) and got.tee is tee
    assert (state.kind, state.body, state.held) == (Kind.FETCH, b"", 0)


def test_a_fetch_goblet_refuses_gets_a_git_error(gate: Gate) -> None:
    gate.decider.decision = Decision(Route.ERROR, "goblet: upstream unreachable, not cached")
    got = gate.route(gate.state(), FETCH)
    assert got == Reply(200, pktline.error_packet("goblet: upstream unreachable, not cached"),
                        (("Content-Type", RESULT_TYPE),), Outcome.ERROR)


def test_an_ls_refs_is_read_then_goes_upstream(gate: Gate) -> None:
    state = gate.state()
    assert gate.route(state, LS) == Upstream()
    assert state.kind is Kind.LS_REFS and gate.decider.asked == []
    assert (state.body, state.held) == (b"", 0)  # going upstream: let go at once
    assert state.ls_refs is not None and state.ls_refs.ref_prefixes == ("HEAD", "refs/heads/")


@pytest.mark.parametrize(("body", "enc", "message"), [
    (b"00zz", None, b"goblet: malformed request: "),
    (gzip.compress(FETCH)[:-4], "gzip", b"goblet: undecodable request body: "),
])
def test_a_body_that_cannot_be_read_is_refused(gate: Gate, body: bytes, enc: str | None,
                                               message: bytes) -> None:
    got = gate.route(gate.state(), body, enc=enc)
    assert isinstance(got, Reply) and (got.status, got.outcome) == (400, Outcome.ERROR)
    assert got.body.startswith(message) and gate.decider.asked == []


@pytest.mark.parametrize(("body", "enc", "result"), [
    (None, None, "too_large"),  # mitmproxy streamed it
    (FETCH + b"0000" * 300, None, "too_large"),
    (FETCH, "br", "not_decoded"),
])
def test_a_body_goblet_does_not_inspect_passes_through(
        tmp_path: Path, pool: ThreadPoolExecutor, body: bytes | None, enc: str | None,
        result: str) -> None:
    gate = Gate(tmp_path, pool, cap=1024)
    state = gate.state()
    assert gate.route(state, body, enc=enc) == Upstream()
    assert state.kind is Kind.UPLOAD_PACK and state.reason and gate.decider.asked == []
    assert (state.reason == PASSED_ON) is (result == "too_large")
    assert gate.bodies(result) == 1


# ------------------------------------------------------------------------------ body budget


def fetch_held(gate: Gate) -> FlowState:
    """A fetch answered from the cache, which holds its body while it is served; its
    state (the body read, or passed on as busy)."""
    state = gate.state()
    gate.route(state, FETCH)
    return state


@pytest.fixture
def tight(tmp_path: Path, pool: ThreadPoolExecutor) -> Gate:
    """A gate whose cap is one fetch body (the budget holds exactly two) and whose fetches
    are answered from the cache."""
    gate = Gate(tmp_path, pool, cap=len(FETCH))
    gate.decider.decision = Decision(Route.CACHE, "as told")
    return gate


def test_bodies_held_at_once_share_twice_the_cap(tight: Gate) -> None:
    first, second, third = fetch_held(tight), fetch_held(tight), fetch_held(tight)
    assert first.kind is second.kind is Kind.FETCH and first.held == len(FETCH)
    assert (third.kind, third.body, third.held, third.reason) == (
        Kind.UPLOAD_PACK, b"", 0, BUSY)  # passed through uninspected
    assert tight.bodies("busy") == 1 and tight.bodies("inspected") == 2
    tight.policy.release(first)
    assert (first.held, first.body) == (0, b"")
    assert fetch_held(tight).kind is Kind.FETCH
    assert fetch_held(tight).kind is Kind.UPLOAD_PACK


def test_bodies_mitmproxy_holds_while_they_arrive_share_twice_the_cap(tight: Gate) -> None:
    """From the head on, a held body takes its Content-Length of the budget (the cap when
    it announces none); over it, the body is passed on unread. Bodiless requests and
    bodies streamed anyway take nothing; ``release`` gives a body's share back."""
    cap = len(FETCH)

    def intake(length: str, *, body: bool = True, streamed: bool = False) -> FlowState:
        state = tight.state()
        got = tight.policy.intake(state, length, streamed=streamed, body=body)
        assert got.stream is (state.raw_held == 0 and body), (got, state)
        return state

    first, second = intake(str(cap)), intake("")  # announced, then not: the cap
    assert (first.raw_held, second.raw_held) == (cap, cap)
    assert intake("0", body=False).raw_held == 0  # no body: nothing held
    assert intake(str(cap + 1)).reason == ""  # over the cap: streamed by its own rule
    third = intake("1")
    assert (third.raw_held, third.reason) == (0, BUSY_RAW) and tight.bodies("busy") == 1
    tight.policy.release(first)  # (sent upstream: mitmproxy still holds the body)
    assert first.raw_held == cap and intake("1").reason == BUSY_RAW
    tight.policy.release(first, ended=True)
    assert first.raw_held == 0 and intake("1").raw_held == 1
    info_refs = tight.state(Kind.INFO_REFS)  # (an HTTP/2 GET "may have a body")
    assert not tight.policy.intake(info_refs, "", streamed=False, body=True).stream
    assert info_refs.raw_held == 0


def test_a_body_s_share_comes_down_to_what_arrived_and_goes_when_the_cache_answers(
        tight: Gate) -> None:
    """A chunked body takes the cap until it has arrived, then its size; one the cache
    answers gives its share back at once (the flow's body is dropped)."""
    upstream, served = tight.state(), tight.state()
    for state in (upstream, served):
        tight.policy.intake(state, "", streamed=False, body=True)
        assert state.raw_held == len(FETCH)
    tight.decider.decision = Decision(Route.UPSTREAM, "not cached")
    small = pkt("command=fetch") + b"0001" + pkt(f"want {OID}") + pkt("done") + b"0000"
    assert len(small) < len(FETCH)
    assert tight.route(upstream, small) == Upstream()
    assert upstream.raw_held == len(small)  # held by mitmproxy until the request ends
    tight.decider.decision = Decision(Route.CACHE, "as told")
    assert isinstance(tight.route(served, FETCH), Serve) and served.raw_held == 0


def test_releasing_twice_frees_a_share_once(tight: Gate) -> None:
    first, _ = fetch_held(tight), fetch_held(tight)
    tight.policy.release(first)
    tight.policy.release(first)
    assert fetch_held(tight).kind is Kind.FETCH
    assert fetch_held(tight).kind is Kind.UPLOAD_PACK


@pytest.mark.parametrize(("route", "read"), [(Route.UPSTREAM, 5), (Route.CACHE, 2)])
def test_only_bodies_going_upstream_are_let_go_at_once(tmp_path: Path,
                                                       pool: ThreadPoolExecutor, route: Route,
                                                       read: int) -> None:
    gate = Gate(tmp_path, pool, cap=len(FETCH))
    gate.decider.decision = Decision(route, "as told")
    for _ in range(5):
        gate.route(gate.state(), FETCH)
    assert len(gate.decider.asked) == read and gate.bodies("busy") == 5 - read


def test_an_ls_refs_going_upstream_is_let_go_at_once(tmp_path: Path,
                                                     pool: ThreadPoolExecutor) -> None:
    """Slow ls-refs going upstream never spend the budget of the fetches after them."""
    gate = Gate(tmp_path, pool, cap=len(LS))
    states = [gate.state() for _ in range(3)]
    for state in states:
        assert gate.route(state, LS) == Upstream()
    assert [(s.kind, s.held) for s in states] == [(Kind.LS_REFS, 0)] * 3
    assert gate.bodies("inspected") == 3 and gate.bodies("busy") == 0


def test_a_large_ls_refs_question_is_not_kept_while_its_answer_comes(
        tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    """Its ``ref-prefix`` lines (a client may send 65,535, up to the cap) would stay in
    memory until the answer is read: over KEPT_PREFIX_CHARS they are replaced by one no
    ref starts with, and the body's share is let go at once like any other's."""
    big = v2_ls_refs_body(prefixes=tuple(f"refs/x/{i:05d}" for i in range(6000)))
    gate = Gate(tmp_path, pool, cap=len(big))
    state = gate.state()
    assert gate.route(state, big) == Upstream()
    assert state.ls_refs is not None and state.ls_refs.ref_prefixes == (NO_REF_PREFIX,)
    assert (state.held, state.body, gate.bodies("inspected")) == (0, b"", 1)
    small = gate.state()
    assert gate.route(small, LS) == Upstream()
    assert small.ls_refs is not None and small.ls_refs.ref_prefixes == ("HEAD", "refs/heads/")
    many = v2_ls_refs_body(prefixes=("",) * 2000)  # (no text at all, but many lines)
    gate = Gate(tmp_path, pool, cap=len(many))
    state = gate.state()
    assert gate.route(state, many) == Upstream()
    assert state.ls_refs is not None and state.ls_refs.ref_prefixes == (NO_REF_PREFIX,)


# ------------------------------------------------------------------------------ refs from the cache


@pytest.mark.parametrize(("kind", "body"), [(Kind.INFO_REFS, None), (Kind.UPLOAD_PACK, LS)])
def test_refs_held_in_memory_are_answered_as_they_are(tmp_path: Path, pool: ThreadPoolExecutor,
                                                      kind: Kind, body: bytes | None) -> None:
    gate = Gate(tmp_path, pool, refs=Refs(CachedRefs(b"0000", RESULT_TYPE)))
    got = gate.route(gate.state(kind), body)
    assert got == Reply(200, b"0000", (("Content-Type", RESULT_TYPE),
                                       ("Cache-Control", "no-cache")), Outcome.CACHE)


def test_refs_the_cache_repo_answers_are_served(tmp_path: Path,
                                                pool: ThreadPoolExecutor) -> None:
    plan = ServePlan(tmp_path, LS, V2, "https://git.example/org/repo.git")
    refs = Refs(plan)
    gate = Gate(tmp_path, pool, refs=refs)
    state = gate.state()
    assert gate.route(state, LS) == Serve(plan, Outcome.CACHE)
    assert refs.asked == [state] and state.kind is Kind.LS_REFS


def test_a_bad_client_option_for_cached_refs_is_a_git_error(tmp_path: Path,
                                                            pool: ThreadPoolExecutor) -> None:
    gate = Gate(tmp_path, pool, refs=Refs(ProtocolError("bad goblet-max-age")))
    got = gate.route(gate.state(), LS)
    assert got == Reply(200, pktline.error_packet("goblet: bad goblet-max-age"),
                        (("Content-Type", RESULT_TYPE),), Outcome.ERROR)


def test_refs_the_cache_does_not_answer_go_upstream(tmp_path: Path,
                                                    pool: ThreadPoolExecutor) -> None:
    gate = Gate(tmp_path, pool, refs=Refs(None))
    assert gate.route(gate.state(), LS) == Upstream()


# ------------------------------------------------------------------------------ offline forwarding

UNREACHABLE = UpstreamUnreachable("Connection refused")
INFO = pkt("# service=git-upload-pack") + b"0000"


def offline(tmp_path: Path, pool: ThreadPoolExecutor, client: object,
            own: object) -> tuple[Gate, FakeForwarder]:
    """An offline-mode gate whose upstream answers the client's request with ``client``
    and goblet's own (no credential) with ``own``."""
    fwd = FakeForwarder(client, own)
    return Gate(tmp_path, pool, offline=True, forwarder=fwd), fwd


def info_refs(gate: Gate, version: int = 0, header: str | None = None
              ) -> tuple[FlowState, Action]:
    """An info/refs request in protocol ``version`` (or with the Git-Protocol ``header``)."""
    header = header if header is not None else V2 if version == 2 else None
    state = gate.state(Kind.INFO_REFS, git_protocol=header)
    return state, gate.route(state, None, method="GET", path=INFO_REFS, git_protocol=header)


def test_online_goblet_forwards_nothing(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    fwd = FakeForwarder(UNREACHABLE, UNREACHABLE)
    gate = Gate(tmp_path, pool, forwarder=fwd)
    assert info_refs(gate)[1] == Upstream() and fwd.sent == []


@pytest.mark.parametrize("status", [200, 302, 401, 404])
def test_offline_goblet_forwards_ref_requests_and_relays_any_answer_below_500(
        tmp_path: Path, pool: ThreadPoolExecutor, status: int) -> None:
    gate, fwd = offline(tmp_path, pool, answer(status, INFO), UNREACHABLE)
    _, got = info_refs(gate)
    assert got == Reply(status, INFO, (("Content-Type",
                                        "application/x-git-upload-pack-advertisement"),))
    assert fwd.sent == [("https://git.example" + INFO_REFS, ALICE)]  # no outage check


def test_an_ls_refs_is_forwarded_with_its_body_as_received(tmp_path: Path,
                                                           pool: ThreadPoolExecutor) -> None:
    gate, fwd = offline(tmp_path, pool, answer(200, b"0000", RESULT_TYPE), UNREACHABLE)
    raw = gzip.compress(LS)
    got = gate.route(gate.state(), raw, enc="gzip")
    assert isinstance(got, Reply) and got.status == 200
    assert fwd.sent[0][0] == "https://git.example" + UPLOAD and fwd.bodies == [raw]


@pytest.mark.parametrize(("client", "expected"), [
    (UNREACHABLE, Upstream()),  # mitmproxy sends it once more, as without goblet
    (answer(503, b"busy"), Reply(503, b"busy", (("Content-Type",
                                                 "application/x-git-upload-pack-advertisement"),))),
])
def test_a_failure_goblets_own_request_does_not_share_is_no_outage(
        tmp_path: Path, pool: ThreadPoolExecutor, client: object, expected: Action) -> None:
    gate, fwd = offline(tmp_path, pool, client, answer(401))
    gate.decider.may = True  # it could serve offline: it must not
    state, got = info_refs(gate)
    assert got == expected and state.reason == "" and gate.planner.asked == []
    assert [headers for _, headers in fwd.sent[1:]] == [[("User-Agent", "git/goblet")]]


@pytest.mark.parametrize(("version", "header", "prefix", "hidden"), [
    (0, None, SERVICE_PREAMBLE, ("HEAD", "refs/heads/secret")),
    (2, None, b"", ()),  # a capability advertisement shows no refs to hide
    # upload-pack runs without a header it must not see, so it lists refs (in v0): hidden
    (2, "version=2:x/y", SERVICE_PREAMBLE, ("HEAD", "refs/heads/secret")),
])
def test_an_outage_goblet_confirms_is_answered_from_the_cache(
        tmp_path: Path, pool: ThreadPoolExecutor, version: int, header: str | None,
        prefix: bytes, hidden: tuple[str, ...]) -> None:
    gate, fwd = offline(tmp_path, pool, UNREACHABLE, UNREACHABLE)
    gate.decider.may, gate.decider.hidden = True, ("HEAD", "refs/heads/secret")
    state, got = info_refs(gate, version, header)
    assert isinstance(got, Serve) and got.outcome is Outcome.OFFLINE
    assert gate.planner.asked == [{"advertise": True, "prefix": prefix, "hidden_refs": hidden,
                                   "drop_head_symref": "HEAD" in hidden}]
    assert state.reason == "upstream unreachable: Connection refused"
    assert len(fwd.sent) == 3  # the client's request, then goblet's own twice


def test_an_offline_ls_refs_is_answered_with_its_body(tmp_path: Path,
                                                      pool: ThreadPoolExecutor) -> None:
    gate, _ = offline(tmp_path, pool, answer(502), UNREACHABLE)
    gate.decider.may = True
    state = gate.state()
    got = gate.route(state, LS)
    assert isinstance(got, Serve) and got.plan.body == LS and not got.plan.advertise
    assert state.reason == "upstream answered 502"


def test_without_a_grant_the_failed_answer_is_passed_on(tmp_path: Path,
                                                        pool: ThreadPoolExecutor) -> None:
    gate, _ = offline(tmp_path, pool, answer(503, b"down"), answer(503))
    state, got = info_refs(gate)
    assert isinstance(got, Reply) and (got.status, got.body) == (503, b"down")
    assert got.reason == state.reason == "upstream answered 503"


def test_without_a_grant_or_an_answer_goblet_says_502(tmp_path: Path,
                                                      pool: ThreadPoolExecutor) -> None:
    gate, _ = offline(tmp_path, pool, UNREACHABLE, UNREACHABLE)
    _, got = info_refs(gate)
    assert isinstance(got, Reply) and (got.status, got.outcome) == (502, Outcome.ERROR)
    assert got.body == b"goblet: upstream unreachable: Connection refused\n"


def test_the_last_refusal_is_repeated_with_its_challenge(tmp_path: Path,
                                                         pool: ThreadPoolExecutor) -> None:
    gate, _ = offline(tmp_path, pool, UNREACHABLE, UNREACHABLE)
    state = gate.state(Kind.INFO_REFS)
    assert state.repo is not None
    gate.decider.verdicts.record(state.tenant, state.repo.url, granted=False, status=401,
                                 challenge='Basic realm="git"')
    _, got = info_refs(gate)
    assert isinstance(got, Reply) and got.status == 401
    assert ("WWW-Authenticate", 'Basic realm="git"') in got.headers


def test_a_request_that_cannot_be_forwarded_is_refused(tmp_path: Path,
                                                       pool: ThreadPoolExecutor) -> None:
    gate, fwd = offline(tmp_path, pool, ValueError("a request header cannot be forwarded"),
                        UNREACHABLE)
    _, got = info_refs(gate)
    assert isinstance(got, Reply) and got.status == 400
    assert got.body == b"goblet: bad request: a request header cannot be forwarded\n"
    assert len(fwd.sent) == 1


def test_credentials_stay_out_of_goblets_own_requests(tmp_path: Path,
                                                      pool: ThreadPoolExecutor) -> None:
    gate, fwd = offline(tmp_path, pool, UNREACHABLE, UNREACHABLE)
    info_refs(gate)
    assert all(dict(headers).keys() == {"User-Agent"} for _, headers in fwd.sent[1:])
    assert Credential() == gate.state(headers=[]).credential
