"""RefsFromCache: facts gathered per request, webhook marks, the notice of the fetch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from goblet.auth.verdicts import RefView, VerdictCache
from goblet.cache.store import CacheRepo, RepoState, refs_digest
from goblet.observe.metrics import Metrics
from goblet.policy.flows import FlowState, Kind
from goblet.policy.refcache import NOTICE_WINDOW, CachedRefs, RefsFromCache
from goblet.protocol.errors import ProtocolError
from goblet.protocol.request import UNREADABLE_VERSION, LsRefsRequest
from goblet.serve.plans import ServePlan
from goblet.serve.refanswers import TOO_LARGE, RefAnswers

A = "a" * 40
REPO = CacheRepo("https://h/r.git", "k", Path("/c/k.git"))
CLONE = LsRefsRequest(("HEAD", "refs/heads/"), peel=True, symrefs=True, unborn=False)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    def state(self, repo: CacheRepo) -> RepoState | None:
        return RepoState({"refs/heads/main": A}, "refs/heads/main", 0.0)


class Decider:
    def __init__(self, clock: Clock) -> None:
        self.verdicts = VerdictCache(60, clock=clock)
        self.store = Store()
        self.uncacheable: set[str] = set()
        self.heads = {"k": "refs/heads/main"}


def planner(repo: CacheRepo, body: bytes, git_protocol: str | None, *, advertise: bool,
            hidden_refs: tuple[str, ...], drop_head_symref: bool) -> ServePlan:
    return ServePlan(repo.path, body, git_protocol, repo.url, advertise=advertise,
                     hidden_refs=hidden_refs, drop_head_symref=drop_head_symref,
                     repo_key=repo.key)


@pytest.fixture
def world() -> tuple[RefsFromCache, Decider, Clock, Metrics]:
    clock, metrics = Clock(), Metrics()
    decider = Decider(clock)
    refs = RefsFromCache(decider, planner, metrics, lambda: 30.0,  # type: ignore[arg-type]
                         clock=clock)
    return refs, decider, clock, metrics


def answer(refs: RefsFromCache, state: FlowState, git_protocol: str | None = None) -> Any:
    """What ``RefsFromCache.answer`` gives (without ``RefAnswers``: the serve plan)."""
    return asyncio.run(refs.answer(state, git_protocol))


def ls_refs(tenant: str = "t", options: tuple[str, ...] = ()) -> FlowState:
    req = LsRefsRequest(CLONE.ref_prefixes, True, True, False, server_options=options)
    return FlowState(Kind.LS_REFS, repo=REPO, tenant=tenant, version=2, ls_refs=req,
                     body=b"0014command=ls-refs\n0000")


def grant(decider: Decider, tenant: str = "t") -> None:
    view = RefView.of({"HEAD": A, "refs/heads/main": A}, {}, complete=True)
    decider.verdicts.record(tenant, REPO.url, granted=True, view=view)


def test_a_granted_tenant_gets_cached_refs_and_its_fetch_is_told(world: Any) -> None:
    refs, decider, clock, metrics = world
    grant(decider)
    clock.now += 12
    plan = answer(refs, ls_refs(), "version=2")
    assert plan is not None and plan.hidden_refs == () and not plan.advertise
    assert metrics.refs_answers.labels("cache")._value.get() == 1
    assert refs.notice_for("t", "k") == "goblet: refs from cache, 12 s old"
    assert refs.notice_for("other", "k") is None
    clock.now += NOTICE_WINDOW + 1
    assert refs.notice_for("t", "k") is None


def test_other_tenants_and_stale_marks_go_upstream(world: Any) -> None:
    refs, decider, clock, metrics = world
    grant(decider)
    assert answer(refs, ls_refs("stranger"), None) is None
    clock.now += 1
    assert answer(refs, ls_refs(), None) is not None
    refs.mark_stale([REPO.url])
    state = ls_refs()
    assert answer(refs, state, None) is None and "webhook" in state.reason
    assert refs.notice_for("t", "k") is None  # the refs it got were the upstream's
    clock.now += 1
    grant(decider)  # the upstream listed refs again after the mark
    assert answer(refs, ls_refs(), None) is not None
    assert metrics.refs_answers.labels("upstream")._value.get() == 2


def test_client_options(world: Any) -> None:
    refs, decider, clock, _ = world
    grant(decider)
    clock.now += 5
    assert answer(refs, ls_refs(options=("goblet-max-age=0",)), None) is None
    assert answer(refs, ls_refs(options=("goblet-max-age=4",)), None) is None
    assert answer(refs, ls_refs(options=("goblet-max-age=600",)), None) is not None
    with pytest.raises(ProtocolError):
        answer(refs, ls_refs(options=("goblet-max-age=x",)), None)


def test_v0_and_no_ttl_go_upstream(world: Any) -> None:
    refs, decider, _, _ = world
    grant(decider)
    v0 = FlowState(Kind.INFO_REFS, repo=REPO, tenant="t", version=0)
    assert answer(refs, v0, None) is None
    v2 = FlowState(Kind.INFO_REFS, repo=REPO, tenant="t", version=2)
    plan = answer(refs, v2, None)
    assert plan is not None and plan.advertise
    assert refs.notice_for("t", "k") is None  # a capability advertisement shows no refs
    refs.refs_ttl = lambda: 0.0
    assert answer(refs, v2, None) is None


def test_a_header_upload_pack_would_not_see_goes_upstream(world: Any) -> None:
    refs, decider, _, _ = world
    grant(decider)
    state = FlowState(Kind.INFO_REFS, repo=REPO, tenant="t", version=UNREADABLE_VERSION)
    assert answer(refs, state, "version=2:x/y") is None and "Git-Protocol" in state.reason


@pytest.mark.parametrize(("body", "served"), [
    (b"000eversion 2\n0013ls-refs=unborn\n0000", True),
    (b"003f" + A.encode() + b" HEAD\0multi_ack\n003f" + A.encode() + b" refs/heads/main\n0000",
     False),  # a v0 advertisement: refs nobody checked against the view
    (TOO_LARGE, False),  # a capability list is never this large
])
def test_a_capability_request_is_answered_only_with_a_capability_list(
        world: Any, body: Any, served: bool) -> None:
    refs, decider, _, _ = world
    refs.answers = Canned(body)
    grant(decider)
    state = FlowState(Kind.INFO_REFS, repo=REPO, tenant="t", version=2)
    got = answer(refs, state, "version=2")
    if served:
        assert isinstance(got, CachedRefs) and got.body == body
    else:
        assert got is None and "no capability list" in state.reason


def test_marks_are_bounded_and_expire(world: Any) -> None:
    refs, _, clock, _ = world
    refs.mark_stale(["https://h/a"])
    clock.now += 31
    refs.mark_stale(["https://h/b"])
    assert list(refs._marks) == ["https://h/b"]  # older than the TTL: irrelevant


class Canned(RefAnswers):
    """RefAnswers that answers with fixed bytes (as if upload-pack had)."""

    def __init__(self, body: Any) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self.body = body
        self.forgotten: list[Any] = []

    async def answer(self, key: Any, *args: Any, **kw: Any) -> Any:
        return self.body

    def forget(self, key: Any) -> None:
        self.forgotten.append(key)


def line(text: str) -> bytes:
    return f"{len(text) + 5:04x}{text}\n".encode()


@pytest.mark.parametrize(("body", "served"), [
    (line(f"{A} HEAD symref-target:refs/heads/main") + line(f"{A} refs/heads/main") + b"0000",
     True),
    (line(f"{A} refs/heads/main") + line(f"{A} refs/heads/new") + b"0000", False),  # moved in
    (line(f"{'b' * 40} refs/heads/main") + b"0000", False),  # moved on
    (b"garbage", False),
])
def test_a_memoized_answer_lists_only_what_upstream_listed(world: Any, body: bytes,
                                                           served: bool) -> None:
    refs, decider, _, metrics = world
    refs.answers = Canned(body)
    grant(decider)
    got = answer(refs, ls_refs())
    if served:
        assert isinstance(got, CachedRefs) and got.body == body and not refs.answers.forgotten
        assert metrics.refs_answers.labels("cache")._value.get() == 1
    else:
        assert got is None and len(refs.answers.forgotten) == 1
        assert metrics.refs_answers.labels("upstream")._value.get() == 1


def test_a_cache_that_cannot_answer_sends_the_request_upstream(world: Any) -> None:
    refs, decider, _, _ = world
    refs.answers = Canned(None)  # type: ignore[arg-type]
    grant(decider)
    state = ls_refs()
    assert answer(refs, state) is None and "could not answer" in state.reason
    refs.answers = Canned(TOO_LARGE)  # type: ignore[arg-type]
    assert isinstance(answer(refs, ls_refs()), ServePlan)  # streamed by the backend


def test_the_remembered_check_follows_each_credentials_latest_view(world: Any) -> None:
    """The check of a held answer against a view is remembered per view: the upstream
    listing other refs to a credential (a new view) makes the same held answer fail,
    and another credential's view is checked on its own."""
    refs, decider, clock, _ = world
    body = line(f"{A} refs/heads/main") + b"0000"
    refs.answers = Canned(body)
    grant(decider)
    assert isinstance(answer(refs, ls_refs()), CachedRefs)
    assert isinstance(answer(refs, ls_refs()), CachedRefs)  # remembered: same verdict
    moved = RefView.of({"HEAD": "b" * 40, "refs/heads/main": "b" * 40}, {}, complete=True)
    decider.verdicts.record("t", REPO.url, granted=True, view=moved)
    assert answer(refs, ls_refs()) is None  # the view moved on: not what upstream listed
    other = RefView.of({"refs/heads/other": A}, {}, complete=True)
    decider.verdicts.record("u", REPO.url, granted=True, view=other)
    assert answer(refs, ls_refs("u")) is None
    clock.now += 1
    grant(decider)  # the upstream lists main at A to "t" again
    assert isinstance(answer(refs, ls_refs()), CachedRefs)


def test_the_refs_to_hide_follow_the_cache_snapshot(world: Any) -> None:
    """What to hide is remembered per view and cache snapshot: a fill that brings a
    branch the credential was not shown hides it from the next answer."""
    refs, decider, _, _ = world
    def snapshot(refs: dict[str, str]) -> RepoState:
        return RepoState(refs, "refs/heads/main", 0.0, digest=refs_digest(refs, "refs/heads/main"))

    first = snapshot({"refs/heads/main": A})
    filled = snapshot({"refs/heads/main": A, "refs/heads/extra": A})
    decider.store.state = lambda repo: current  # type: ignore[method-assign]
    grant(decider)
    current = first
    assert answer(refs, ls_refs()).hidden_refs == ()
    assert answer(refs, ls_refs()).hidden_refs == ()
    current = filled
    assert answer(refs, ls_refs()).hidden_refs == ("refs/heads/extra",)
    current = first
    assert answer(refs, ls_refs()).hidden_refs == ()


def test_a_large_ls_refs_is_never_answered_from_the_cache(world: Any) -> None:
    """A question too large to answer cheaply goes upstream (its parse, identity and the
    refs it asks to hide would all be paid on the event loop)."""
    refs, decider, _, _ = world
    grant(decider)
    many = LsRefsRequest(tuple(f"refs/heads/b{i}/" for i in range(129)), True, True, False)
    state = FlowState(Kind.LS_REFS, repo=REPO, tenant="t", version=2, ls_refs=many,
                      body=b"0014command=ls-refs\n0000")
    assert answer(refs, state) is None and "this large" in state.reason
    big = ls_refs()
    big.body = b"0" * 4097
    assert answer(refs, big) is None and "this large" in big.reason
    assert answer(refs, ls_refs()) is not None


class Slow(Canned):
    """Canned answers that take a while: ``meanwhile`` runs while the answer is made."""

    def __init__(self, body: Any, meanwhile: Any) -> None:
        super().__init__(body)
        self.meanwhile = meanwhile

    async def answer(self, key: Any, *args: Any, **kw: Any) -> Any:
        self.meanwhile()
        return self.body


@pytest.mark.parametrize("ending", ["expired", "refused"])
@pytest.mark.parametrize("kind", [Kind.LS_REFS, Kind.INFO_REFS])
def test_a_grant_that_ends_while_the_answer_is_made_sends_it_upstream(
        world: Any, ending: str, kind: Kind) -> None:
    """The grant is checked again once the held answer is ready: one that expired or was
    replaced by a refusal in the meantime gets the upstream's verdict, not the cache's."""
    refs, decider, clock, _ = world

    def end() -> None:
        if ending == "expired":
            clock.now += 61  # (the verdict TTL is 60 s)
        else:
            decider.verdicts.record("t", REPO.url, granted=False, status=403)

    body = line(f"{A} HEAD symref-target:refs/heads/main") + line(f"{A} refs/heads/main") \
        + b"0000" if kind is Kind.LS_REFS else line("version 2") + line("ls-refs") + b"0000"
    state = ls_refs() if kind is Kind.LS_REFS else FlowState(
        Kind.INFO_REFS, repo=REPO, tenant="t", version=2)
    refs.answers = Slow(body, lambda: None)
    grant(decider)
    assert isinstance(answer(refs, state), CachedRefs)  # (the grant holds throughout)
    refs.answers = Slow(body, end)
    state = ls_refs() if kind is Kind.LS_REFS else FlowState(
        Kind.INFO_REFS, repo=REPO, tenant="t", version=2)
    assert answer(refs, state) is None and "grant ended" in state.reason
    assert refs.notice_for("t", "k") is None
