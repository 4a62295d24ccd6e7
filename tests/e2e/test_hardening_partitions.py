"""Cache partitions cannot be entered under someone else's name, nor multiplied at will.

* ``user`` isolation: a Basic user name is only a claim. bob sending ``alice:<bob's
  token>`` (the upstream authenticates him as bob) must land in a partition of his own,
  and his fill must not rewrite alice's repo.
* ``tenant`` isolation: every distinct set of credential headers is a tenant, so junk
  headers could make a partition (a full repo copy) per request. With
  ``goblet_max_partitions`` the least recently used partitions of a repo are evicted, and
  ``/metrics`` shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support.attack import clone_as_junk_tenants, git_through, wait_partitions_at_most
from tests.support.cachedir import repos_for
from tests.support.gitclient import with_userinfo
from tests.support.net import http_get
from tests.support.proxy import GobletProxy
from tests.support.repos import add_commit
from tests.support.upstream_client import UpstreamServer


@pytest.fixture
def user_proxy(start_proxy: Callable[[dict[str, str]], GobletProxy]) -> GobletProxy:
    return start_proxy({"goblet_upstream_timeout": "5", "goblet_isolation": "user"})


def test_a_claimed_basic_user_name_does_not_open_that_users_partition(
    user_proxy: GobletProxy, upstream: UpstreamServer, repos: Repos, tmp_path: Path
) -> None:
    name = repos.create(public=False, readers=("alice", "bob"))
    url = upstream.url(name)
    git = git_through(user_proxy, tmp_path / "home")
    git.clone(with_userinfo(url, "alice", "alice-pw"), tmp_path / "alice")
    [alices] = repos_for(user_proxy.cache_dir, url)
    filled_at = repos_for(user_proxy.cache_dir, url)[alices]["filled_at"]

    new = add_commit(repos.path(name), message="after alice's fill")  # bob's clone must fill
    git.clone(with_userinfo(url, "alice", "tok-bob"), tmp_path / "bob")  # bob, claiming alice
    assert git.run("rev-parse", "HEAD", cwd=tmp_path / "bob").stdout.strip() == new

    states = repos_for(user_proxy.cache_dir, url)
    assert len(states) == 2, "bob (as 'alice:tok-bob') shared user alice's partition"
    assert states[alices]["filled_at"] == filled_at, "bob's fill rewrote alice's repo"

    # alice herself is still served from her own partition.
    git.clone(with_userinfo(url, "alice", "alice-pw"), tmp_path / "alice-again")
    assert git.run("rev-parse", "HEAD", cwd=tmp_path / "alice-again").stdout.strip() == new
    assert len(repos_for(user_proxy.cache_dir, url)) == 2


def test_junk_headers_cannot_multiply_partitions_beyond_the_limit(
    tenant_proxy: GobletProxy, upstream: UpstreamServer, repos: Repos, tmp_path: Path
) -> None:
    name = repos.create(commits=4)
    url = upstream.url(name)
    git = git_through(tenant_proxy, tmp_path / "home")
    clone_as_junk_tenants(git, url, tmp_path, range(1, 6))
    wait_partitions_at_most(tenant_proxy, url, 2,
                            "partitions beyond goblet_max_partitions to be evicted")
    status, text = http_get(tenant_proxy.port, "/metrics")
    assert status == 200
    assert any(ln.startswith("goblet_partition") for ln in text.splitlines()), (
        "no goblet_partition* metric on /metrics")
    # The latest tenant is still served from its partition.
    git.clone(url, tmp_path / "again", config=("http.extraHeader=X-Junk: 5",))
