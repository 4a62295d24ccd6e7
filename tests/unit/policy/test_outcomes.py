"""How requests ended, for metrics and logs."""

from __future__ import annotations

from pathlib import Path

import pytest
from goblet.policy.flows import FlowState, Kind, Outcome
from goblet.policy.outcomes import ABANDON_IDLE, ending, read_answer
from goblet.serve.plans import ServePlan


def plan(complete: bool, sent: int = 10, error: str | None = None) -> ServePlan:
    p = ServePlan(Path("/r"), b"", None, "u")
    p.stats.complete, p.stats.bytes_sent, p.stats.error = complete, sent, error
    return p


def test_cache_answers_end_by_whether_the_backend_sent_everything() -> None:
    s = FlowState(Kind.FETCH, outcome=Outcome.CACHE, plan=plan(True))
    assert ending(s, 200, None, False).outcome is Outcome.CACHE
    s = FlowState(Kind.FETCH, outcome=Outcome.OFFLINE, plan=plan(True))
    assert ending(s, 200, None, False).outcome is Outcome.OFFLINE
    s = FlowState(Kind.FETCH, outcome=Outcome.CACHE, plan=plan(False, error="client went away"))
    e = ending(s, 200, None, False)
    assert e.outcome is Outcome.ERROR and e.reason == "client went away" and e.sent == 10
    s = FlowState(Kind.FETCH, outcome=Outcome.CACHE, plan=plan(True))
    assert ending(s, 200, None, True).outcome is Outcome.ERROR


@pytest.mark.parametrize(("status", "failed", "outcome", "upstream"), [
    (200, False, Outcome.UPSTREAM, 200), (302, False, Outcome.UPSTREAM, 302),
    (401, False, Outcome.DENIED, 401), (404, False, Outcome.DENIED, 404),
    (500, False, Outcome.ERROR, 500), (None, True, Outcome.ERROR, None),
    (200, True, Outcome.ERROR, None),
])
def test_upstream_answers(status: int | None, failed: bool, outcome: Outcome,
                          upstream: int | None) -> None:
    s = FlowState(Kind.INFO_REFS)
    s.upstream_bytes = 7
    e = ending(s, status, 3, failed)
    assert (e.outcome, e.upstream_status) == (outcome, upstream)
    assert e.sent == (7 if status is not None else None)


def test_own_answers_keep_their_outcome() -> None:
    s = FlowState(Kind.INVALID, outcome=Outcome.ERROR, reason="bad")
    e = ending(s, 400, 20, False)
    assert (e.outcome, e.sent, e.upstream_status, e.reason) == (Outcome.ERROR, 20, None, "bad")
    cached = ending(FlowState(Kind.LS_REFS, outcome=Outcome.CACHE), 200, 2157, False)
    assert (cached.outcome, cached.sent) == (Outcome.CACHE, 2157)  # a ref answer from cache
    assert ending(s, 400, 20, True).sent is None  # it may not have reached the client


@pytest.mark.parametrize(("state", "status", "keep"), [
    (None, 200, False),
    (FlowState(Kind.ENDPOINT), 200, None),
    (FlowState(Kind.INVALID), 400, None),
    (FlowState(Kind.FETCH, outcome=Outcome.ERROR), 200, None),
    (FlowState(Kind.INFO_REFS), 200, True),
    (FlowState(Kind.LS_REFS), 200, True),
    (FlowState(Kind.LS_REFS), 401, False),
    (FlowState(Kind.FETCH), 200, False),
    (FlowState(Kind.PUSH), 200, False),
])
def test_which_answers_are_read(state: FlowState | None, status: int, keep: bool | None) -> None:
    assert read_answer(state, status) is keep


def test_metric_kinds() -> None:
    assert [k.metric for k in Kind] == ["info_refs", "ls_refs", "fetch", "other", "push",
                                        "other", "other", "other", "lfs_batch", "lfs_object"]


def test_a_client_that_went_away_abandoned_its_request() -> None:
    """A client closing its connection while its answer came is nobody's failure; a
    client goblet cut off (a deadline, a stalled fill), a 4xx/5xx answer, or an answer
    that had stopped coming is an error."""
    served = FlowState(Kind.FETCH, outcome=Outcome.CACHE, plan=plan(False, sent=7),
                       reason="client disconnected")
    e = ending(served, 200, None, True, client_gone=True)
    assert (e.outcome, e.sent) == (Outcome.ABANDONED, 7) and "went away" in e.reason
    nothing_yet = FlowState(Kind.FETCH, outcome=Outcome.CACHE, plan=plan(False, sent=0))
    assert ending(nothing_yet, 200, None, True, client_gone=True).outcome is Outcome.ERROR
    relayed = FlowState(Kind.FETCH, upstream_bytes=99, last_byte=100.0)
    got = ending(relayed, 200, None, True, client_gone=True, now=105.0)
    assert (got.outcome, got.sent) == (Outcome.ABANDONED, 99)
    stalled = ending(relayed, 200, None, True, client_gone=True, now=100.0 + ABANDON_IDLE + 1)
    assert stalled.outcome is Outcome.ERROR  # it gave up on an answer that stopped coming
    for status in (401, 503):  # git hangs up on these as they arrive
        assert ending(relayed, status, None, True, client_gone=True,
                      now=101.0).outcome is not Outcome.ABANDONED
    assert ending(relayed, 200, None, True, client_gone=False, now=101.0).outcome \
        is Outcome.ERROR
    assert ending(relayed, 200, None, False, client_gone=True).outcome is Outcome.UPSTREAM
    late = FlowState(Kind.FETCH, timed_out=True, upstream_bytes=5, last_byte=100.0)
    assert ending(late, None, None, True, client_gone=True, now=101.0).outcome \
        is Outcome.ERROR
    own = FlowState(Kind.LS_REFS, outcome=Outcome.CACHE)  # whole in memory
    assert ending(own, 200, 2157, True, client_gone=True).outcome is Outcome.ABANDONED
