"""Red team: evicting another tenant's cache partition at will.

In ``tenant`` isolation every distinct set of identity headers is a tenant with its own
copy of a repo, and ``goblet_max_partitions`` bounds the copies of one repo by evicting
the least recently used ones after each fill. Anyone who can read the repo can mint
tenants for free (a junk header per clone) and so choose, at any moment, to evict every
other tenant's copy: here two anonymous clones with junk headers evict the copy alice
filled a moment before, and her next clone fills again from the upstream. Repeated, the
cache never serves alice at all, and each round costs the upstream a full clone.

Required (safe behaviour): a copy that is in use is not evicted because strangers
minted new tenants; the new tenants are the ones that go without a copy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support.attack import clone_as_junk_tenants, git_through, wait_partitions_at_most
from tests.support.cachedir import repos_for
from tests.support.gitclient import with_userinfo
from tests.support.proxy import GobletProxy
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e


def test_strangers_minting_tenants_do_not_evict_a_tenants_copy_in_use(
    tenant_proxy: GobletProxy, upstream: UpstreamServer, repos: Repos, tmp_path: Path
) -> None:
    name = repos.create(commits=4)
    url = upstream.url(name)
    git = git_through(tenant_proxy, tmp_path / "home")
    git.clone(with_userinfo(url, "alice", "alice-pw"), tmp_path / "alice")
    [alices] = repos_for(tenant_proxy.cache_dir, url)

    clone_as_junk_tenants(git, url, tmp_path, range(2))
    wait_partitions_at_most(tenant_proxy, url, 2, "the partition bound to be enforced")
    assert alices.exists(), (
        "two clones with junk headers evicted the copy alice filled and used a moment ago")
