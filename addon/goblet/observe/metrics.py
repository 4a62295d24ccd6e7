"""Prometheus metrics, in a registry of goblet's own.

Labels are low-cardinality enums only: no tenant, repo or host labels (they
are unbounded); per-repo detail is in the access log. Every name here is
documented in ``docs/reference/metrics.md`` and a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from goblet.policy.flows import METRIC_KINDS, Outcome

KINDS = tuple(kind.value for kind in METRIC_KINDS)
OUTCOMES = tuple(outcome.value for outcome in Outcome)
FILL_RESULTS = ("ok", "denied", "upstream_error", "local_error", "abandoned")
SOURCES = ("cache", "upstream")
LFS_DOWNLOADS = ("cache", "upstream", "refused", "corrupt")
REPACK_KINDS = ("geometric", "full")
REPACK_RESULTS = ("ok", "error", "skipped")
PACK_CACHE_RESULTS = ("bypass", "produce", "follow", "hit")
STORE_RESTORES = ("hit", "miss", "error")
STORE_PUBLISHES = ("base", "increment", "skipped", "error")
STORE_DIRECTIONS = ("down", "up")
STORE_OPERATIONS = ("restore", "publish")
LEASE_RESULTS = ("leader", "follower", "busy", "timeout", "foreign")
FLEET_PARTS = ("store", "redis")
WEBHOOK_RESULTS = ("accepted", "ignored", "refused")
# Seconds: the age of refs answered from the cache (bounded by goblet_refs_ttl).
AGE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
BODY_RESULTS = ("inspected", "too_large", "not_decoded", "busy", "invalid", "timeout")

_Labelled = TypeVar("_Labelled", Counter, Histogram)

# Seconds: from a warm ls-refs (ms) to a cold multi-GB clone (tens of minutes).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                    600, 1200, 1800)

# The Content-Type of what ``Metrics.render`` writes: Prometheus's text format 0.0.4.
# (prometheus_client's CONTENT_TYPE_LATEST names a newer version in recent releases.)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """All goblet metrics. One instance per addon; ``render`` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Counter | Histogram] = {}
        r = self.registry
        self.requests = Counter(
            "goblet_requests", "Git requests handled, by kind and outcome.",
            ["kind", "outcome"], registry=r)
        self.request_duration = Histogram(
            "goblet_request_duration_seconds",
            "Time from request headers to the end of the answer, by kind.",
            ["kind"], buckets=DURATION_BUCKETS, registry=r)
        self.upstream_requests = Counter(
            "goblet_upstream_requests", "Git requests answered by the upstream, by kind and "
            "HTTP status class (2xx, 3xx, 4xx, 5xx) or 'error' when no answer came.",
            ["kind", "status"], registry=r)
        self.upstream_duration = Histogram(
            "goblet_upstream_duration_seconds",
            "Time the upstream took to answer git requests passed to it, by kind.",
            ["kind"], buckets=DURATION_BUCKETS, registry=r)
        self.fills = Counter(
            "goblet_fills", "Cache fills (and exact-object fetches) from upstream, by result.",
            ["result"], registry=r)
        self.fill_duration = Histogram(
            "goblet_fill_duration_seconds", "Duration of fills from upstream.",
            buckets=DURATION_BUCKETS, registry=r)
        self.fills_in_flight = Gauge(
            "goblet_fills_in_flight", "Fills running now.", registry=r)
        self.served_bytes = Counter(
            "goblet_served_bytes", "Bytes of git answers sent to clients, by source.",
            ["source"], registry=r)
        self.upstream_fetch_bytes = Counter(
            "goblet_upstream_fetch_bytes",
            "Bytes of pack data fills brought from upstream into the cache.", registry=r)
        self.cache_repos = Gauge(
            "goblet_cache_repos", "Repos in the cache (last measured).", registry=r)
        self.cache_bytes = Gauge(
            "goblet_cache_bytes", "Disk used by the cache directory (last measured).",
            registry=r)
        self.cache_free_bytes = Gauge(
            "goblet_cache_free_bytes",
            "Free bytes on the cache directory's filesystem (last measured).", registry=r)
        self.ready = Gauge(
            "goblet_ready", "1 when every readiness check passes (as /readyz), else 0; "
            "re-evaluated every 15 s.", registry=r)
        self.evictions = Counter(
            "goblet_evictions", "Repos and LFS objects evicted to keep the cache within its "
            "budget.", registry=r)
        self.partition_evictions = Counter(
            "goblet_partition_evictions",
            "Cache copies of a repo evicted because its tenant/user partitions exceeded "
            "goblet_max_partitions (also counted in goblet_evictions).", registry=r)
        self.partition_refusals = Counter(
            "goblet_partition_refusals",
            "New cache copies of a repo not made (the request went upstream) because its "
            "copies were at goblet_max_partitions and all in use.", registry=r)
        self.request_bodies = Counter(
            "goblet_request_bodies",
            "Upload-pack request bodies by how goblet handled them: inspected, too_large "
            "(passed through uninspected), not_decoded (an encoding goblet does not decode, "
            "passed through), busy (the bodies held at once at their budget: passed "
            "through), invalid (answered 400), timeout (client disconnected).",
            ["result"], registry=r)
        self.repacks = Counter(
            "goblet_repacks", "Maintenance repacks, by kind and result.", ["kind", "result"],
            registry=r)
        self.pack_cache_requests = Counter(
            "goblet_pack_cache_requests",
            "Cache answers by pack-cache role: bypass (upload-pack, not stored), produce "
            "(upload-pack, stored), follow (shared a production), hit (stored answer).",
            ["result"], registry=r)
        self.pack_cache_bytes = Gauge(
            "goblet_pack_cache_bytes", "Bytes of stored upload-pack answers.", registry=r)
        self.verdict_entries = Gauge(
            "goblet_verdict_cache_entries", "(tenant, repo) verdicts held in memory.",
            registry=r)
        self.store_restores = Counter(
            "goblet_store_restores", "Cold fills that asked the object-store tier: hit "
            "(restored, then only the delta fetched upstream), miss (nothing published), "
            "error (unreachable or did not verify: filled from upstream).",
            ["result"], registry=r)
        self.store_publishes = Counter(
            "goblet_store_publishes", "Publishes to the object store: base (a full bundle), "
            "increment, skipped (the store already had these refs), error.",
            ["result"], registry=r)
        self.store_bytes = Counter(
            "goblet_store_bytes", "Bundle bytes moved to (up) and from (down) the object store.",
            ["direction"], registry=r)
        self.store_duration = Histogram(
            "goblet_store_duration_seconds", "Time of restores and publishes, by operation.",
            ["operation"], buckets=DURATION_BUCKETS, registry=r)
        self.lease_waits = Counter(
            "goblet_fleet_lease_waits", "Fleet fill leases asked for: leader (taken), follower "
            "(another instance filled and published; restored from the store), busy (another "
            "instance fills: not waited for), timeout (waited too long: filled alone), "
            "foreign (the lease holds a value no goblet holder keeps: filled alone).",
            ["result"], registry=r)
        self.lease_wait_seconds = Histogram(
            "goblet_fleet_lease_wait_seconds", "Time spent waiting for a fleet fill lease.",
            buckets=DURATION_BUCKETS, registry=r)
        self.fleet_degraded = Counter(
            "goblet_fleet_degraded", "Fleet operations done without a shared part (store or "
            "redis) because it failed or was unreachable: the instance filled on its own.",
            ["part"], registry=r)
        self.refs_answers = Counter(
            "goblet_refs_answers", "info/refs and ls-refs answers, by source: cache (within "
            "goblet_refs_ttl) or upstream.", ["source"], registry=r)
        self.refs_age = Histogram(
            "goblet_refs_age_seconds", "Age of the refs in ref answers given from the cache.",
            buckets=AGE_BUCKETS, registry=r)
        self.webhooks = Counter(
            "goblet_webhooks", "Push webhooks received: accepted (refs marked stale), "
            "ignored (signed, but not a push), refused (bad or missing signature, too large, "
            "malformed).", ["result"], registry=r)
        self.lfs_bytes = Counter(
            "goblet_lfs_bytes", "Bytes of LFS objects sent to clients through goblet links, "
            "by source (cache: the LFS store; upstream: the upstream's download href).",
            ["source"], registry=r)
        self.lfs_downloads = Counter(
            "goblet_lfs_downloads", "Requests of goblet LFS links, by result: cache, upstream, "
            "refused (unknown, expired or another credential's link), corrupt (the upstream's "
            "object did not match its oid: not stored, connection aborted).",
            ["result"], registry=r)
        self.lfs_links = Counter(
            "goblet_lfs_links", "LFS downloads upstream granted that goblet linked to itself.",
            registry=r)
        ProcessCollector(registry=r)
        self._export_zeros()

    def _export_zeros(self) -> None:
        """Make every labelled series exist from the start, so rates and ratios do."""
        for source in SOURCES:
            self.lfs_bytes.labels(source)
        for result in LFS_DOWNLOADS:
            self.lfs_downloads.labels(result)
        for kind in KINDS:
            self.request_duration.labels(kind)
            self.upstream_duration.labels(kind)
            for outcome in OUTCOMES:
                self.requests.labels(kind, outcome)
        for result in FILL_RESULTS:
            self.fills.labels(result)
        for source in SOURCES:
            self.served_bytes.labels(source)
            self.refs_answers.labels(source)
        for result in WEBHOOK_RESULTS:
            self.webhooks.labels(result)
        for kind in REPACK_KINDS:
            for result in REPACK_RESULTS:
                self.repacks.labels(kind, result)
        for result in PACK_CACHE_RESULTS:
            self.pack_cache_requests.labels(result)
        for result in BODY_RESULTS:
            self.request_bodies.labels(result)
        for labels, metric in ((STORE_RESTORES, self.store_restores),
                               (STORE_PUBLISHES, self.store_publishes),
                               (STORE_DIRECTIONS, self.store_bytes),
                               (LEASE_RESULTS, self.lease_waits),
                               (FLEET_PARTS, self.fleet_degraded)):
            for label in labels:
                metric.labels(label)
        for operation in STORE_OPERATIONS:
            self.store_duration.labels(operation)

    def of(self, metric: _Labelled, *values: str) -> _Labelled:
        """``metric.labels(*values)`` of one of this instance's metrics, remembered: the
        per-request counters skip prometheus_client's label checks (every label value
        is from a small fixed set, so this stays small)."""
        key = (id(metric), values)  # (``metric`` lives as long as ``self``: ids are stable)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child  # type: ignore[return-value]

    def track_verdicts(self, size: Callable[[], int]) -> None:
        """Report ``size()`` as the verdict cache size at every scrape."""
        self.verdict_entries.set_function(lambda: float(size()))

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)


def status_class(status: int | None) -> str:
    """``2xx``…``5xx`` for an HTTP status, ``error`` when there was none."""
    if status is None or not 100 <= status <= 599:
        return "error"
    return f"{status // 100}xx"
