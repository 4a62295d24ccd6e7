"""AnswerPolicy: what the upstream's answers prove (grants, denials), and the fills they start.

Ref answers are the ones real git 2.39 got from ``git http-backend`` (``git_wire``).
"""

from __future__ import annotations

import asyncio
import gzip
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from goblet.auth.credentials import ANONYMOUS, Credential
from goblet.auth.verdicts import RefView
from goblet.cache.store import CacheRepo, RepoState, refs_digest
from goblet.policy import answers as answers_mod
from goblet.policy.answers import (
    INLINE_COMPARED_REFS,
    MAX_MEMO_PREFIX_CHARS,
    MAX_MEMO_PREFIXES,
    AnswerPolicy,
    lists_all_branches_and_tags,
    read_ref_answer,
)
from goblet.policy.flows import FlowState, Kind, Outcome
from goblet.policy.offload import INLINE_ANSWER_BYTES
from goblet.protocol import pktline
from goblet.protocol.request import NO_REF_PREFIX, LsRefsRequest
from goblet.protocol.routes import ADVERTISEMENT_TYPE as ADV
from goblet.protocol.routes import RESULT_TYPE as RES

from tests.unit.fakes import MiB
from tests.unit.policy.fakes import Decider, Store

if TYPE_CHECKING:
    from tests.unit.conftest import GitWire

REPO = CacheRepo("https://git.example/org/repo.git", "k", Path("/c/k.git"))
ALICE = Credential((("authorization", "Bearer a"),))
ERR = pktline.error_packet("access denied")
CHALLENGE = 'Basic realm="git"'


@dataclass(frozen=True)
class Answers:
    """Ref answers git received, and the oids they name."""

    v0: bytes  # info/refs, protocol v0: main, the annotated tag v1 (peeled)
    v2: bytes  # info/refs, protocol v2: capabilities only
    v2_ref_in_want: bytes  # the same, advertising ref-in-want
    sha256: bytes  # info/refs of a sha256 repo
    ls_refs: bytes  # the answer to a clone's ls-refs (HEAD, branches, tags)
    main: str
    v1: str
    c1: str

    def pick(self, body: bytes | str) -> bytes:
        """``body`` itself, or the answer it names (``-truncated``: 10 bytes short)."""
        if isinstance(body, bytes):
            return body
        name, _, cut = body.partition("-")
        whole: bytes = getattr(self, name)
        return whole[:-10] if cut else whole


@pytest.fixture(scope="module")
def wire(git_wire: GitWire) -> Answers:
    return Answers(
        git_wire.info_refs("v0-clone").response, git_wire.info_refs("v2-clone").response,
        git_wire.info_refs("v2-ref-in-want").response, git_wire.info_refs("v0-sha256").response,
        git_wire.posts("v2-clone")[0].response, git_wire.oids["main"], git_wire.oids["v1"],
        git_wire.oids["c1"])


@dataclass
class World:
    decider: Decider
    store: Store
    policy: AnswerPolicy

    def answer(self, state: FlowState, status: int, body: bytes | None, ctype: str = ADV,
               cap: int = MiB, **headers: str) -> bytes | None:
        """What ``AnswerPolicy.answer`` returns (``headers``: lower-case, ``_`` for ``-``)."""
        fields = {"content-type": ctype, **{k.replace("_", "-"): v for k, v in headers.items()}}
        return asyncio.run(self.policy.answer(state, status, fields, body, cap))

    def view(self) -> RefView | None:
        return self.decider.verdicts.view("alice", REPO.url, 60)


@pytest.fixture
def world(pool: ThreadPoolExecutor) -> World:
    decider, store = Decider(), Store()
    return World(decider, store, AnswerPolicy(decider, store, pool))  # type: ignore[arg-type]


def flow(kind: Kind = Kind.INFO_REFS, *, prefixes: tuple[str, ...] | None = None,
         outcome: Outcome = Outcome.UPSTREAM, repo: CacheRepo | None = REPO) -> FlowState:
    """alice's request; ``prefixes``: an ls-refs asking for these ``ref-prefix`` values."""
    ls_refs = LsRefsRequest(prefixes, True, True, False) if prefixes is not None else None
    return FlowState(kind, repo=repo, tenant="alice", credential=ALICE, ls_refs=ls_refs,
                     outcome=outcome)


def cached(wire: Answers, head: str = "refs/heads/main", **moved: str) -> RepoState:
    """The cache's state after a fill of what ``wire.v0`` lists (``moved``: refs changed)."""
    refs = {"refs/heads/main": wire.main, "refs/tags/v1": wire.v1}
    refs |= {name.replace("__", "/"): oid for name, oid in moved.items()}
    return RepoState(refs, head, 0.0, digest=refs_digest(refs, head))


# ------------------------------------------------------------------------------ read_ref_answer


def test_an_info_refs_answer_reads_as_the_refs_it_listed(wire: Answers) -> None:
    got = read_ref_answer(ADV, wire.v0, ls_refs=False)
    assert got is not None and got.replacement is None and got.view is not None
    assert got.view.pairs == {("HEAD", wire.main), ("refs/heads/main", wire.main),
                              ("refs/tags/v1", wire.v1), ("refs/tags/v1^{}", wire.c1)}
    assert got.advertisement.symrefs == {"HEAD": "refs/heads/main"}


def test_an_ls_refs_answer_reads_as_the_refs_it_listed(wire: Answers) -> None:
    got = read_ref_answer(RES + "; charset=utf-8", wire.ls_refs, ls_refs=True)
    assert got is not None and got.view is not None
    assert got.view.names == {"HEAD", "refs/heads/main", "refs/tags/v1"}


def test_a_capability_advertisement_lists_no_refs_and_hides_upstream_only_features(
        wire: Answers) -> None:
    plain = read_ref_answer(ADV, wire.v2, ls_refs=False)
    assert plain is not None and plain.view is None and plain.replacement is None
    got = read_ref_answer(ADV, wire.v2_ref_in_want, ls_refs=False)
    assert got is not None and got.view is None and got.replacement is not None
    lines = pktline.decode(got.replacement)
    upstream = pktline.decode(wire.v2_ref_in_want)
    fetch = [p.line for p in upstream].index(b"fetch=shallow wait-for-done ref-in-want")
    assert [p.line for p in lines] == [
        *(p.line for p in upstream[:fetch]), b"fetch=shallow wait-for-done",
        *(p.line for p in upstream[fetch + 1:])]


@pytest.mark.parametrize(("ctype", "body", "ls_refs"), [
    (ADV, ERR, False),  # an ERR packet with status 200
    (RES, ERR, True),
    ("text/html", "v0", False),
    (RES, "v0", False),  # git's other content type
    (ADV, "ls_refs", True),
    (ADV, "v0-truncated", False),
    (RES, "ls_refs-truncated", True),
])
def test_anything_else_is_no_ref_answer(wire: Answers, ctype: str, body: bytes | str,
                                        ls_refs: bool) -> None:
    assert read_ref_answer(ctype, wire.pick(body), ls_refs=ls_refs) is None


@pytest.mark.parametrize(("prefixes", "everything"), [
    ((), True),
    (("refs/",), True),
    (("refs/heads/", "refs/tags/"), True),
    (("HEAD", "refs/heads/", "refs/tags/"), True),
    (("refs/heads", "refs/tags"), True),
    (("HEAD", "refs/heads/"), False),  # what `git fetch origin main` asks: no tags
    (("refs/tags/",), False),
    (("refs/heads/main",), False),
])
def test_which_ls_refs_list_every_branch_and_tag(prefixes: tuple[str, ...],
                                                 everything: bool) -> None:
    assert lists_all_branches_and_tags(prefixes) is everything


# ------------------------------------------------------------------------------ grants


def test_a_ref_answer_is_a_grant_with_the_refs_it_listed(world: World, wire: Answers) -> None:
    assert world.answer(flow(), 200, wire.v0) is None  # nothing to replace
    assert world.decider.verdicts.is_granted("alice", REPO.url)
    view = world.view()
    assert view is not None and view.complete
    assert view.mirrored == {"refs/heads/main": wire.main, "refs/tags/v1": wire.v1}
    assert world.decider.heads == {"k": "refs/heads/main"}


@pytest.mark.parametrize(("status", "ctype", "body"), [
    (200, ADV, ERR),  # "remote error: access denied" with status 200
    (200, "text/html; charset=utf-8", "v0"),
    (200, RES, "v0"),
    (200, ADV, "v0-truncated"),
    (203, ADV, "v0"),
    (304, ADV, "v0"),
    (500, ADV, "v0"),
    (503, ADV, ERR),
])
def test_anything_else_proves_nothing(world: World, wire: Answers, status: int, ctype: str,
                                      body: bytes | str) -> None:
    assert world.answer(flow(), status, wire.pick(body), ctype) is None
    assert len(world.decider.verdicts) == 0 and world.decider.fills == []
    assert world.decider.heads == {}


def test_an_err_packet_leaves_an_earlier_grant_as_it_was(world: World, wire: Answers) -> None:
    world.answer(flow(), 200, wire.v0)
    world.answer(flow(), 200, ERR)
    assert world.decider.verdicts.is_granted("alice", REPO.url) and world.view() is not None


@pytest.mark.parametrize("kind", [Kind.FETCH, Kind.UPLOAD_PACK, Kind.PUSH, Kind.OTHER])
def test_only_ref_requests_are_granted(world: World, wire: Answers, kind: Kind) -> None:
    world.answer(flow(kind), 200, wire.v0)
    world.answer(flow(kind), 200, wire.ls_refs, RES)
    assert len(world.decider.verdicts) == 0


@pytest.mark.parametrize("outcome", [Outcome.CACHE, Outcome.OFFLINE, Outcome.ERROR,
                                     Outcome.DENIED])
def test_answers_the_upstream_did_not_give_prove_nothing(world: World, wire: Answers,
                                                         outcome: Outcome) -> None:
    world.answer(flow(outcome=outcome), 200, wire.v0)
    world.answer(flow(outcome=outcome), 401, b"", www_authenticate=CHALLENGE)
    world.answer(flow(repo=None), 401, b"")
    world.answer(flow(repo=None), 200, wire.v0)
    assert len(world.decider.verdicts) == 0


def test_an_encoded_answer_is_decoded_first(world: World, wire: Answers) -> None:
    world.answer(flow(), 200, gzip.compress(wire.v0), content_encoding="gzip")
    assert world.decider.verdicts.is_granted("alice", REPO.url)


@pytest.mark.parametrize(("body", "enc", "cap"), [
    (None, None, MiB),  # streamed: never read
    ("v0", None, 100),  # larger than the cap
    ("v0", "gzip", MiB),  # not the gzip it claims to be
    ("v0", "br", MiB),  # an encoding goblet does not decode
])
def test_an_answer_goblet_cannot_read_proves_nothing(world: World, wire: Answers,
                                                     body: str | None, enc: str | None,
                                                     cap: int) -> None:
    raw = wire.v0 if body else None
    headers = {"content_encoding": enc} if enc else {}
    assert world.answer(flow(), 200, raw, cap=cap, **headers) is None
    assert len(world.decider.verdicts) == 0


def test_a_capability_advertisement_grants_and_keeps_the_last_view(world: World,
                                                                   wire: Answers) -> None:
    assert world.answer(flow(), 200, wire.v2) is None
    assert world.decider.verdicts.is_granted("alice", REPO.url) and world.view() is None
    assert world.decider.fills == []  # it lists no refs: nothing to compare the cache with
    world.answer(flow(), 200, wire.v0)
    before, fills = world.view(), len(world.decider.fills)
    replaced = world.answer(flow(), 200, wire.v2_ref_in_want)
    assert replaced is not None and b"ref-in-want" not in replaced
    assert world.view() == before and len(world.decider.fills) == fills


@pytest.mark.parametrize(("prefixes", "complete", "all_tags"), [
    (("HEAD", "refs/heads/", "refs/tags/"), True, True),  # a clone's
    ((), True, True),
    (("HEAD", "refs/heads/"), False, False),
    (("HEAD", "refs/heads/main", "refs/tags/"), False, True),  # a --single-branch clone's
    (("refs/",), True, True),
    (("refs/tags/v",), False, False),  # some tags only
])
def test_an_ls_refs_view_is_complete_only_if_it_asked_for_every_branch_and_tag(
        world: World, wire: Answers, prefixes: tuple[str, ...], complete: bool,
        all_tags: bool) -> None:
    world.answer(flow(Kind.LS_REFS, prefixes=prefixes), 200, wire.ls_refs, RES)
    view = world.view()
    assert view is not None and (view.complete, view.all_tags) == (complete, all_tags)
    assert view.names == {"HEAD", "refs/heads/main", "refs/tags/v1"}
    assert view.tags == {("refs/tags/v1", wire.v1)}  # (its peeled entry left out)


def test_an_info_refs_view_lists_every_tag(world: World, wire: Answers) -> None:
    world.answer(flow(), 200, wire.v0)
    view = world.view()
    assert view is not None and view.complete and view.all_tags


def test_an_answer_naming_a_ref_that_is_not_utf8_proves_nothing_and_is_logged_once(
        world: World, wire: Answers, caplog: pytest.LogCaptureFixture) -> None:
    odd = pktline.encode_data(f"{wire.main} refs/heads/caf".encode() + b"\xe9\n")
    body = wire.ls_refs[:-4] + odd + pktline.FLUSH
    with caplog.at_level("WARNING", logger="goblet.policy.answers"):
        for _ in range(3):
            assert world.answer(flow(Kind.LS_REFS, prefixes=()), 200, body, RES) is None
        world.answer(flow(Kind.LS_REFS, prefixes=()), 200, b"", "text/html")  # (not git's)
    assert len(world.decider.verdicts) == 0
    [line] = [r.getMessage() for r in caplog.records]
    assert "non-UTF-8 ref line" in line and REPO.url in line and "served by the upstream" in line


# ------------------------------------------------------------------------------ denials


@pytest.mark.parametrize("status", [401, 403, 404])
@pytest.mark.parametrize("kind", [Kind.INFO_REFS, Kind.LS_REFS, Kind.FETCH, Kind.UPLOAD_PACK])
def test_a_refusal_is_a_denial_that_replaces_the_grant_at_once(
        world: World, wire: Answers, status: int, kind: Kind) -> None:
    world.answer(flow(), 200, wire.v0)
    assert world.answer(flow(kind), status, b"no", "text/plain",
                        www_authenticate=CHALLENGE) is None
    verdicts = world.decider.verdicts
    assert not verdicts.is_granted("alice", REPO.url) and world.view() is None
    denial = verdicts.denied_within("alice", REPO.url, 60)
    assert denial is not None and (denial.status, denial.challenge) == (status, CHALLENGE)


def test_a_denial_without_a_challenge_keeps_none(world: World) -> None:
    world.answer(flow(), 403, b"")
    denial = world.decider.verdicts.denied_within("alice", REPO.url, 60)
    assert denial is not None and (denial.status, denial.challenge) == (403, None)


# ------------------------------------------------------------------------------ fills


def test_a_grant_for_a_repo_never_cached_starts_its_fill(world: World, wire: Answers) -> None:
    world.answer(flow(), 200, wire.v0)
    assert world.decider.fills == [(REPO, ALICE, "alice", "refs/heads/main")]


def test_unless_the_clones_own_fetch_fills_it(pool: ThreadPoolExecutor, wire: Answers) -> None:
    decider, store = Decider(tee=True), Store()
    w = World(decider, store, AnswerPolicy(decider, store, pool))  # type: ignore[arg-type]
    w.answer(flow(), 200, wire.v0)
    assert decider.fills == [] and decider.verdicts.is_granted("alice", REPO.url)


@pytest.mark.parametrize(("changed", "fills"), [
    ({}, 0),
    ({"refs__heads__main": "f" * 40}, 1),  # the branch moved upstream
    ({"refs__tags__old": "f" * 40}, 1),  # a tag deleted upstream
    ({"head": "refs/heads/dev"}, 1),  # HEAD moved upstream
])
def test_a_grant_starts_a_fill_when_the_cached_refs_differ(
        world: World, wire: Answers, changed: dict[str, str], fills: int) -> None:
    world.store.snapshot = cached(wire, **changed)
    world.answer(flow(), 200, wire.v0)
    assert len(world.decider.fills) == fills


def test_refs_outside_an_ls_refs_view_are_not_taken_for_deleted(world: World,
                                                                wire: Answers) -> None:
    world.store.snapshot = cached(wire, refs__heads__topic="f" * 40)
    world.answer(flow(Kind.LS_REFS, prefixes=("HEAD", "refs/tags/")), 200, wire.ls_refs, RES)
    assert world.decider.fills == []
    world.answer(flow(Kind.LS_REFS, prefixes=("HEAD", "refs/heads/")), 200, wire.ls_refs, RES)
    assert len(world.decider.fills) == 1


def test_an_answer_to_a_question_not_kept_is_a_partial_view_of_unknown_extent(
        world: World, wire: Answers) -> None:
    """An ls-refs whose ``ref-prefix`` lines were too large to keep (``kept_question``):
    its answer grants, lists what it lists, claims nothing complete, and a fill starts
    only if a listed ref differs from the cache's."""
    world.store.snapshot = cached(wire, refs__heads__topic="f" * 40)
    world.answer(flow(Kind.LS_REFS, prefixes=(NO_REF_PREFIX,)), 200, wire.ls_refs, RES)
    view = world.view()
    assert view is not None and not view.complete and not view.all_tags
    assert "refs/heads/main" in view.names and world.decider.fills == []
    world.store.snapshot = cached(wire, refs__heads__main="f" * 40)
    world.answer(flow(Kind.LS_REFS, prefixes=(NO_REF_PREFIX,)), 200, wire.ls_refs, RES)
    assert len(world.decider.fills) == 1


@pytest.mark.parametrize(("anonymous_denied", "fills"), [(True, 0), (False, 1)])
def test_public_isolation_never_fills_a_repo_anonymous_users_cannot_read(
        pool: ThreadPoolExecutor, wire: Answers, anonymous_denied: bool, fills: int) -> None:
    decider, store = Decider(isolation="public"), Store()
    if anonymous_denied:
        decider.verdicts.record(ANONYMOUS, REPO.url, granted=False, status=401)
    w = World(decider, store, AnswerPolicy(decider, store, pool))  # type: ignore[arg-type]
    w.answer(flow(), 200, wire.v0)
    assert decider.verdicts.is_granted("alice", REPO.url) and len(decider.fills) == fills


def test_another_object_format_makes_the_repo_uncacheable(world: World, wire: Answers) -> None:
    world.answer(flow(), 200, wire.sha256)
    assert world.decider.uncacheable == {"k"} and world.decider.fills == []
    assert world.decider.verdicts.is_granted("alice", REPO.url)


def test_a_repeated_answer_is_read_once_and_its_question_still_counts(
        world: World, wire: Answers) -> None:
    """The same bytes answering the same question are parsed once; the same bytes
    answering a narrower ls-refs make a view that does not claim to list everything."""
    world.answer(flow(Kind.LS_REFS, prefixes=("HEAD", "refs/heads/", "refs/tags/")), 200,
                 wire.ls_refs, RES)
    first = world.view()
    world.answer(flow(Kind.LS_REFS, prefixes=("HEAD", "refs/heads/", "refs/tags/")), 200,
                 wire.ls_refs, RES)
    assert world.view() is first and first is not None and first.complete
    world.answer(flow(Kind.LS_REFS, prefixes=("refs/heads/",)), 200, wire.ls_refs, RES)
    narrow = world.view()
    assert narrow is not None and not narrow.complete and narrow.pairs == first.pairs


def test_a_repeated_answer_is_compared_with_the_cache_as_it_is_now(world: World,
                                                                  wire: Answers) -> None:
    """The comparison of one answer with the cache is remembered only while the cache's
    snapshot stays the same: a fill elsewhere that moves it is seen at once."""
    world.store.snapshot = cached(wire)
    world.answer(flow(), 200, wire.v0)
    world.answer(flow(), 200, wire.v0)
    assert world.decider.fills == []
    world.store.snapshot = cached(wire, refs__heads__main=wire.c1)
    world.answer(flow(), 200, wire.v0)
    assert len(world.decider.fills) == 1
    world.store.snapshot = cached(wire)
    world.answer(flow(), 200, wire.v0)
    assert len(world.decider.fills) == 1


def test_the_comparison_is_remembered_only_for_a_small_question(world: World,
                                                                   wire: Answers) -> None:
    """A client chooses the ``ref-prefix`` lines (git takes 65,535 of any length): a
    comparison is remembered only with ones of at most MAX_MEMO_PREFIX_CHARS, so what an
    ended request asked is never held."""
    world.store.snapshot = cached(wire)
    small = ("HEAD", "refs/heads/", "refs/tags/")
    large = (*small, *(f"refs/x/{i:0200d}" for i in range(10)))
    assert sum(map(len, large)) > MAX_MEMO_PREFIX_CHARS
    world.answer(flow(Kind.LS_REFS, prefixes=large), 200, wire.ls_refs, RES)
    assert world.policy._differs == {}
    many = (*small, *("",) * MAX_MEMO_PREFIXES)  # (no text, many lines)
    world.answer(flow(Kind.LS_REFS, prefixes=many), 200, wire.ls_refs, RES)
    assert world.policy._differs == {}
    world.answer(flow(Kind.LS_REFS, prefixes=small), 200, wire.ls_refs, RES)
    assert list(world.policy._differs) == [REPO.key]


def compared_in(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads ``refs.refs_differ`` runs in from now on (appended)."""
    threads: list[str] = []
    real = answers_mod.refs.refs_differ

    def watched(*args: Any) -> bool:
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(answers_mod.refs, "refs_differ", watched)
    return threads


@pytest.mark.parametrize(("cached_refs", "on_loop"), [(10, True), (5000, False)])
def test_a_small_answer_is_compared_with_a_large_cache_off_the_event_loop(
        world: World, wire: Answers, monkeypatch: pytest.MonkeyPatch, cached_refs: int,
        on_loop: bool) -> None:
    """An ls-refs whose prefixes match little gets a small answer, compared with every
    ref of the cache: a cache of more than INLINE_COMPARED_REFS is compared in a worker
    thread."""
    refs_now = {"refs/heads/main": wire.main, "refs/tags/v1": wire.v1,
                **{f"refs/heads/b{i:05d}": wire.main for i in range(cached_refs)}}
    assert (len(refs_now) <= INLINE_COMPARED_REFS) is on_loop
    world.store.snapshot = RepoState(refs_now, "refs/heads/main", 0.0,
                                     digest=refs_digest(refs_now, "refs/heads/main"))
    threads = compared_in(monkeypatch)
    world.answer(flow(Kind.LS_REFS, prefixes=("refs/heads/nothing-",)), 200, b"0000", RES)
    assert (threads == [threading.main_thread().name]) is on_loop and threads
    assert world.decider.fills == []


@pytest.mark.parametrize(("moved", "fills"), [(False, 0), (True, 1)])
def test_a_large_answer_is_read_and_compared_off_the_event_loop(
        world: World, wire: Answers, monkeypatch: pytest.MonkeyPatch, moved: bool,
        fills: int) -> None:
    # (a repo with many refs: reading its answer and comparing it with the cache's refs
    # take a large share of a second each; on the loop they would stall every client)
    tags = {f"refs/tags/t{i:05d}": wire.main for i in range(400)}
    lines = [f"{wire.main} refs/heads/main symref-target:x", f"{wire.v1} refs/tags/v1 "
             f"peeled:{wire.main}", *(f"{o} {n}" for n, o in tags.items())]
    body = b"".join(pktline.encode_data(f"{ln}\n".encode()) for ln in lines) + pktline.FLUSH
    assert len(body) > INLINE_ANSWER_BYTES
    refs_now = {"refs/heads/main": wire.main, "refs/tags/v1": wire.v1, **tags}
    if moved:
        refs_now["refs/heads/main"] = "f" * 40
    world.store.snapshot = RepoState(refs_now, "refs/heads/main", 0.0,
                                     digest=refs_digest(refs_now, "refs/heads/main"))
    threads = compared_in(monkeypatch)
    world.answer(flow(Kind.LS_REFS, prefixes=()), 200, body, RES)
    assert len(world.decider.fills) == fills
    assert threads and threading.main_thread().name not in threads
