"""Fixtures for end-to-end tests: a real HTTPS upstream, a real mitmdump, the real git.

Servers are module-scoped (each test module gets its own upstream and proxy, so
xdist can run modules in parallel); every test makes its own repos with unique
names, so tests do not depend on each other's cache state.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.attack import proxy_for
from tests.support.gitclient import GitClient
from tests.support.proxy import GobletProxy, ensure_ca
from tests.support.repos import make_bare_repo
from tests.support.upstream_client import UpstreamServer

E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e ``e2e``, so ``-m e2e`` and ``-m "not e2e"`` select by it.

    (A ``pytestmark`` in a conftest marks nothing; the hook sees the whole
    session's items, so it marks only those collected from this directory.)
    """
    for item in items:
        if item.path.resolve().is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)

USERS: dict[str, dict[str, Any]] = {
    "alice": {"password": "alice-pw", "tokens": ["tok-alice"]},
    "bob": {"password": "bob-pw", "tokens": ["tok-bob"]},
    "carol": {"password": "carol-pw", "tokens": []},
}
_names = itertools.count()


class Repos:
    """Creates uniquely named repos on the upstream and keeps its config in step."""

    def __init__(self, upstream: UpstreamServer) -> None:
        self.upstream = upstream
        self.config: dict[str, Any] = {"users": USERS, "repos": {}}

    def create(
        self,
        *,
        public: bool = True,
        readers: tuple[str, ...] = (),
        writers: tuple[str, ...] = ("alice",),
        **shape: Any,
    ) -> str:
        """Make a repo; return its name (``rNN.git``)."""
        name = f"r{next(_names)}.git"
        shape.setdefault("commits", 12)
        shape.setdefault("branches", ("main", "dev"))
        shape.setdefault("tags", ("v1",))
        shape.setdefault("annotated_tags", ("v2",))
        make_bare_repo(self.upstream.root / name, **shape)
        self.grant(name, public=public, readers=readers, writers=writers)
        return name

    def grant(self, name: str, *, public: bool, readers: tuple[str, ...] = (),
              writers: tuple[str, ...] = ("alice",)) -> None:
        """Set the access rules of ``name`` (takes effect at the next request)."""
        self.config["repos"][name] = {
            "public": public, "readers": list(readers), "writers": list(writers),
        }
        self.upstream.set_config(self.config)

    def path(self, name: str) -> Path:
        """The upstream's bare repo on disk."""
        return self.upstream.root / name


def count(stats: dict[str, Any], kind: str, repo: str, status: int | None = None) -> int:
    """How many upstream requests of ``kind`` for ``repo`` the stats log shows."""
    return sum(
        1 for r in stats["requests"]
        if r["kind"] == kind and r["path"].startswith(f"/{repo}/")
        and (status is None or r["status"] == status)
    )


@pytest.fixture(scope="session")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mitmproxy's confdir with a CA made once per test worker."""
    path = tmp_path_factory.mktemp("confdir")
    ensure_ca(path)
    return path


@contextmanager
def started_upstream(tmp_path_factory: pytest.TempPathFactory, label: str = "upstream",
                     **options: Any) -> Iterator[UpstreamServer]:
    """An HTTPS git upstream with the users ``USERS`` and no repos yet, running for the
    ``with`` block; ``options`` go to :class:`UpstreamServer` (``alt_name``, ``private_ca``,
    ``rate_mbit``...)."""
    with UpstreamServer(tmp_path_factory.mktemp(label), {"users": USERS, "repos": {}},
                        **options) as server:
        yield server


@pytest.fixture(scope="module")
def upstream(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UpstreamServer]:
    """The HTTPS git upstream (git http-backend), on 127.0.0.1 (with the module's
    ``UPSTREAM_OPTIONS``, if it has any)."""
    with started_upstream(tmp_path_factory,
                          **getattr(request.module, "UPSTREAM_OPTIONS", {})) as server:
        yield server


@pytest.fixture(scope="module")
def repos(upstream: UpstreamServer) -> Repos:
    """Repo factory bound to the module's upstream."""
    return Repos(upstream)


@pytest.fixture(scope="module")
def proxy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    upstream: UpstreamServer, confdir: Path,
) -> Iterator[GobletProxy]:
    """mitmdump with the goblet addon, caching the upstream's host (both, where it has a
    second virtual host), plus the module's ``PROXY_SETS`` options, if it has any."""
    sets = {"goblet_upstream_timeout": "5", **getattr(request.module, "PROXY_SETS", {})}
    with proxy_for(tmp_path_factory.mktemp("proxy"), upstream, confdir, sets) as px:
        yield px


@pytest.fixture
def start_proxy(
    tmp_path: Path, upstream: UpstreamServer, confdir: Path
) -> Iterator[Callable[[dict[str, str]], GobletProxy]]:
    """Starts a proxy of the test's own in front of the module's upstream, with the given
    ``--set`` options (its own memory baseline, outage state and partitions, where the
    module's shared proxy would mix tests); stops it after the test."""
    started: list[GobletProxy] = []

    def start(sets: dict[str, str]) -> GobletProxy:
        px = proxy_for(tmp_path / "proxy", upstream, confdir, sets)
        started.append(px)
        return px.start()

    yield start
    for px in started:
        px.stop()


@pytest.fixture
def tenant_proxy(start_proxy: Callable[[dict[str, str]], GobletProxy]) -> GobletProxy:
    """A proxy of the test's own in ``tenant`` isolation keeping at most two partitions
    (copies) of a repo."""
    return start_proxy({"goblet_upstream_timeout": "5", "goblet_isolation": "tenant",
                        "goblet_max_partitions": "2"})


@pytest.fixture
def git(tmp_path: Path, proxy: GobletProxy) -> GitClient:
    """git through the proxy, trusting only the proxy's CA."""
    return GitClient(tmp_path / "home", ca_file=proxy.ca_cert, proxy=proxy.url)


@pytest.fixture
def direct(tmp_path: Path, upstream: UpstreamServer) -> GitClient:
    """git straight to the upstream, trusting only the upstream's certificate."""
    return GitClient(tmp_path / "home-direct", ca_file=upstream.cert_path)
