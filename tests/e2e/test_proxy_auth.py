"""Proxy logins (mitmproxy's proxyauth) are tenant identities for sidecar and CI setups."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.conftest import Repos, count
from tests.support.gitclient import GitClient
from tests.support.proxy import GobletProxy
from tests.support.upstream_client import UpstreamServer

SECRET = "proxy-secret-4d1c9e"


# The module's proxy (tests/e2e/conftest.py), with goblet's own default upstream timeout.
PROXY_SETS = {"proxyauth": "any", "goblet_isolation": "tenant", "goblet_upstream_timeout": "60s"}


def client(tmp_path: Path, proxy: GobletProxy, user: str | None) -> GitClient:
    login = f"{user}:{SECRET}-{user}@" if user else ""
    return GitClient(tmp_path / f"home-{user}", ca_file=proxy.ca_cert,
                     proxy=f"http://{login}127.0.0.1:{proxy.port}")


def test_proxy_logins_separate_tenants_and_never_leak(
    repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = repos.create()
    url = upstream.url(name)
    a, b = client(tmp_path, proxy, "team-a"), client(tmp_path, proxy, "team-b")
    a.clone(url, tmp_path / "a1")
    b.clone(url, tmp_path / "b1")
    a.clone(url, tmp_path / "a2")

    # Both anonymous upstream-wise, yet two tenants: two partitions, two fills.
    tenants = set(re.findall(rf"git fetch {re.escape(url)} tenant=(\S+) outcome=(?:cache|upstream)",
                             proxy.log_text()))
    assert len(tenants) == 2 and "anonymous" not in tenants
    assert count(upstream.stats(), "fetch", name) == 2
    repo_dirs = [p for p in (proxy.cache_dir / "repos").iterdir() if p.name.endswith(".git")]
    assert len(repo_dirs) == 2

    # No login, no proxy: mitmproxy asks for one.
    res = client(tmp_path, proxy, None).clone(url, tmp_path / "nologin", check=False)
    assert res.returncode != 0 and "407" in res.stderr

    log = proxy.log_text()
    assert SECRET not in log
    for path in proxy.cache_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
