"""FetchDecider, rule by rule: a real cache repo on disk, fakes for the filler and upstream."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from goblet.auth.credentials import Credential
from goblet.auth.verdicts import RefView, VerdictCache
from goblet.cache.fill import FailureKind, Filler, FillError, FillResult
from goblet.cache.locks import RepoLocks
from goblet.cache.store import CacheRepo, RepoStore
from goblet.decide import Decision, FetchDecider, Route
from goblet.git.runner import GitRunner
from goblet.offline.ask import Finding, RefsProbe
from goblet.offline.state import UpstreamState
from goblet.protocol import refs
from goblet.protocol.request import FetchRequest

from tests.support.repos import add_commit, git, make_bare_repo

URL = "https://git.example/org/repo.git"
HOST = "git.example"
ALICE = Credential((("authorization", "Bearer a"),))
BOB = Credential((("authorization", "Bearer b"),))


class FakeFiller:
    """Fills that resolve as told; records what it was asked."""

    fleet = None
    locks: RepoLocks | None = None  # (set for cold repos: a cold clone looks at the lock)

    def __init__(self) -> None:
        self.task: asyncio.Task[FillResult] | None = None
        self.started: list[Credential] = []
        self.fetched: list[Sequence[str]] = []
        self.fail: FillError | None = None  # how fills end
        self.fail_fetch: FillError | None = None  # how fetches by id end

    def in_flight(self, repo: CacheRepo) -> asyncio.Task[FillResult] | None:
        return self.task if self.task is not None and not self.task.done() else None

    def start(self, repo: CacheRepo, credential: Credential, head: str | None = None,
              progress: Any = None) -> asyncio.Task[FillResult]:
        self.started.append(credential)

        async def fill() -> FillResult:
            await asyncio.sleep(0.2)  # long enough for a second request to join
            if self.fail is not None:
                raise self.fail
            return FillResult(False, 1, 0.0)

        self.task = asyncio.get_running_loop().create_task(fill())
        return self.task

    async def fetch_oids(self, repo: CacheRepo, credential: Credential,
                         oids: Sequence[str]) -> None:
        self.fetched.append(oids)
        if self.fail_fetch is not None:
            raise self.fail_fetch


class FakeAsker:
    """goblet's own upstream requests, answered as told."""

    def __init__(self) -> None:
        self.probe = RefsProbe(Finding.OUTAGE)
        self.serve: bool | None = False
        self.refs_asked = 0
        self.serves_asked: list[Sequence[str]] = []
        self.versions: list[int] = []

    async def refs(self, host: str, repo_url: str, credential: Credential) -> RefsProbe:
        self.refs_asked += 1
        return self.probe

    async def serves(self, host: str, repo_url: str, credential: Credential,
                     oids: Sequence[str], version: int = 2) -> bool | None:
        self.serves_asked.append(oids)
        self.versions.append(version)
        return self.serve


class World:
    """A store with one cached repo (main, dev, a tag) and an unreferenced commit in it."""

    def __init__(self, root: Path, *, offline: bool = False, isolation: str = "shared") -> None:
        home = root / "home"
        home.mkdir(parents=True)
        self.store = RepoStore(root / "cache", GitRunner(home=home))
        self.store.prepare()
        self.repo = self.store.repo_for(URL)
        make_bare_repo(self.repo.path, commits=4, branches=("main", "dev"), tags=("v1",))
        self.gone = add_commit(self.repo.path, branch="scrubbed", message="secret")
        git("update-ref", "-d", "refs/heads/scrubbed", cwd=self.repo.path)
        refs_now = {
            name: git("rev-parse", name, cwd=self.repo.path)
            for name in ("refs/heads/main", "refs/heads/dev", "refs/tags/v1")
        }
        self.refs = refs_now
        self.old = git("rev-parse", "refs/heads/main~2", cwd=self.repo.path)
        self.store.write_state(self.repo.path, self.repo, refs_now, "refs/heads/main")
        self.clock = [1000.0]
        self.verdicts = VerdictCache(60, keep=86400 if offline else 0,
                                     clock=lambda: self.clock[0])
        self.filler = FakeFiller()
        self.asker = FakeAsker()
        self.upstream = UpstreamState(clock=lambda: self.clock[0])
        self.decider = FetchDecider(
            self.store, self.filler, self.verdicts,  # type: ignore[arg-type]
            isolation=isolation, offline=offline, offline_grace=86400, upstream=self.upstream,
            asker=self.asker,  # type: ignore[arg-type]
        )

    def grant(self, tenant: str, **names: str) -> None:
        # (a listing of every tag the upstream shows ``tenant``: those of ``names`` only)
        view = RefView.of({n: self.refs[n] for n in names.values()} if names else self.refs, {},
                          all_tags=True)
        self.verdicts.record(tenant, URL, granted=True, view=view)

    def decide(self, tenant: str, *wants: str, credential: Credential = ALICE,
               shallows: tuple[str, ...] = (), version: int = 2, include_tag: bool = False,
               haves: tuple[str, ...] = ()) -> Decision:
        req = FetchRequest(version, tuple(wants), haves, shallows, True, (),
                           include_tag=include_tag)
        return asyncio.run(self.decider.decide(self.repo, tenant, credential, req, HOST))


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.mark.parametrize("haves", [False, True], ids=["clone", "fetch"])
def test_tags_are_followed_from_the_cache_as_listed(world: World, haves: bool) -> None:
    world.grant("alice")  # main, dev and the tag v1, as the cache has them
    d = world.decide("alice", world.refs["refs/heads/main"], include_tag=True,
                     haves=(world.old,) if haves else ())
    assert d.route is Route.CACHE and d.tags == {("refs/tags/v1", world.refs["refs/tags/v1"])}
    assert world.decide("alice", world.refs["refs/heads/main"]).tags is None  # (not asked)


@pytest.mark.parametrize("haves", [False, True], ids=["clone", "fetch"])
def test_a_cached_tag_not_listed_is_never_followed(world: World, haves: bool) -> None:
    # upload-pack would add the tag object of every tag pointing into the pack: a tag
    # deleted upstream (not pruned yet) or hidden from this credential would go out
    world.grant("alice", main="refs/heads/main", dev="refs/heads/dev")
    d = world.decide("alice", world.refs["refs/heads/main"], include_tag=True,
                     haves=(world.old,) if haves else ())
    assert d.route is Route.CACHE and d.tags == frozenset()  # (a view without tags)


def test_a_clone_following_a_tag_the_cache_holds_elsewhere_goes_upstream(world: World) -> None:
    # listed at another object than the cache's: only the upstream can follow it as listed
    main, dev = world.refs["refs/heads/main"], world.refs["refs/heads/dev"]
    shown = {"refs/heads/main": main, "refs/heads/dev": dev, "refs/tags/v1": world.old}
    world.verdicts.record("alice", URL, granted=True,
                          view=RefView.of(shown, {}, complete=True))
    d = world.decide("alice", main, include_tag=True)
    assert d.route is Route.UPSTREAM and d.reason.startswith("include-tag:")
    assert world.decide("alice", main).route is Route.CACHE  # no tag following: no tag sent
    # a fetch with haves backfills the listed tags itself: answered, following none
    d = world.decide("alice", main, include_tag=True, haves=(world.old,))
    assert d.route is Route.CACHE and d.tags == frozenset()


def test_tags_are_not_followed_from_a_view_that_did_not_list_them_all(world: World) -> None:
    # an ls-refs whose ref-prefixes left tags out: which tags this credential sees is unknown
    main = world.refs["refs/heads/main"]
    world.verdicts.record("alice", URL, granted=True, view=RefView.of(
        {"refs/heads/main": main}, {}, complete=False, all_tags=False))
    assert world.decide("alice", main, include_tag=True).route is Route.UPSTREAM
    d = world.decide("alice", main, include_tag=True, haves=(world.old,))
    assert d.route is Route.CACHE and d.tags is None  # (include-tag taken out)


def test_a_clone_following_tags_of_a_repo_without_a_fill_record_goes_upstream(
        world: World) -> None:
    world.grant("alice")
    (world.repo.path / "goblet-state.json").unlink()
    assert world.decide("alice", world.refs["refs/heads/main"],
                        include_tag=True).route is Route.UPSTREAM


def test_advertised_tips_are_served(world: World) -> None:
    world.grant("alice")
    d = world.decide("alice", world.refs["refs/heads/main"], world.refs["refs/tags/v1"])
    assert d.route is Route.CACHE and d.notice is None
    assert world.asker.serves_asked == []


def test_wants_that_are_recorded_tips_are_not_looked_up(world: World) -> None:
    """The fill record says which tips the repo holds: a clone of tips starts no git; any
    other want is looked up in the repo (a missing one is filled, never assumed)."""
    ran: list[str] = []
    run = world.store.git.run

    async def counted(args: Sequence[str], **kw: Any) -> Any:
        ran.append(args[0])
        return await run(args, **kw)

    world.store.git.run = counted  # type: ignore[method-assign]
    world.grant("alice")
    main, v1 = world.refs["refs/heads/main"], world.refs["refs/tags/v1"]
    assert world.decide("alice", main, v1).route is Route.CACHE
    assert ran == []
    world.decide("alice", main, world.old)
    assert ran[:1] == ["cat-file"]
    ran.clear()
    state = world.repo.path / "goblet-state.json"  # a record naming a tip the repo lacks
    state.write_text(state.read_text().replace(main, "1" * 40))
    world.decide("alice", main)
    assert ran[:1] == ["cat-file"]  # (main is no recorded tip now: looked up, found)


def test_history_of_advertised_tips_is_served_without_asking(world: World) -> None:
    world.grant("alice")
    assert world.decide("alice", world.old).route is Route.CACHE
    assert world.asker.serves_asked == []


def test_no_fresh_grant_goes_upstream(world: World) -> None:
    assert world.decide("alice", world.refs["refs/heads/main"]).route is Route.UPSTREAM
    world.grant("alice")
    world.clock[0] += 61
    assert world.decide("alice", world.refs["refs/heads/main"]).route is Route.UPSTREAM


def test_an_object_upstream_deleted_is_not_served_by_id(world: World) -> None:
    world.grant("alice")
    world.asker.serve = False  # upstream: "not our ref"
    d = world.decide("alice", world.gone)
    assert d.route is Route.UPSTREAM and "not advertised" in d.reason
    assert world.asker.serves_asked == [[world.gone]]


def test_the_upstream_is_asked_in_the_clients_protocol_version(world: World) -> None:
    """v0 upstreams refuse unadvertised objects that v2 would serve: ask as the client did."""
    world.grant("alice")
    world.decide("alice", world.gone, version=0)
    world.decide("alice", world.gone, version=2)
    assert world.asker.versions == [0, 2]


def test_a_shallow_line_counts_like_a_want(world: World) -> None:
    world.grant("alice")
    d = world.decide("alice", world.refs["refs/heads/main"], shallows=(world.gone,))
    assert d.route is Route.UPSTREAM


def test_recorded_tips_are_no_way_past_the_grant(world: World) -> None:
    """A want that is a recorded tip skips only the object lookup: a credential with no
    grant, a revoked one, or one the tip is hidden from is answered as before."""
    tips = (world.refs["refs/heads/main"], world.refs["refs/heads/dev"],
            world.refs["refs/tags/v1"])
    assert world.decide("mallory", *tips, credential=BOB).route is Route.UPSTREAM  # none
    world.verdicts.record("bob", URL, granted=False)  # revoked upstream
    assert world.decide("bob", *tips, credential=BOB).route is Route.UPSTREAM
    world.grant("bob", main="refs/heads/main")  # dev and v1 hidden from bob
    assert world.decide("bob", *tips, credential=BOB).route is Route.UPSTREAM
    assert world.decide("bob", tips[0], credential=BOB).route is Route.CACHE


def test_refs_hidden_from_this_credential_do_not_count(world: World) -> None:
    world.grant("bob", main="refs/heads/main")  # upstream shows bob main only
    dev = world.refs["refs/heads/dev"]
    world.asker.serve = False
    assert world.decide("bob", dev, credential=BOB).route is Route.UPSTREAM
    world.asker.serve = True  # upstream confirms it would serve it to bob now
    assert world.decide("bob", dev, credential=BOB).route is Route.CACHE


def test_without_a_ref_list_every_want_is_confirmed_upstream(world: World) -> None:
    world.verdicts.record("alice", URL, granted=True)  # a v2 capability advertisement only
    world.asker.serve = True
    assert world.decide("alice", world.refs["refs/heads/main"]).route is Route.CACHE
    assert world.asker.serves_asked == [[world.refs["refs/heads/main"]]]


def test_missing_objects_fetched_with_the_clients_credential_need_no_probe(
        world: World) -> None:
    world.grant("alice")
    ghost = "9" * 40  # never appears: the fake fetch brings nothing
    d = world.decide("alice", ghost)
    assert d.route is Route.UPSTREAM and world.filler.fetched == [[ghost]]


def test_a_joined_fill_of_another_credential_fails_without_blame(world: World) -> None:
    async def scenario() -> Decision:
        world.grant("alice")
        world.filler.fail = FillError(FailureKind.DENIED, "upstream answered 403 for x", 403)
        world.decider.start_fill(world.repo, BOB, "bob")
        missing = FetchRequest(2, ("8" * 40,), (), (), True, ())
        return await world.decider.decide(world.repo, "alice", ALICE, missing, HOST)

    joined = asyncio.run(scenario())
    assert joined.route is Route.UPSTREAM and "403" not in joined.reason
    assert world.verdicts.is_granted("alice", URL)  # bob's refusal is not alice's


def test_a_refusal_of_the_clients_own_fetch_is_recorded(world: World) -> None:
    world.grant("alice")
    world.filler.fail_fetch = FillError(FailureKind.DENIED, "upstream answered 403", 403)
    d = world.decide("alice", "8" * 40)
    assert d.route is Route.UPSTREAM and "refused" in d.reason
    assert not world.verdicts.is_granted("alice", URL)


# ------------------------------------------------------------------------------ offline


@pytest.fixture
def offline(tmp_path: Path) -> World:
    w = World(tmp_path, offline=True)
    w.grant("alice")
    w.clock[0] += 3600  # the grant is an hour old: stale online, within the grace
    return w


def test_offline_clones_do_not_follow_tags_the_tenant_was_not_shown(tmp_path: Path) -> None:
    w = World(tmp_path, offline=True)
    w.grant("alice", main="refs/heads/main")  # the tenant was never shown the tag
    w.clock[0] += 3600
    d = w.decide("alice", w.refs["refs/heads/main"], include_tag=True)
    assert d.route is Route.CACHE and d.offline and d.tags == frozenset()


def test_a_clone_following_a_moved_tag_is_answered_while_the_upstream_is_down(
        tmp_path: Path) -> None:
    w = World(tmp_path, offline=True)
    main = w.refs["refs/heads/main"]
    w.verdicts.record("alice", URL, granted=True, view=RefView.of(
        {"refs/heads/main": main, "refs/tags/v1": w.old}, {}, all_tags=True))
    assert w.decide("alice", main, include_tag=True).route is Route.UPSTREAM
    w.upstream.unreachable(HOST)  # (no upstream to send it to: the cache follows none)
    d = w.decide("alice", main, include_tag=True)
    assert d.route is Route.CACHE and d.tags == frozenset() and d.notice is not None


def test_offline_needs_an_outage_goblet_observed(offline: World) -> None:
    offline.asker.probe = RefsProbe(Finding.OUTAGE)
    d = offline.decide("alice", offline.refs["refs/heads/main"])
    assert d.route is Route.CACHE and d.offline and "unreachable since" in (d.notice or "")
    assert offline.asker.refs_asked == 1


def test_a_revocation_seen_by_the_probe_wins(offline: World) -> None:
    offline.asker.probe = RefsProbe(Finding.DENIED, status=404)
    d = offline.decide("alice", offline.refs["refs/heads/main"])
    assert d.route is Route.UPSTREAM
    assert offline.verdicts.denied_within("alice", URL, 60) is not None


def test_a_grant_seen_by_the_probe_serves_online(offline: World) -> None:
    adv = refs.RefAdvertisement(0, dict(offline.refs))
    offline.asker.probe = RefsProbe(Finding.GRANTED, adv, 200)
    d = offline.decide("alice", offline.refs["refs/heads/main"])
    assert d.route is Route.CACHE and not d.offline
    assert offline.verdicts.is_granted("alice", URL)


def test_a_recent_own_network_failure_spares_the_probe(offline: World) -> None:
    offline.upstream.unreachable(HOST)
    d = offline.decide("alice", offline.refs["refs/heads/main"])
    assert d.offline and offline.asker.refs_asked == 0


def test_offline_never_serves_objects_outside_the_tenants_refs(offline: World) -> None:
    d = offline.decide("alice", offline.gone)
    assert d.route is Route.ERROR


def test_offline_without_a_grant_within_the_grace_goes_upstream(offline: World) -> None:
    assert offline.decide("bob", offline.refs["refs/heads/main"]).route is Route.UPSTREAM
    assert offline.asker.refs_asked == 0


def test_offline_ref_answers_hide_refs_the_tenant_was_not_shown(tmp_path: Path) -> None:
    w = World(tmp_path, offline=True)
    w.grant("bob", main="refs/heads/main")  # a view without HEAD: HEAD is hidden too
    assert w.decider.offline_hidden_refs("bob", w.repo) == ("HEAD", "refs/heads/dev",
                                                           "refs/tags/v1")
    w.verdicts.record("dave", URL, granted=True, view=RefView.of(
        {"HEAD": w.refs["refs/heads/main"], "refs/heads/dev": w.refs["refs/heads/dev"]}, {}))
    # HEAD points at main, which dave was not shown: hidden with it
    assert w.decider.offline_hidden_refs("dave", w.repo) == ("HEAD", "refs/heads/main",
                                                            "refs/tags/v1")
    w.verdicts.record("erin", URL, granted=True, view=RefView.of(
        {"HEAD": w.refs["refs/heads/main"], **w.refs}, {}))
    assert w.decider.offline_hidden_refs("erin", w.repo) == ()
    assert w.decider.offline_hidden_refs("carol", w.repo) is None


# ---------------------------------------------------------------------- cold repos

COLD = "https://git.example/org/cold.git"
C_MAIN, C_V1 = "3" * 40, "4" * 40
COLD_VIEW = RefView.of({"HEAD": C_MAIN, "refs/heads/main": C_MAIN, "refs/tags/v1": C_V1}, {},
                       complete=True)
FULL_CLONE = FetchRequest(2, (C_MAIN, C_V1), (), (), True, ())


class ColdWorld:
    """A cache without the repo, a grant with a complete ref list, HEAD known; a real
    filler (``real``) so cold clones make real tee fills, else the fake."""

    def __init__(self, root: Path, *, real: bool) -> None:
        (root / "home").mkdir(parents=True)
        self.store = RepoStore(root / "cache", GitRunner(home=root / "home"))
        self.store.prepare()
        self.locks = RepoLocks(self.store.lock_dir, poll=0.01)
        self.fake = FakeFiller()
        self.fake.locks = self.locks
        filler = Filler(self.store, self.locks, self.store.git, stall_timeout=60) \
            if real else self.fake
        self.verdicts = VerdictCache(60)
        self.decider = FetchDecider(self.store, filler, self.verdicts)  # type: ignore[arg-type]
        self.repo = self.store.repo_for(COLD)
        self.decider.heads[self.repo.key] = "refs/heads/main"
        for tenant in ("alice", "bob"):
            self.verdicts.record(tenant, COLD, granted=True, view=COLD_VIEW)

    async def decide(self, tenant: str, req: FetchRequest = FULL_CLONE,
                     credential: Credential = ALICE) -> Decision:
        """Decide, failing (instead of hanging) if the decision waits for a fill."""
        return await asyncio.wait_for(
            self.decider.decide(self.repo, tenant, credential, req, HOST), 5)

    @contextlib.contextmanager
    def held_by_another_process(self) -> Iterator[None]:
        """The repo's writer lock, held the way another process holds it (an flock)."""
        self.locks.lock_path(self.repo.key).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.locks.lock_path(self.repo.key), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def test_requests_follow_a_tee_until_its_client_holds_it_back(tmp_path: Path) -> None:
    w = ColdWorld(tmp_path, real=True)

    async def scenario() -> list[Decision]:
        first = await w.decide("alice")
        assert first.route is Route.TEE and first.tee is not None
        waiting = [asyncio.ensure_future(c) for c in (
            w.decide("bob", credential=BOB), w.decide("alice"),
            w.decide("alice", FetchRequest(2, (C_MAIN,), (), (), True, ())))]
        await asyncio.sleep(0.1)
        assert not any(f.done() for f in waiting)  # its client keeps up: they follow it
        first.tee.client_bound.set()  # now the client holds the answer back
        decisions = list(await asyncio.gather(*waiting))
        first.tee.cut("Client disconnected.", client_gone=True)
        with pytest.raises(FillError) as caught:
            await first.tee.task
        assert caught.value.kind is FailureKind.CLIENT
        return decisions

    for d in asyncio.run(scenario()):
        assert d.route is Route.UPSTREAM and "while a cold clone fills the cache" in d.reason
    assert not w.store.exists(w.repo) and list(w.store.tmp_dir.iterdir()) == []


def test_requests_following_a_tee_that_fails_go_upstream(tmp_path: Path) -> None:
    w = ColdWorld(tmp_path, real=True)

    async def scenario() -> list[Decision]:
        first = await w.decide("alice")
        assert first.route is Route.TEE and first.tee is not None
        waiting = [asyncio.ensure_future(w.decide("bob", credential=BOB)),
                   asyncio.ensure_future(w.decide("alice"))]
        await asyncio.sleep(0.1)
        first.tee.cut("Client disconnected.", client_gone=True)  # the tee's client is gone
        return list(await asyncio.gather(*waiting))

    for d in asyncio.run(scenario()):
        assert d.route is Route.UPSTREAM and "Client disconnected" not in d.reason
    assert not w.store.exists(w.repo) and list(w.store.tmp_dir.iterdir()) == []


def test_a_cold_repo_another_process_is_filling_is_passed_upstream(tmp_path: Path) -> None:
    w = ColdWorld(tmp_path, real=True)
    with w.held_by_another_process():
        d = asyncio.run(w.decide("alice"))
        assert d.route is Route.UPSTREAM and "another process fills the repo" in d.reason
        partial = asyncio.run(w.decide("alice", FetchRequest(2, (C_MAIN,), (), (), True, ())))
        assert partial.route is Route.UPSTREAM
    assert w.decider.filler.in_flight(w.repo) is None  # nothing started, nothing waiting


def test_in_fill_mode_a_cold_clone_still_waits_for_the_fill_elsewhere(tmp_path: Path) -> None:
    w = ColdWorld(tmp_path, real=False)
    w.decider.tee = False  # goblet_cold_clones=fill: every answer from the cache
    with w.held_by_another_process():
        d = asyncio.run(w.decide("alice"))
    assert w.fake.started == [ALICE]  # (the fake fill brings nothing: then upstream)
    assert d.route is Route.UPSTREAM and "not in cache" in d.reason


def test_a_cold_clone_without_the_upstreams_head_is_filled_not_teed(tmp_path: Path) -> None:
    w = ColdWorld(tmp_path, real=False)
    del w.decider.heads[w.repo.key]  # the ls-refs before it named no HEAD symref
    d = asyncio.run(w.decide("alice"))
    assert d.route is not Route.TEE and d.tee is None
    assert w.fake.started == [ALICE]  # an ordinary fill, which asks the upstream for HEAD


def test_a_tee_whose_answer_is_whole_is_waited_for_and_its_failure_sends_upstream(
        tmp_path: Path) -> None:
    w = ColdWorld(tmp_path, real=True)

    async def scenario() -> Decision:
        first = await w.decide("alice")
        assert first.tee is not None
        first.tee.finish()  # the answer ended (here with no pack in it: it cannot be kept)
        return await w.decide("alice")  # the same tenant waits for the store, which fails

    d = asyncio.run(scenario())
    assert d.route is Route.UPSTREAM and d.reason == "a cold clone's fill failed: upstream answers"
