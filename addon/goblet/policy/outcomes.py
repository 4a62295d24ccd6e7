"""How a git request ended, for its metrics and its access-log line.

- The client closed its connection while its answer was coming (a killed CI
  job, Ctrl-C): ``abandoned``, whoever was answering — unless goblet closed it
  (a stalled streamed fill, a deadline), the answer was a 4xx/5xx (git hangs up
  on those), or nothing had come for a while (the client gave up waiting: the
  hang is the ``error``).
- Answered from the cache (or offline): ``cache``/``offline`` if the backend
  sent the whole answer, else ``error`` (a stream cut short).
- Passed upstream: ``denied`` for 401/403/404, ``error`` for a 5xx or when no
  (complete) answer came, else ``upstream``.
- goblet's own answers keep the outcome they were given (``error`` for a 400).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from goblet.policy.flows import FlowState, Kind, Outcome

DENIALS = (401, 403, 404)
ABANDON_IDLE = 10.0  # seconds an upstream answer may pause and still count as moving


@dataclass(frozen=True, slots=True)
class Ending:
    """The facts a finished request is counted and logged with."""

    outcome: Outcome
    sent: int | None  # bytes of the answer sent to the client, if known
    upstream_status: int | None  # the upstream's status, for requests passed to it
    reason: str


def ending(state: FlowState, status: int | None, response_bytes: int | None,
           failed: bool, *, client_gone: bool = False, now: float | None = None) -> Ending:
    """How ``state``'s request ended: ``status`` of the answer (None without one),
    ``response_bytes`` of a buffered answer, ``failed`` when the flow errored,
    ``client_gone`` when it did because the client closed its connection (goblet did
    not close it): ``abandoned``, nobody's failure — if its answer was moving
    (``moving``; ``now``: the monotonic time, for that)."""
    reason = state.reason
    if failed and client_gone and not state.timed_out and (status is None or status < 400) \
            and moving(state, time.monotonic() if now is None else now):
        sent = state.plan.stats.bytes_sent if state.plan is not None \
            else state.upstream_bytes or None
        return Ending(Outcome.ABANDONED, sent, None,
                      f"the client went away mid-answer ({reason})" if reason
                      else "the client went away mid-answer")
    if state.plan is not None:
        stats = state.plan.stats
        if stats.complete and not failed:
            return Ending(state.outcome, stats.bytes_sent, None, reason)
        return Ending(Outcome.ERROR, stats.bytes_sent, None,
                      stats.error or reason or "cache stream incomplete")
    if state.outcome is not Outcome.UPSTREAM:  # goblet's own answer, whole in memory
        return Ending(state.outcome, None if failed else response_bytes, None, reason)
    upstream_status = None if failed else status
    sent = (state.upstream_bytes or response_bytes) if status is not None else None
    if failed or status is None or status >= 500:
        return Ending(Outcome.ERROR, sent, upstream_status, reason)
    if status in DENIALS:
        return Ending(Outcome.DENIED, sent, upstream_status, reason)
    return Ending(Outcome.UPSTREAM, sent, upstream_status, reason)


def moving(state: FlowState, now: float) -> bool:
    """Whether ``state``'s answer was still coming when its client went away: the cache
    had sent some of it, an upstream's last byte passed within ``ABANDON_IDLE`` seconds,
    or it was goblet's own answer (whole in memory). A client that gives up on an answer
    that does not come (an upstream or a backend that hangs) is goblet's ``error``."""
    if state.plan is not None:
        return state.plan.stats.bytes_sent > 0
    if state.outcome is not Outcome.UPSTREAM:
        return True
    return state.upstream_bytes > 0 and now - state.last_byte <= ABANDON_IDLE


def read_answer(state: FlowState | None, status: int) -> bool | None:
    """Whether the addon keeps an answer's body in memory to read it (True), leaves
    alone an answer of its own (None), or streams it (False)."""
    if state is None:
        return False
    if state.kind in (Kind.ENDPOINT, Kind.INVALID) or state.outcome is Outcome.ERROR:
        return None  # goblet's own answer, already in memory
    return state.kind in (Kind.INFO_REFS, Kind.LS_REFS) and status == 200
