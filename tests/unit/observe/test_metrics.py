"""The metrics registry: its exposition parses as the text format CONTENT_TYPE names."""

from __future__ import annotations

from goblet.observe.metrics import CONTENT_TYPE, KINDS, Metrics, status_class
from prometheus_client.parser import text_string_to_metric_families


def test_the_content_type_names_the_format_render_writes() -> None:
    body = Metrics().render()
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    names = {f.name for f in text_string_to_metric_families(body.decode("utf-8"))}
    assert {"goblet_requests", "goblet_fills", "goblet_ready"} <= names


def test_status_classes() -> None:
    assert [status_class(s) for s in (None, 99, 100, 204, 302, 404, 503, 599, 600)] == [
        "error", "error", "1xx", "2xx", "3xx", "4xx", "5xx", "5xx", "error"]


def test_every_kind_has_its_duration_series_from_the_start() -> None:
    # (a dashboard panel of either histogram shows 0, not "no data", before the first request)
    body = Metrics().render().decode("utf-8")
    for family in ("goblet_request_duration_seconds", "goblet_upstream_duration_seconds"):
        for kind in KINDS:
            assert f'{family}_count{{kind="{kind}"}} 0.0' in body, (family, kind)
