"""What every fill tells the metrics and the access log (a ``FillObserver``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from goblet.cache.store import CacheRepo
from goblet.observe.access import AccessLog
from goblet.observe.metrics import Metrics


class FillReporter:
    """Feeds fill events to the metrics and the log, then to ``on_filled`` callbacks."""

    def __init__(self, metrics: Metrics, access: AccessLog, instance: str) -> None:
        self.instance = instance
        self.on_filled: list[Callable[[CacheRepo], None]] = []
        self.metrics = metrics
        self.access = access

    def fill_started(self, repo: CacheRepo) -> None:
        """Count the fill as in flight."""
        self.metrics.fills_in_flight.inc()

    def fill_finished(
        self, repo: CacheRepo, result: str, seconds: float, bytes_in: int, reason: str
    ) -> None:
        """Record the fill's result, duration and the pack bytes it brought."""
        self.metrics.fills_in_flight.dec()
        self.metrics.fills.labels(result).inc()
        self.metrics.fill_duration.observe(seconds)
        self.metrics.upstream_fetch_bytes.inc(bytes_in)
        text = f"fill {repo.url} result={result} bytes={bytes_in} duration={seconds:.3f}s"
        if reason:
            text += f" reason={reason!r}"
        # (abandoned: a client went away or read too slowly; nothing failed here or upstream)
        level = logging.INFO if result in ("ok", "abandoned") else logging.WARNING
        self.access.event("fill", text, level, url=repo.url, result=result, bytes=bytes_in,
                          duration=round(seconds, 3), reason=reason, instance=self.instance)
        if result == "ok":
            for callback in self.on_filled:
                callback(repo)
