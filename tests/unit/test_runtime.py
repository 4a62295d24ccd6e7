"""The Runtime as built from settings: its wiring of the parts, without starting them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from goblet.git.runner import GitRunner
from goblet.observe.access import AccessLog
from goblet.observe.metrics import CONTENT_TYPE, Metrics
from goblet.runtime import Runtime

from tests.unit.cache.fakes import FakeCache
from tests.unit.fakes import settings_for


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_the_metrics_endpoint_answers_in_the_format_it_names(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "cache")
    rt = Runtime(settings, GitRunner(home=settings.cache_dir / "home"), b"s" * 32, Metrics(),
                 AccessLog())
    got = run(rt.endpoint_answer("/metrics"))
    assert (got.status, got.content_type) == (200, CONTENT_TYPE)  # type: ignore[attr-defined]
    assert b"goblet_requests_total" in got.body  # type: ignore[attr-defined]


@pytest.mark.parametrize("maintenance", [True, False])
def test_periodic_full_repacks_follow_goblet_maintenance(tmp_path: Path,
                                                        maintenance: bool) -> None:
    """A repo due for its full repack (every new one) is handed over only when maintenance is on."""
    settings = settings_for(tmp_path / "cache", maintenance=maintenance)
    git = GitRunner(home=settings.cache_dir / "home")
    rt = Runtime(settings, git, b"s" * 32, Metrics(), AccessLog())
    rt.store.prepare()
    FakeCache(settings.cache_dir).add("a", 4096, time.time())  # filled, never repacked
    asked: list[str] = []
    rt.maintainer.after_fill = lambda repo: asked.append(repo.url)  # type: ignore[method-assign]
    rt.lifecycle.every = 0.01

    async def a_few_passes() -> None:
        task = asyncio.ensure_future(rt.lifecycle.run())
        await asyncio.sleep(0.3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    run(a_few_passes())
    assert bool(asked) is maintenance
    assert set(asked) <= {"https://git.example/a.git"}
