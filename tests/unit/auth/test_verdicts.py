"""VerdictCache: grants expire after the TTL, denials win at once, the map stays bounded."""

from __future__ import annotations

import pytest
from goblet.auth.verdicts import RefView, Verdict, VerdictCache

REPO = "https://github.com/org/repo.git"


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def cache(clock: Clock, ttl: float = 60.0, max_entries: int = 100) -> VerdictCache:
    return VerdictCache(ttl, max_entries=max_entries, clock=clock)


@pytest.mark.parametrize(
    ("age", "granted"),
    [
        pytest.param(0.0, True, id="fresh"),
        pytest.param(30.0, True, id="half-ttl"),
        pytest.param(59.999, True, id="just-before-ttl"),
        pytest.param(60.001, False, id="just-after-ttl"),
        pytest.param(61.0, False, id="one-second-late"),
        pytest.param(10_000.0, False, id="long-expired"),
    ],
)
def test_grant_expires_after_ttl(clock: Clock, age: float, granted: bool) -> None:
    verdicts = cache(clock)
    verdicts.record("t1", REPO, granted=True)
    clock.now += age
    assert verdicts.is_granted("t1", REPO) is granted


@pytest.mark.parametrize("ttl", [0.0, 60.0], ids=["ttl-0", "ttl-60"])
def test_grant_exactly_ttl_old_is_expired(clock: Clock, ttl: float) -> None:
    verdicts = cache(clock, ttl=ttl)
    verdicts.record("t1", REPO, granted=True)
    clock.now += ttl
    assert not verdicts.is_granted("t1", REPO)


def test_unknown_pair_is_not_granted(clock: Clock) -> None:
    assert not cache(clock).is_granted("t1", REPO)


def test_denial_is_never_a_grant(clock: Clock) -> None:
    verdicts = cache(clock)
    verdicts.record("t1", REPO, granted=False)
    assert not verdicts.is_granted("t1", REPO)


def test_denial_replaces_a_grant_immediately(clock: Clock) -> None:
    verdicts = cache(clock)
    verdicts.record("t1", REPO, granted=True)
    assert verdicts.is_granted("t1", REPO)
    verdicts.record("t1", REPO, granted=False)  # same clock tick: no grace period
    assert not verdicts.is_granted("t1", REPO)
    assert len(verdicts) == 1


def test_grant_after_denial_grants_again(clock: Clock) -> None:
    verdicts = cache(clock)
    verdicts.record("t1", REPO, granted=False)
    clock.now += 1
    verdicts.record("t1", REPO, granted=True)
    assert verdicts.is_granted("t1", REPO)


def test_new_grant_restarts_the_ttl(clock: Clock) -> None:
    verdicts = cache(clock)
    verdicts.record("t1", REPO, granted=True)
    clock.now += 50
    verdicts.record("t1", REPO, granted=True)
    clock.now += 50  # 100 s after the first grant, 50 s after the second
    assert verdicts.is_granted("t1", REPO)


def test_reading_does_not_extend_a_grant(clock: Clock) -> None:
    verdicts = cache(clock)
    verdicts.record("t1", REPO, granted=True)
    for _ in range(10):
        clock.now += 10
        verdicts.is_granted("t1", REPO)
    clock.now += 1  # 101 s after the grant
    assert not verdicts.is_granted("t1", REPO)


@pytest.mark.parametrize(
    ("tenant", "repo"),
    [
        pytest.param("t2", REPO, id="other-tenant"),
        pytest.param("t1", REPO + "x", id="other-repo"),
        pytest.param("t1", REPO.upper(), id="repo-case"),
        pytest.param("T1", REPO, id="tenant-case"),
    ],
)
def test_grant_is_per_tenant_and_repo(clock: Clock, tenant: str, repo: str) -> None:
    verdicts = cache(clock)
    verdicts.record("t1", REPO, granted=True)
    assert not verdicts.is_granted(tenant, repo)


def test_ttl_change_applies_to_existing_grants(clock: Clock) -> None:
    verdicts = cache(clock, ttl=60)
    verdicts.record("t1", REPO, granted=True)
    clock.now += 30
    verdicts.ttl = 10  # what the addon does when goblet_verdict_ttl changes
    assert not verdicts.is_granted("t1", REPO)


@pytest.mark.parametrize("max_entries", [1, 2, 3, 10])
def test_bound_is_exact(clock: Clock, max_entries: int) -> None:
    verdicts = cache(clock, max_entries=max_entries)
    for i in range(max_entries + 5):
        verdicts.record(f"t{i}", REPO, granted=True)
        assert len(verdicts) == min(i + 1, max_entries)
    kept = [i for i in range(max_entries + 5) if verdicts.is_granted(f"t{i}", REPO)]
    assert kept == list(range(5, max_entries + 5))  # the newest max_entries survive


def test_least_recently_recorded_is_dropped(clock: Clock) -> None:
    verdicts = cache(clock, max_entries=2)
    verdicts.record("a", REPO, granted=True)
    verdicts.record("b", REPO, granted=True)
    verdicts.record("a", REPO, granted=True)  # re-recording refreshes a's place
    verdicts.record("c", REPO, granted=True)
    assert verdicts.is_granted("a", REPO)
    assert not verdicts.is_granted("b", REPO)
    assert verdicts.is_granted("c", REPO)


def test_reading_does_not_refresh_lru_position(clock: Clock) -> None:
    verdicts = cache(clock, max_entries=2)
    verdicts.record("a", REPO, granted=True)
    verdicts.record("b", REPO, granted=True)
    assert verdicts.is_granted("a", REPO)
    verdicts.record("c", REPO, granted=True)
    assert not verdicts.is_granted("a", REPO)  # least recently *recorded*
    assert verdicts.is_granted("b", REPO)


def test_dropped_denial_can_only_cost_a_round_trip(clock: Clock) -> None:
    verdicts = cache(clock, max_entries=1)
    verdicts.record("a", REPO, granted=False)
    verdicts.record("b", REPO, granted=True)
    assert not verdicts.is_granted("a", REPO)  # forgotten denial is still no grant


def test_rerecording_does_not_grow(clock: Clock) -> None:
    verdicts = cache(clock, max_entries=5)
    for _ in range(20):
        verdicts.record("a", REPO, granted=True)
        verdicts.record("a", REPO, granted=False)
    assert len(verdicts) == 1


def test_clear_forgets_everything(clock: Clock) -> None:
    verdicts = cache(clock)
    verdicts.record("a", REPO, granted=True)
    verdicts.record("b", REPO, granted=False)
    verdicts.clear()
    assert len(verdicts) == 0
    assert not verdicts.is_granted("a", REPO)


def test_default_clock_is_monotonic() -> None:
    verdicts = VerdictCache(ttl=60)
    verdicts.record("a", REPO, granted=True)
    assert verdicts.is_granted("a", REPO)


def test_verdict_is_immutable() -> None:
    v = Verdict(True, 1.0)
    with pytest.raises(AttributeError):
        v.granted = False  # type: ignore[misc]


# ---------------------------------------------------------------- ref views (served by id)

A, B, C = "a" * 40, "b" * 40, "c" * 40


def view(**refs: str) -> RefView:
    return RefView.of({f"refs/heads/{k}": v for k, v in refs.items()}, {})


def test_a_view_holds_refs_and_peeled_tags() -> None:
    v = RefView.of({"refs/heads/main": A, "refs/tags/v1": B}, {"refs/tags/v1": C})
    assert v.tips == {A, B, C}
    assert v.names == {"refs/heads/main", "refs/tags/v1"}


def test_a_grant_without_refs_keeps_the_previous_view(clock: Clock) -> None:
    c = cache(clock)
    c.record("t", REPO, granted=True, view=view(main=A))
    clock.now += 10
    c.record("t", REPO, granted=True)  # a v2 capability advertisement lists no refs
    got = c.view("t", REPO, 60)
    assert got is not None and got.tips == {A}
    clock.now += 51  # the view is as old as the answer that listed the refs
    assert c.view("t", REPO, 60) is None
    assert c.is_granted("t", REPO)


def test_a_newer_view_replaces_the_older_one(clock: Clock) -> None:
    c = cache(clock)
    c.record("t", REPO, granted=True, view=view(main=A, leak=B))
    c.record("t", REPO, granted=True, view=view(main=A))
    got = c.view("t", REPO, 60)
    assert got is not None and got.tips == {A}


def test_a_denial_drops_the_view(clock: Clock) -> None:
    c = cache(clock)
    c.record("t", REPO, granted=True, view=view(main=A))
    c.record("t", REPO, granted=False, status=404)
    assert c.view("t", REPO, 60) is None
    c.record("t", REPO, granted=True)  # a later grant without refs brings nothing back
    assert c.view("t", REPO, 60) is None


def test_views_are_per_tenant_and_shared_when_equal(clock: Clock) -> None:
    c = cache(clock)
    c.record("t1", REPO, granted=True, view=view(main=A))
    c.record("t2", REPO, granted=True, view=view(main=A))
    c.record("t3", REPO, granted=True, view=view(main=B))
    assert c.view("t1", REPO, 60) is c.view("t2", REPO, 60)
    v3 = c.view("t3", REPO, 60)
    assert v3 is not None and v3.tips == {B}
    assert c.view("t4", REPO, 60) is None


def refs(n: int, start: int = 0) -> RefView:
    """A view of ``n`` branches."""
    return RefView.of({f"refs/heads/b{i}": A for i in range(start, start + n)}, {})


def test_the_views_held_stay_within_their_refs_budget(clock: Clock) -> None:
    """Distinct views are counted once however many entries share them; over the budget
    the least recently recorded entries go (an upstream round trip for them, no more)."""
    c = VerdictCache(60, max_view_pairs=10, clock=clock)
    for tenant in ("t1", "t2", "t3"):
        c.record(tenant, REPO, granted=True, view=refs(4))  # one view, shared: 4 refs
    c.record("t4", REPO, granted=True, view=refs(4, start=4))  # 8 refs
    assert all(c.view(t, REPO, 60) is not None for t in ("t1", "t2", "t3", "t4"))
    c.record("t5", REPO, granted=True, view=refs(4, start=8))  # 12: the shared one goes
    assert [c.view(t, REPO, 60) is not None for t in ("t1", "t2", "t3", "t4", "t5")] == [
        False, False, False, True, True]
    c.record("t4", REPO, granted=False, status=403)  # a denial holds no view: 4 refs left
    c.record("t6", REPO, granted=True, view=refs(6, start=20))
    assert c.view("t5", REPO, 60) is not None and c.view("t6", REPO, 60) is not None


def test_one_view_over_the_budget_is_still_recorded(clock: Clock) -> None:
    c = VerdictCache(60, max_view_pairs=3, clock=clock)
    c.record("t1", REPO, granted=True, view=refs(2))
    c.record("t2", REPO, granted=True, view=refs(5, start=10))
    assert c.view("t1", REPO, 60) is None and c.view("t2", REPO, 60) is not None


def test_expired_and_cleared_entries_give_their_refs_back(clock: Clock) -> None:
    c = VerdictCache(60, max_view_pairs=8, clock=clock)
    c.record("t1", REPO, granted=True, view=refs(4))
    c.record("t2", REPO, granted=True, view=refs(4, start=4))
    clock.now += 61
    c.record("t3", REPO, granted=True, view=refs(4, start=8))  # sweeps t1 and t2 first
    c.record("t4", REPO, granted=True, view=refs(4, start=12))
    assert c.view("t3", REPO, 60) is not None and c.view("t4", REPO, 60) is not None
    c.clear()
    c.record("t5", REPO, granted=True, view=refs(8, start=20))
    assert c.view("t5", REPO, 60) is not None
