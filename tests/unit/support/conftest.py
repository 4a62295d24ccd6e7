"""Fixtures for the upstream fixture's own tests: one server per module, with small repos."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.repos import make_bare_repo, make_empty_bare_repo
from tests.support.upstream import UpstreamServer
from tests.unit.support.helpers import CONFIG


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamServer]:
    """One server for the module, with a few small repos."""
    server = UpstreamServer(tmp_path_factory.mktemp("upstream"), CONFIG)
    make_bare_repo(
        server.root / "public.git",
        branches=["main", "dev"],
        tags=["v1"],
        annotated_tags=["r1"],
    )
    make_bare_repo(server.root / "private.git", seed=1)
    make_bare_repo(server.root / "scratch.git", seed=2)
    make_bare_repo(server.root / "many.git", commits=40, tags=[f"t{i}" for i in range(30)])
    make_empty_bare_repo(server.root / "empty.git")
    with server:
        yield server


@pytest.fixture(autouse=True)
def _clean_upstream(request: pytest.FixtureRequest) -> None:
    """Clear faults, config changes and counters left by the previous test."""
    if "upstream" in request.fixturenames:
        server: UpstreamServer = request.getfixturevalue("upstream")
        server.fault("none")
        server.set_config(CONFIG)
        server.reset_stats()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty HOME for git clients."""
    path = tmp_path / "home"
    path.mkdir()
    return path
