"""Builders the unit tests of several packages share."""

from __future__ import annotations

from pathlib import Path

from goblet.options import Settings

MiB = 1024 * 1024


def settings_for(cache_dir: Path, **kw: object) -> Settings:
    """Settings for one host, ``git.example``, with ``kw`` changed (any field)."""
    values: dict[str, object] = dict(
        cache_dir=cache_dir, hosts=frozenset({("git.example", 443)}), verdict_ttl=60,
        upstream_timeout=60, instance="unit", max_request_bytes=MiB, min_free_bytes=0,
        metrics_port=0, metrics_host="", log_format="text")
    return Settings(**(values | kw))  # type: ignore[arg-type]
