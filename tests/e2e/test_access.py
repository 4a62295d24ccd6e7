"""Upstream decides every access: the proxy refuses exactly what upstream refuses."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos, count
from tests.e2e.test_clone import served_from_cache
from tests.support import rawhttp
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.proxy import GobletProxy
from tests.support.upstream_client import UpstreamServer


def outcome(res: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    """Exit status and the decisive error line of a git run, without the host:port."""
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith(("fatal:", "remote:"))]
    text = " | ".join(lines)
    return res.returncode, text


def basic(user: str, password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


CASES = {
    "granted-basic": lambda url: ((), with_userinfo(url, "alice", "alice-pw")),
    "token-as-password": lambda url: ((), with_userinfo(url, "x-access-token", "tok-alice")),
    "bearer-extraheader": lambda url: (("http.extraHeader=Authorization: Bearer tok-alice",), url),
    "stranger": lambda url: ((), with_userinfo(url, "bob", "bob-pw")),
    "stranger-bearer": lambda url: (("http.extraHeader=Authorization: Bearer tok-bob",), url),
    "anonymous": lambda url: ((), url),
    "wrong-password": lambda url: ((), with_userinfo(url, "alice", "not-her-password")),
    "unknown-token": lambda url: (("http.extraHeader=Authorization: Bearer tok-nobody",), url),
}
ALLOWED = {"granted-basic", "token-as-password", "bearer-extraheader"}


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "after-owner-warmed"])
@pytest.mark.parametrize("who", sorted(CASES))
def test_private_repo_access_matches_upstream(
    who: str, warm: bool, git: GitClient, direct: GitClient, repos: Repos,
    upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path,
) -> None:
    name = repos.create(public=False, readers=("alice",))
    url = upstream.url(name)
    if warm:
        git.clone(with_userinfo(url, "alice", "alice-pw"), tmp_path / "owner")
    served_before = served_from_cache(proxy, url)
    config, target = CASES[who](url)

    via_proxy = git.clone(target, tmp_path / "via-proxy", config=config, check=False)
    straight = direct.clone(target, tmp_path / "direct", config=config, check=False)

    assert outcome(via_proxy) == outcome(straight)
    if who in ALLOWED:
        assert via_proxy.returncode == 0
        assert served_from_cache(proxy, url) == served_before + 1
        head = git.run("rev-parse", "HEAD", cwd=tmp_path / "via-proxy").stdout
        assert head == direct.run("rev-parse", "HEAD", cwd=tmp_path / "direct").stdout
    else:
        assert via_proxy.returncode != 0
        assert served_from_cache(proxy, url) == served_before, "a refused client got cache data"
        assert not (tmp_path / "via-proxy" / ".git" / "objects" / "pack").exists() or not any(
            (tmp_path / "via-proxy" / ".git" / "objects" / "pack").glob("*.pack")
        )


def test_a_stranger_posting_a_fetch_for_a_known_commit_gets_upstreams_refusal(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = repos.create(public=False, readers=("alice",))
    url = upstream.url(name)
    git.clone(with_userinfo(url, "alice", "alice-pw"), tmp_path / "owner")
    head = git.run("rev-parse", "HEAD", cwd=tmp_path / "owner").stdout.strip()
    fetches_before = count(upstream.stats(), "fetch", name)

    for auth in ({}, {"Authorization": basic("bob", "bob-pw").split(": ", 1)[1]}):
        resp = rawhttp.request(
            proxy_port=proxy.port, ca_file=proxy.ca_cert, host="127.0.0.1", port=upstream.port,
            method="POST", path=f"/{name}/git-upload-pack",
            headers={"Git-Protocol": "version=2",
                     "Content-Type": "application/x-git-upload-pack-request", **auth},
            body=rawhttp.v2_fetch_body(head),
        )
        assert resp.status in (401, 404), resp
        assert b"PACK" not in resp.body
    # Both were refused by upstream itself, not by a cache read.
    assert count(upstream.stats(), "fetch", name) == fetches_before + 2


def test_revoked_access_is_refused_even_with_a_warm_cache(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = repos.create(public=False, readers=("alice", "carol"))
    url = upstream.url(name)
    git.clone(with_userinfo(url, "carol", "carol-pw"), tmp_path / "before")
    repos.grant(name, public=False, readers=("alice",))
    res = git.clone(with_userinfo(url, "carol", "carol-pw"), tmp_path / "after", check=False)
    assert res.returncode != 0
    assert "not found" in res.stderr
