"""LFS through goblet, as an attacker sees it: hand-made requests through the forward proxy.

The batch request goes upstream with the caller's own credential, so strangers and revoked
credentials are refused exactly as the upstream refuses them. No goblet link gives an object
to anyone but the credential it was issued to, for the repo and oid it was issued for,
before it expires; forged, stolen, expired and revoked links get nothing. An object whose
bytes do not match its oid is never stored and never reaches a client whole. The upstream's
hrefs and their headers, and the client's credentials, never reach a log or the cache.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from goblet.lfs.store import LfsScope

from tests.e2e.conftest import Repos
from tests.e2e.test_lfs import lfs as lfs  # noqa: PLC0414 (the module's fixtures)
from tests.e2e.test_lfs import lfs_repo
from tests.e2e.test_lfs import prefix_port as prefix_port  # noqa: PLC0414
from tests.e2e.test_lfs import proxy as proxy  # noqa: PLC0414
from tests.support import rawhttp
from tests.support.lfs_server import HREF_SENTINEL, MEDIA_TYPE, LfsServer
from tests.support.proxy import GobletProxy
from tests.support.upstream_client import UpstreamServer

ALICE = "Bearer tok-alice"
BOB = "Bearer tok-bob"


def batch(px: GobletProxy | None, lfs: LfsServer, name: str, files: dict[str, bytes],
          authorization: str | None, *, ca_file: Path | None = None,
          operation: str = "download") -> rawhttp.RawResponse:
    """git-lfs's batch request for ``files``, through ``px`` (or straight to the server)."""
    objects = [{"oid": hashlib.sha256(c).hexdigest(), "size": len(c)} for c in files.values()]
    body = json.dumps({"operation": operation, "transfers": ["basic"],
                       "objects": objects}).encode()
    headers = {"Accept": MEDIA_TYPE, "Content-Type": MEDIA_TYPE}
    if authorization:
        headers["Authorization"] = authorization
    return rawhttp.request(proxy_port=px.port if px else None,
                           ca_file=ca_file or (px.ca_cert if px else Path()),
                           host="127.0.0.1", port=lfs.api.server_port, method="POST",
                           path=f"/{name}/info/lfs/objects/batch", headers=headers, body=body)


def links(resp: rawhttp.RawResponse) -> dict[str, str]:
    """oid → download href of a batch answer."""
    assert resp.status == 200, resp.body
    return {o["oid"]: o["actions"]["download"]["href"]
            for o in json.loads(resp.body)["objects"] if "actions" in o}


def get(px: GobletProxy, href: str, authorization: str | None) -> rawhttp.RawResponse:
    """GET ``href`` through the forward proxy."""
    url = urlsplit(href)
    headers = {"Authorization": authorization} if authorization else {}
    return rawhttp.request(proxy_port=px.port, ca_file=px.ca_cert, host=url.hostname or "",
                           port=url.port or 443, method="GET", path=url.path, headers=headers)


def stored(px: GobletProxy, oid: str) -> Path:
    """Where goblet keeps the object ``oid`` (``lfs/<api>/<partition>/…``; a path that
    does not exist while it keeps none)."""
    found = sorted((px.cache_dir / "lfs").glob(f"*/*/{oid[:2]}/{oid[2:4]}/{oid}"))
    return found[0] if found else px.cache_dir / "lfs" / "none" / oid


def wait_stored(px: GobletProxy, oid: str, timeout: float = 5.0) -> bool:
    """Whether ``oid`` is in the store within ``timeout`` seconds (goblet keeps an object
    once mitmproxy has passed its last byte on, so the client may be a moment earlier)."""
    deadline = time.monotonic() + timeout
    while not stored(px, oid).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_links_point_at_goblet_and_serve_the_object(
        repos: Repos, lfs: LfsServer, proxy: GobletProxy) -> None:
    name, files = lfs_repo(repos, lfs)
    got = links(batch(proxy, lfs, name, files, ALICE))
    assert len(got) == 3
    for oid, href in got.items():
        assert href.startswith(f"https://{lfs.api_host}/{name}/info/lfs/goblet/")
        assert href.endswith(f"/{oid}") and HREF_SENTINEL not in href
    answer = json.loads(batch(proxy, lfs, name, files, ALICE).body)
    assert all("header" not in o["actions"]["download"] for o in answer["objects"]
               if "actions" in o)
    by_oid = {lfs.add(c): c for c in files.values()}
    lfs.reset_counters()
    for oid, href in got.items():
        resp = get(proxy, href, ALICE)
        assert resp.status == 200 and resp.body == by_oid[oid]
        assert wait_stored(proxy, oid) and stored(proxy, oid).read_bytes() == by_oid[oid]
    assert lfs.media_requests == 3


def test_a_chunked_batch_answer_is_linked_too(
        repos: Repos, lfs: LfsServer, proxy: GobletProxy) -> None:
    name, files = lfs_repo(repos, lfs)
    lfs.chunked_batch = True
    try:
        resp = batch(proxy, lfs, name, files, ALICE)
    finally:
        lfs.chunked_batch = False
    got = links(resp)
    assert len(got) == 3 and all("/info/lfs/goblet/" in h for h in got.values())
    assert HREF_SENTINEL.encode() not in resp.body
    oid = lfs.add(files["small.bin"])
    assert get(proxy, got[oid], ALICE).body == files["small.bin"]


@pytest.mark.parametrize("corrupt", [False, True])
def test_chunked_objects_stream_and_verify(
        repos: Repos, lfs: LfsServer, proxy: GobletProxy, corrupt: bool) -> None:
    name, files = lfs_repo(repos, lfs)
    content = files["big.bin"]
    oid = lfs.add(content)
    lfs.chunked_media = True
    if corrupt:
        lfs.corrupt.add(oid)
    try:
        href = links(batch(proxy, lfs, name, files, ALICE))[oid]
        if corrupt:
            with pytest.raises((http.client.IncompleteRead, ConnectionError,
                                http.client.RemoteDisconnected)):
                get(proxy, href, ALICE)
            assert not stored(proxy, oid).exists()
        else:
            assert get(proxy, href, ALICE).body == content and wait_stored(proxy, oid)
    finally:
        lfs.chunked_media = False
        lfs.corrupt.discard(oid)


def test_hrefs_on_the_batch_host_get_the_client_s_own_credential_only(
        repos: Repos, lfs: LfsServer, proxy: GobletProxy) -> None:
    """A forge serving objects from its own host wants the client's credential there (no
    header in the action), as git-lfs would send it; goblet sends it to that origin only."""
    name, files = lfs_repo(repos, lfs)
    content = files["big.bin"]
    oid = lfs.add(content)
    lfs.same_host_objects = True
    try:
        href = links(batch(proxy, lfs, name, files, ALICE))[oid]
    finally:
        lfs.same_host_objects = False
    lfs.reset_counters()
    resp = get(proxy, href, ALICE)
    assert resp.status == 200 and resp.body == content and wait_stored(proxy, oid)
    assert lfs.media_requests == 1


@pytest.mark.parametrize("who", [BOB, None, "Bearer not-a-token"])
def test_strangers_are_refused_as_the_upstream_refuses_them(
        repos: Repos, lfs: LfsServer, proxy: GobletProxy, upstream: UpstreamServer,
        who: str | None) -> None:
    name, files = lfs_repo(repos, lfs)
    direct = batch(None, lfs, name, files, who, ca_file=upstream.cert_path)
    through = batch(proxy, lfs, name, files, who)
    assert direct.status in (401, 404)
    assert (through.status, through.body) == (direct.status, direct.body)
    assert b"goblet" not in through.body


def test_a_link_works_only_for_its_credential(
        repos: Repos, lfs: LfsServer, proxy: GobletProxy) -> None:
    name, files = lfs_repo(repos, lfs, readers=("alice", "bob"))
    href = next(iter(links(batch(proxy, lfs, name, files, ALICE)).values()))
    lfs.reset_counters()
    for thief, status in ((BOB, 403), (None, 401), ("Bearer tok-alice2", 403)):
        resp = get(proxy, href, thief)
        assert resp.status == status and b"goblet:" in resp.body
        assert len(resp.body) < 200
    assert lfs.media_requests == 0
    assert get(proxy, href, ALICE).status == 200


def test_forged_and_misplaced_links_get_nothing(
        repos: Repos, lfs: LfsServer, proxy: GobletProxy) -> None:
    name, files = lfs_repo(repos, lfs)
    other, other_files = lfs_repo(repos, lfs)
    mine = links(batch(proxy, lfs, name, files, ALICE))
    theirs = links(batch(proxy, lfs, other, other_files, ALICE))
    (oid, href), (other_oid, _) = next(iter(mine.items())), next(iter(theirs.items()))
    token = href.split("/goblet/", 1)[1].split("/")[0]
    base = f"https://{lfs.api_host}"
    cases = {
        "forged token": f"{base}/{name}/info/lfs/goblet/{secrets.token_urlsafe(32)}/{oid}",
        "another oid": f"{base}/{name}/info/lfs/goblet/{token}/{other_oid}",
        "another repo": f"{base}/{other}/info/lfs/goblet/{token}/{oid}",
    }
    lfs.reset_counters()
    for case, url in cases.items():
        resp = get(proxy, url, ALICE)
        assert resp.status == 404, case
    malformed = get(proxy, f"{base}/{name}/info/lfs/goblet/{token[:-1]}/{oid}", ALICE)
    assert malformed.status == 400
    assert lfs.media_requests == 0


def test_a_revoked_credential_gets_nothing_by_any_url(
        repos: Repos, lfs: LfsServer, proxy: GobletProxy) -> None:
    name, files = lfs_repo(repos, lfs, readers=("alice", "bob"))
    hrefs = links(batch(proxy, lfs, name, files, BOB))
    repos.grant(name, public=False, readers=("alice",))  # bob loses access upstream
    lfs.reset_counters()
    assert batch(proxy, lfs, name, files, BOB).status == 404  # as the upstream says
    for href in hrefs.values():
        assert get(proxy, href, BOB).status == 404  # the refusal revoked bob's links
    assert lfs.media_requests == 0


def test_an_expired_link_gets_nothing(
        tmp_path: Path, repos: Repos, lfs: LfsServer, upstream: UpstreamServer,
        confdir: Path) -> None:
    with GobletProxy(tmp_path / "px", hosts=[upstream.host, lfs.api_host],
                     upstream_ca=upstream.cert_path, confdir=confdir,
                     sets={"goblet_relay_internal": "on", "goblet_lfs_link_ttl": "1s"}) as px:
        name, files = lfs_repo(repos, lfs)
        href = next(iter(links(batch(px, lfs, name, files, ALICE)).values()))
        time.sleep(1.5)
        resp = get(px, href, ALICE)
        assert resp.status == 404 and b"expired" in resp.body


def test_a_corrupt_object_is_never_stored_or_served_whole(
        repos: Repos, lfs: LfsServer, proxy: GobletProxy) -> None:
    name, files = lfs_repo(repos, lfs)
    content = files["big.bin"]
    oid = lfs.add(content)
    lfs.corrupt.add(oid)
    try:
        href = links(batch(proxy, lfs, name, files, ALICE))[oid]
        with pytest.raises((http.client.IncompleteRead, ConnectionError,
                            http.client.RemoteDisconnected)):
            get(proxy, href, ALICE)
        assert not stored(proxy, oid).exists()
        assert not list((proxy.cache_dir / "lfs" / "tmp").iterdir())
        assert proxy.wait_for_log("does not match its oid")
    finally:
        lfs.corrupt.discard(oid)
    href = links(batch(proxy, lfs, name, files, ALICE))[oid]
    resp = get(proxy, href, ALICE)
    assert resp.status == 200 and resp.body == content and wait_stored(proxy, oid)


def test_uploads_and_other_lfs_requests_pass_through_untouched(
        repos: Repos, lfs: LfsServer, proxy: GobletProxy, upstream: UpstreamServer) -> None:
    name, files = lfs_repo(repos, lfs)
    up = batch(proxy, lfs, name, files, ALICE, operation="upload")
    direct = batch(None, lfs, name, files, ALICE, ca_file=upstream.cert_path,
                   operation="upload")
    assert (up.status, up.body) == (direct.status, direct.body)
    lfs.reset_counters()
    locks = rawhttp.request(proxy_port=proxy.port, ca_file=proxy.ca_cert, host="127.0.0.1",
                            port=lfs.api.server_port, method="GET",
                            path=f"/{name}/info/lfs/locks", headers={"Authorization": ALICE})
    assert locks.status == 404 and ("GET", f"/{name}/info/lfs/locks") in lfs.requests


def test_no_href_or_credential_reaches_a_log_or_the_cache(
        repos: Repos, lfs: LfsServer, proxy: GobletProxy) -> None:
    name, files = lfs_repo(repos, lfs)
    for href in links(batch(proxy, lfs, name, files, ALICE)).values():
        assert get(proxy, href, ALICE).status == 200
    log = proxy.log_text()
    assert "lfs_object" in log
    for secret in (HREF_SENTINEL, "tok-alice", "RemoteAuth"):
        assert secret not in log
    for top, _, names in os.walk(proxy.cache_dir):
        for file in names:
            path = Path(top) / file
            if path.is_file() and not path.is_symlink():
                assert HREF_SENTINEL.encode() not in path.read_bytes(), path
                assert b"tok-alice" not in path.read_bytes(), path


def test_hrefs_to_internal_addresses_are_refused_and_stored_objects_still_served(
        tmp_path: Path, repos: Repos, lfs: LfsServer, upstream: UpstreamServer,
        confdir: Path) -> None:
    """Without goblet_relay_internal, an upstream's href to a loopback address is refused
    like any relay there (the media host is on 127.0.0.1); objects in the store are served
    from goblet's own backend all the same."""
    with GobletProxy(tmp_path / "px", hosts=[upstream.host, lfs.api_host],
                     upstream_ca=upstream.cert_path, confdir=confdir) as px:
        name, files = lfs_repo(repos, lfs)
        small, big = files["small.bin"], files["big.bin"]
        small_oid, big_oid = lfs.add(small), lfs.add(big)
        kept = px.cache_dir / "lfs" / LfsScope(lfs.api_host).relative / small_oid[:2] / \
            small_oid[2:4] / small_oid
        kept.parent.mkdir(parents=True)
        kept.write_bytes(small)  # as an earlier download left it
        got = links(batch(px, lfs, name, files, ALICE))
        lfs.reset_counters()
        assert get(px, got[small_oid], ALICE).body == small
        refused = get(px, got[big_oid], ALICE)
        assert refused.status == 502 and lfs.media_requests == 0
        assert not stored(px, big_oid).exists()
        assert HREF_SENTINEL not in px.log_text()


def test_mitmproxy_s_own_flow_log_never_shows_an_href_either(
        tmp_path: Path, repos: Repos, lfs: LfsServer, upstream: UpstreamServer,
        confdir: Path) -> None:
    """With mitmdump printing every flow, headers included (flow_detail=3), the upstream's
    hrefs and their headers still appear nowhere: goblet puts the link back first."""
    with GobletProxy(tmp_path / "px", hosts=[upstream.host, lfs.api_host],
                     upstream_ca=upstream.cert_path, confdir=confdir,
                     sets={"goblet_relay_internal": "on", "flow_detail": "3"}) as px:
        name, files = lfs_repo(repos, lfs)
        bad = lfs.add(files["small.bin"])
        lfs.corrupt.add(bad)
        try:
            for oid, href in links(batch(px, lfs, name, files, ALICE)).items():
                try:
                    get(px, href, ALICE)
                except (http.client.HTTPException, ConnectionError):
                    assert oid == bad
        finally:
            lfs.corrupt.discard(bad)
        assert px.wait_for_log("lfs_object")
        time.sleep(0.5)
        log = px.log_text()
        assert "info/lfs/goblet/" in log  # the flows were printed
        for secret in (HREF_SENTINEL, "RemoteAuth"):
            assert secret not in log
