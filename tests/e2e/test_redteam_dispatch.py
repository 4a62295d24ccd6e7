"""Attackers against goblet's hook dispatch: with it on (the default) and off, a client
with another credential, a revoked one or none gets the upstream's verdict and no pack of
a warm private repo, in raw requests answered from the cache or not; and one that makes
another addon fail before goblet's hook runs (mitmproxy then skips the rest of that
script tree's turn, goblet's hook included) gets no more than the upstream gives it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support import rawhttp
from tests.support.attack import (
    ALICE,
    BOB,
    UPLOAD_HEADERS,
    basic,
    fetch,
    git_through,
    no_pack,
    proxy_for,
    send,
    warm_then_revoke,
)
from tests.support.proxy import GobletProxy
from tests.support.upstream_client import UpstreamServer

NEIGHBOUR = Path(__file__).resolve().parents[1] / "support" / "neighbour_addon.py"
RAISE = {"X-Neighbour-Raise": "1"}  # the neighbour's request hook raises on this header


class NeighbourFirst(GobletProxy):
    """mitmdump with the neighbour script loaded before goblet's: its error in the
    ``request`` hook ends the script tree's turn before goblet's hook."""

    def command(self) -> list[str]:
        cmd = super().command()
        return [cmd[0], "-s", str(NEIGHBOUR), *cmd[1:]]


@pytest.mark.parametrize("fast", ["on", "off"])
def test_strangers_revoked_users_and_failing_neighbours_get_the_upstreams_verdict(
        fast: str, tmp_path: Path, upstream: UpstreamServer, repos: Repos, confdir: Path,
) -> None:
    sets = {"goblet_fast_dispatch": fast, "goblet_refs_ttl": "60s", "goblet_verdict_ttl": "1s",
            "neighbour_out": str(tmp_path / "neighbour.json")}
    with proxy_for(tmp_path / "proxy", upstream, confdir, sets, cls=NeighbourFirst) as px:
        git = git_through(px, tmp_path / "home")
        name, head = warm_then_revoke(git, repos, upstream, tmp_path / "warm", stale_after=1)
        refs = f"/{name}/info/refs?service=git-upload-pack"
        for who, auth in {"anonymous": {}, "bob": BOB, "revoked alice": ALICE,
                          "alice, wrong password": basic("alice", "nope")}.items():
            for extra in ({}, RAISE):
                direct = fetch(upstream, None, name, head, auth)
                got = fetch(upstream, px, name, head, {**auth, **extra})
                assert (got.status, no_pack(got)) == (direct.status, True), (who, extra)
                assert direct.status in (401, 403, 404)
                for method, path, body in (
                        ("GET", refs, None),
                        ("POST", f"/{name}/git-upload-pack", rawhttp.v2_ls_refs_body())):
                    headers = {**UPLOAD_HEADERS, **auth, **extra}
                    direct = send(upstream, None, method, path, headers, body)
                    got = send(upstream, px, method, path, headers, body)
                    assert got.status == direct.status, (who, method, extra)
                    assert head.encode() not in got.body, (who, method, extra)
        assert px.wait_for_log("Addon error: the neighbour refuses this one")
