"""The tenant matrix: no tenant ever gets a byte upstream would refuse it.

For every isolation mode: four tenants (alice, bob, carol, anonymous) x three
repos (public, private, revoked-after-warm) x (online, offline), through a
real mitmdump in front of the real HTTPS upstream. Online, each cell must end
exactly as the same clone made straight to the upstream; offline (upstream
stopped), a cell may succeed only if that tenant's last online answer for the
repo was a grant and the repo is cached in the tenant's partition.
A refused clone must have received no pack data.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.e2e.conftest import USERS, Repos
from tests.support import rawhttp
from tests.support.cachedir import settle
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.proxy import GobletProxy
from tests.support.upstream_client import UpstreamServer

TENANTS = ("alice", "bob", "carol", "anonymous")
REPOS = ("public", "private", "revoked")
VERDICT_TTL = 2


def tenant_access(tenant: str, url: str) -> tuple[tuple[str, ...], str]:
    """(git -c config, URL) for each tenant's way of presenting credentials."""
    if tenant == "alice":
        return (), with_userinfo(url, "alice", "alice-pw")  # Basic user + password
    if tenant == "bob":
        return (), with_userinfo(url, "x-access-token", "tok-bob")  # token as password
    if tenant == "carol":
        return ("http.extraHeader=Authorization: Bearer tok-carol",), url  # Bearer header
    return (), url


def clone(git: GitClient, tenant: str, url: str, dest: Path) -> subprocess.CompletedProcess[str]:
    config, target = tenant_access(tenant, url)
    return git.clone(target, dest, config=config, check=False)


def got_pack(dest: Path) -> bool:
    pack_dir = dest / ".git" / "objects" / "pack"
    return pack_dir.is_dir() and any(pack_dir.glob("*.pack"))


def error_lines(res: subprocess.CompletedProcess[str]) -> str:
    """git's error and remote lines (but the age of cached refs, with a refs TTL)."""
    return " | ".join(ln for ln in res.stderr.splitlines() if ln.startswith(("fatal:", "remote:"))
                      and not ln.startswith("remote: goblet: refs from cache"))


class MatrixBase:
    """One isolation mode's matrix; subclasses set ``mode``."""

    mode: ClassVar[str]
    extra_sets: ClassVar[dict[str, str]] = {}  # more proxy options (variants)
    # what an allowed offline clone shows (with a refs TTL, a clone whose grant is still
    # fresh is answered within the TTL and never notices the upstream is gone)
    offline_notices: ClassVar[tuple[str, ...]] = ("remote: goblet: upstream unreachable since",)
    users: ClassVar[dict[str, dict[str, Any]]] = {
        **USERS, "carol": {"password": "carol-pw", "tokens": ["tok-carol"]},
    }

    @pytest.fixture(scope="class")
    @classmethod
    def world(cls, tmp_path_factory: pytest.TempPathFactory, confdir: Path) -> Iterator[
            dict[str, Any]]:
        root = tmp_path_factory.mktemp(f"matrix-{cls.mode}")
        upstream = UpstreamServer(root / "upstream", {"users": cls.users, "repos": {}})
        upstream.start()
        repos = Repos(upstream)
        repos.config["users"] = cls.users
        names = {
            "public": repos.create(public=True),
            "private": repos.create(public=False, readers=("alice",)),
            "revoked": repos.create(public=False, readers=("alice", "carol")),
        }
        proxy = GobletProxy(
            root / "proxy", hosts=[upstream.host], upstream_ca=upstream.cert_path,
            confdir=confdir,
            sets={"goblet_isolation": cls.mode, "goblet_offline": "on",
                  "goblet_verdict_ttl": f"{VERDICT_TTL}s", "goblet_upstream_timeout": "3",
                  **cls.extra_sets},
        )
        proxy.start()
        try:
            yield {"upstream": upstream, "repos": repos, "names": names, "proxy": proxy,
                   "root": root, "online": {}}
        finally:
            proxy.stop()
            upstream.stop()

    def test_matrix(self, world: dict[str, Any], tmp_path: Path) -> None:
        upstream: UpstreamServer = world["upstream"]
        proxy: GobletProxy = world["proxy"]
        names: dict[str, str] = world["names"]
        repos: Repos = world["repos"]
        git = GitClient(tmp_path / "home", ca_file=proxy.ca_cert, proxy=proxy.url)
        direct = GitClient(tmp_path / "home-direct", ca_file=upstream.cert_path)

        # Owners warm the cache, then carol loses her grant upstream.
        assert clone(git, "alice", upstream.url(names["public"]), tmp_path / "w1").returncode == 0
        assert clone(git, "alice", upstream.url(names["private"]), tmp_path / "w2").returncode == 0
        assert clone(git, "carol", upstream.url(names["revoked"]), tmp_path / "w3").returncode == 0
        repos.grant(names["revoked"], public=False, readers=("alice",))
        time.sleep(VERDICT_TTL + 0.5)  # the next request comes after the verdict TTL

        online: dict[tuple[str, str], bool] = {}
        for tenant in TENANTS:
            for repo in REPOS:
                url = upstream.url(names[repo])
                dest = tmp_path / f"on-{tenant}-{repo}"
                via = clone(git, tenant, url, dest)
                ref = clone(direct, tenant, url, tmp_path / f"ref-{tenant}-{repo}")
                cell = f"{self.mode}/online/{tenant}/{repo}"
                assert via.returncode == ref.returncode, (cell, via.stderr, ref.stderr)
                assert error_lines(via) == error_lines(ref), cell
                if via.returncode:
                    assert not got_pack(dest), f"{cell}: refused clone received pack data"
                else:
                    ours = git.run("rev-parse", "HEAD", cwd=dest).stdout
                    assert ours == direct.run("rev-parse", "HEAD",
                                              cwd=tmp_path / f"ref-{tenant}-{repo}").stdout
                online[(tenant, repo)] = via.returncode == 0
        assert online[("alice", "private")] and not online[("carol", "revoked")]
        assert not online[("bob", "private")] and not online[("anonymous", "private")]

        self.check_partitions(proxy, names)

        # A stranger who learned a commit id elsewhere asks for it directly.
        head = git.run("rev-parse", "HEAD", cwd=tmp_path / "w2").stdout.strip()
        strangers = ({}, {"Authorization": "Bearer tok-bob"},
                     {"Authorization": "Bearer tok-carol"})
        for auth in strangers:
            resp = rawhttp.request(
                proxy_port=proxy.port, ca_file=proxy.ca_cert, host="127.0.0.1",
                port=upstream.port, method="POST", path=f"/{names['private']}/git-upload-pack",
                headers={"Git-Protocol": "version=2",
                         "Content-Type": "application/x-git-upload-pack-request", **auth},
                body=rawhttp.v2_fetch_body(head),
            )
            assert resp.status in (401, 404) and b"PACK" not in resp.body, (auth, resp.status)

        # Offline: the upstream is gone.
        upstream.stop()
        for tenant in TENANTS:
            for repo in REPOS:
                dest = tmp_path / f"off-{tenant}-{repo}"
                res = clone(git, tenant, upstream.url(names[repo]), dest)
                cell = f"{self.mode}/offline/{tenant}/{repo}"
                allowed = online[(tenant, repo)] and self.cached_offline(tenant, repo)
                if allowed:
                    assert res.returncode == 0, (cell, res.stderr)
                    assert any(n in res.stderr for n in self.offline_notices), cell
                else:
                    assert res.returncode != 0, f"{cell}: served offline without a grant"
                    assert not got_pack(dest), f"{cell}: refused clone received pack data"

    def cached_offline(self, tenant: str, repo: str) -> bool:
        """Whether the cache holds ``repo`` for ``tenant`` (given an online grant)."""
        return True

    def check_partitions(self, proxy: GobletProxy, names: dict[str, str]) -> None:
        """Mode-specific assertions about how repos are laid out on disk."""


def repo_dirs(proxy: GobletProxy) -> int:
    settle(proxy.cache_dir)
    return sum(1 for p in (proxy.cache_dir / "repos").iterdir() if p.name.endswith(".git"))


class TestShared(MatrixBase):
    mode = "shared"

    def check_partitions(self, proxy: GobletProxy, names: dict[str, str]) -> None:
        assert repo_dirs(proxy) == 3  # one object store per upstream repo


# git sends URL credentials only after a 401, so alice's and bob's clones of
# the public repo are anonymous requests; carol's Bearer header always goes.


class TestTenant(MatrixBase):
    mode = "tenant"

    def check_partitions(self, proxy: GobletProxy, names: dict[str, str]) -> None:
        # public: anonymous, carol; private: alice; revoked: carol (warm-up), alice.
        assert repo_dirs(proxy) == 2 + 1 + 2


class TestUser(MatrixBase):
    mode = "user"

    def check_partitions(self, proxy: GobletProxy, names: dict[str, str]) -> None:
        # Without verified proxy logins every tenant is its own user. public: anonymous,
        # carol; private: alice; revoked: carol, alice.
        assert repo_dirs(proxy) == 2 + 1 + 2
        # A Basic user name is only a claim (the upstream may read just the token):
        # another credential that says "alice" gets a partition of its own.
        url = with_userinfo(self.upstream_url(proxy, names["private"]), "alice", "tok-alice")
        git = GitClient(proxy.workdir / "home-user", ca_file=proxy.ca_cert, proxy=proxy.url)
        git.clone(url, proxy.workdir / "alice-token")
        assert repo_dirs(proxy) == 6

    @staticmethod
    def upstream_url(proxy: GobletProxy, name: str) -> str:
        return f"https://{proxy.hosts[0]}/{name}"


class TestPublic(MatrixBase):
    mode = "public"

    def cached_offline(self, tenant: str, repo: str) -> bool:
        return repo == "public"  # private repos are never cached in this mode

    def check_partitions(self, proxy: GobletProxy, names: dict[str, str]) -> None:
        assert repo_dirs(proxy) == 1
        assert "outcome=cache" not in "\n".join(
            ln for ln in proxy.log_text().splitlines() if names["private"] in ln
        )


# The same matrices with a refs TTL: ref requests of a credential with a fresh grant are
# answered from the cache, and nothing else changes for anyone.
TTL_SETS = {"goblet_refs_ttl": "60s"}
TTL_NOTICES = (*MatrixBase.offline_notices, "remote: goblet: refs from cache")


def answered_refs_from_cache(proxy: GobletProxy) -> bool:
    """Whether some ref request was answered within the TTL (the variant is not vacuous)."""
    return "refs from cache" in proxy.log_text()


class RefsTTL(MatrixBase):
    """A matrix (the class after this one in a subclass's bases) with a refs TTL."""

    extra_sets = TTL_SETS
    offline_notices = TTL_NOTICES

    def check_partitions(self, proxy: GobletProxy, names: dict[str, str]) -> None:
        super().check_partitions(proxy, names)
        assert answered_refs_from_cache(proxy)


class TestSharedRefsTTL(RefsTTL, TestShared):
    pass


class TestTenantRefsTTL(RefsTTL, TestTenant):
    pass
