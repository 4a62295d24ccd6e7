"""FillReporter: what one fill leaves in the metrics, the access log and the callbacks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from goblet.cache.store import CacheRepo
from goblet.observe.access import AccessLog
from goblet.observe.fills import FillReporter
from goblet.observe.metrics import Metrics

REPO = CacheRepo("https://git.example/org/app", "k" * 64, Path("/nonexistent/k.git"))


def sample(m: Metrics, name: str, **labels: str) -> float:
    value = m.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_fill_in_flight_is_counted_until_it_ends() -> None:
    m = Metrics()
    reporter = FillReporter(m, AccessLog(), "unit")
    reporter.fill_started(REPO)
    reporter.fill_started(REPO)
    assert sample(m, "goblet_fills_in_flight") == 2
    reporter.fill_finished(REPO, "ok", 0.5, 100, "")
    assert sample(m, "goblet_fills_in_flight") == 1


@pytest.mark.parametrize("result", ["ok", "denied", "upstream_error", "local_error",
                                    "abandoned"])
def test_each_result_is_counted_timed_and_logged(result: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    filled: list[CacheRepo] = []
    reporter = FillReporter(m, AccessLog(), "unit-1")
    reporter.on_filled.append(filled.append)
    reporter.fill_started(REPO)
    with caplog.at_level(logging.INFO, logger="goblet.access"):
        reporter.fill_finished(REPO, result, 1.25, 4096 if result == "ok" else 0,
                               "" if result == "ok" else "upstream answered 401")
    assert sample(m, "goblet_fills_total", result=result) == 1
    assert sample(m, "goblet_fill_duration_seconds_sum") == 1.25
    assert sample(m, "goblet_upstream_fetch_bytes_total") == (4096 if result == "ok" else 0)
    [record] = caplog.records
    assert record.getMessage().startswith(f"fill {REPO.url} result={result} ")
    if result == "ok":
        assert record.levelno == logging.INFO and "reason=" not in record.getMessage()
        assert filled == [REPO]
    else:  # a client that went away (abandoned) is no trouble of the operator's
        assert record.levelno == (logging.INFO if result == "abandoned" else logging.WARNING)
        assert "reason='upstream answered 401'" in record.getMessage()
        assert filled == []  # only a successful fill is followed by upkeep
