"""Count a finished git request in the metrics and write its access-log line."""

from __future__ import annotations

from dataclasses import dataclass

from goblet.auth.credentials import short
from goblet.observe.access import AccessLog, AccessRecord
from goblet.observe.metrics import Metrics, status_class
from goblet.policy.flows import FlowState, Outcome
from goblet.policy.outcomes import Ending, ending
from goblet.serve.plans import ServePlan


@dataclass(frozen=True, slots=True)
class Timing:
    """How long a request took, and (for requests passed upstream) the upstream's part."""

    total: float
    upstream: float | None = None


class RequestRecorder:
    """Turns one finished request into metric increments and one access-log line."""

    def __init__(self, metrics: Metrics, access: AccessLog) -> None:
        self.metrics = metrics
        self.access = access

    def finish(self, state: FlowState, *, status: int | None, failed: bool,
               response_bytes: int | None, url: str, timing: Timing, instance: str,
               client_gone: bool = False) -> None:
        """Count and log a request that ended (``url``: of the request as received; the
        cache repo's URL is logged for git requests; ``client_gone``: it failed because
        the client closed its connection)."""
        end = ending(state, status, response_bytes, failed, client_gone=client_gone)
        self.record(state, end, url=state.repo.url if state.repo else url, status=status,
                    timing=timing, instance=instance)

    def record(self, state: FlowState, end: Ending, *, url: str, status: int | None,
               timing: Timing, instance: str) -> None:
        """Count and log ``state``'s request, which ended as ``end``."""
        m, kind = self.metrics, state.kind.metric
        m.of(m.requests, kind, end.outcome.value).inc()
        m.of(m.request_duration, kind).observe(timing.total)
        if state.plan is not None:
            m.of(m.served_bytes, "cache").inc(end.sent or 0)
            if isinstance(state.plan, ServePlan):
                m.of(m.pack_cache_requests, state.plan.stats.cache_role).inc()
        elif state.outcome is Outcome.UPSTREAM:
            m.of(m.served_bytes, "upstream").inc(end.sent or 0)
            m.of(m.upstream_requests, kind, status_class(end.upstream_status)).inc()
            if timing.upstream is not None:
                m.of(m.upstream_duration, kind).observe(timing.upstream)
        self.access.request(AccessRecord(
            kind=state.kind.value, url=url,
            tenant=short(state.tenant) if state.tenant else "-",
            outcome=end.outcome.value, status=status, bytes=end.sent, duration=timing.total,
            upstream_status=end.upstream_status, instance=instance, reason=end.reason,
        ))
