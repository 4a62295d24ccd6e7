"""The LFS flow through the addon's mitmproxy hooks (mitmproxy's test helpers, no sockets):
a batch answer is linked, a link is refused, served from the store or sent to the href."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from goblet.addon import Goblet
from goblet.addon import lfs as addon_lfs
from goblet.auth.credentials import credential_from_headers
from goblet.lfs.batch import link_path
from goblet.lfs.store import LfsScope
from goblet.policy import lfs as policy_lfs
from goblet.policy.bodies import Discard
from goblet.serve.plans import TOKEN_HEADER, ReplyPlan
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

HOST = "git.example.com"
DATA = b"an lfs object"
OID = hashlib.sha256(DATA).hexdigest()
ALICE = "Bearer alice"
BATCH = json.dumps({"transfer": "basic", "objects": [{
    "oid": OID, "size": len(DATA), "authenticated": True,
    "actions": {"download": {"href": "https://media.example/o/x?sig=SECRET",
                             "header": {"Authorization": "RemoteAuth SECRET"},
                             "expires_in": 60}}}]}).encode()


def run(body: Callable[[Goblet, Any], Awaitable[None]], tmp_path: Path) -> None:
    async def main() -> None:
        addon = Goblet()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, goblet_cache_dir=str(tmp_path / "cache"), goblet_hosts=[HOST])
            await addon.running()
            try:
                await body(addon, tctx)
            finally:
                await addon.done()

    asyncio.run(main())


def flow(method: str, path: str, authorization: str | None = ALICE) -> http.HTTPFlow:
    headers = http.Headers(host=HOST)
    if authorization:
        headers["authorization"] = authorization
    req = tutils.treq(method=method.encode(), scheme=b"https", host=HOST, port=443,
                      authority=b"", path=path.encode(), content=b"", headers=headers)
    f = tflow.tflow(req=req)
    f.server_conn.address = (HOST, 443)
    f.client_conn.sni = HOST
    return f


async def linked(addon: Goblet) -> str:
    """Send a batch request and its upstream answer through the hooks; the link."""
    f = flow("POST", "/o/r.git/info/lfs/objects/batch")
    addon.requestheaders(f)
    assert f.request.stream is True and f.request.headers["accept-encoding"] == "identity"
    await addon.request(f)
    assert f.response is None and f.request.host == HOST  # it goes upstream as it is
    f.response = tutils.tresp(status_code=200, content=BATCH, headers=http.Headers(
        content_type="application/vnd.git-lfs+json", content_length=str(len(BATCH))))
    addon.responseheaders(f)
    assert not f.response.stream  # read, to be rewritten
    await addon.response(f)
    answer = json.loads(f.response.content or b"")
    assert b"SECRET" not in (f.response.content or b"")
    href: str = answer["objects"][0]["actions"]["download"]["href"]
    assert href.startswith(f"https://{HOST}/o/r.git/info/lfs/goblet/")
    return href.removeprefix(f"https://{HOST}")


async def answered_batch(addon: Goblet, content: bytes) -> http.HTTPFlow:
    """A batch request through the hooks up to the upstream's 200 answer (``content``,
    with its length) at ``responseheaders``."""
    f = flow("POST", "/o/r.git/info/lfs/objects/batch")
    addon.requestheaders(f)
    await addon.request(f)
    f.response = tutils.tresp(status_code=200, content=content, headers=http.Headers(
        content_type="application/vnd.git-lfs+json", content_length=str(len(content))))
    addon.responseheaders(f)
    return f


def test_a_missing_object_goes_to_the_href_with_upstream_s_header_only(tmp_path: Path) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        path = await linked(addon)
        f = flow("GET", path)
        addon.requestheaders(f)
        await addon.request(f)
        req = f.request
        assert (req.host, req.path) == ("media.example", "/o/x?sig=SECRET")
        assert req.headers["authorization"] == "RemoteAuth SECRET"  # not the client's
        f.response = tutils.tresp(status_code=200, content=b"")
        f.response.headers["content-length"] = str(len(DATA))
        addon.responseheaders(f)
        assert callable(f.response.stream)
        assert "SECRET" not in f.request.url and OID in f.request.url
        sent = [*f.response.stream(DATA), *f.response.stream(b"")]
        assert b"".join(sent) == DATA
        f.response.raw_content = None
        await addon.response(f)
        assert addon.rt is not None and addon.rt.lfs_store.has(LfsScope(HOST), OID, len(DATA))
        assert "SECRET" not in str(f.request.headers)

        again = flow("GET", path)  # now from the store, through the backend
        addon.requestheaders(again)
        await addon.request(again)
        assert again.request.host == "127.0.0.1" and TOKEN_HEADER in again.request.headers

    run(body, tmp_path)


def test_links_are_refused_to_others(tmp_path: Path) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        path = await linked(addon)
        token = path.split("/goblet/")[1].split("/")[0]
        cases = [(path, "Bearer bob", 403), (path, None, 401),
                 (link_path("/o/other.git", token, OID), ALICE, 404),
                 (link_path("/o/r.git", "A" * 43, OID), ALICE, 404),
                 (link_path("/o/r.git", token, "0" * 64), ALICE, 404),
                 (path + "x", ALICE, 400)]
        for p, who, status in cases:
            f = flow("GET", p, who)
            addon.requestheaders(f)
            await addon.request(f)
            assert f.response is not None and f.response.status_code == status, (p, who)
            assert f.request.host == HOST and b"goblet" in (f.response.content or b"")

    run(body, tmp_path)


def test_a_refused_batch_revokes_the_tenant_s_links(tmp_path: Path) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        path = await linked(addon)
        f = flow("POST", "/o/r.git/info/lfs/objects/batch")
        addon.requestheaders(f)
        await addon.request(f)
        f.response = tutils.tresp(status_code=404, content=b'{"message":"nope"}')
        addon.responseheaders(f)
        await addon.response(f)
        assert f.response.content == b'{"message":"nope"}'  # as upstream answered
        g = flow("GET", path)
        addon.requestheaders(g)
        await addon.request(g)
        assert g.response is not None and g.response.status_code == 404

    run(body, tmp_path)


def test_with_goblet_lfs_off_lfs_passes_through(tmp_path: Path) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        tctx.configure(addon, goblet_lfs="off")
        f = await answered_batch(addon, BATCH)
        assert f.response is not None and f.response.stream  # streamed as it is, never read
        await addon.response(f)
        assert f.response.content == BATCH

    run(body, tmp_path)


def test_public_isolation_links_only_anonymous_answers(tmp_path: Path) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        tctx.configure(addon, goblet_isolation="public")
        for who, linked_ in ((ALICE, False), (None, True)):
            f = flow("POST", "/o/r.git/info/lfs/objects/batch", who)
            addon.requestheaders(f)
            await addon.request(f)
            f.response = tutils.tresp(status_code=200, content=BATCH, headers=http.Headers(
                content_type="application/vnd.git-lfs+json", content_length=str(len(BATCH))))
            addon.responseheaders(f)
            await addon.response(f)
            assert (b"/info/lfs/goblet/" in (f.response.content or b"")) is linked_, who

    run(body, tmp_path)


def test_a_git_refusal_for_the_repo_revokes_earlier_links_only(tmp_path: Path) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        assert addon.rt is not None
        path = await linked(addon)
        tenant = addon.rt.keyer.tenant_id(credential_from_headers([("authorization", ALICE)]))
        url = f"https://{HOST}/o/r.git"
        addon.rt.decider.verdicts.record(tenant, url, granted=False, status=404)
        f = flow("GET", path)
        addon.requestheaders(f)
        await addon.request(f)
        assert f.response is not None and f.response.status_code == 404
        addon.rt.decider.verdicts.record(tenant, url, granted=True)  # granted again
        fresh = await linked(addon)
        g = flow("GET", fresh)
        addon.requestheaders(g)
        await addon.request(g)
        assert g.response is None  # a new link works again

    run(body, tmp_path)


def test_a_link_announcing_a_body_is_refused_without_reading_it(tmp_path: Path) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        assert addon.rt is not None
        path = await linked(addon)
        f = flow("GET", path)
        f.request.headers["content-length"] = "1000000"
        addon.requestheaders(f)
        assert f.response is None and isinstance(f.request.stream, Discard)
        req = f.request
        assert (req.host, req.port) == ("127.0.0.1", addon.rt.backend.port)  # never the href
        plan = addon.rt.plans.take(req.headers[TOKEN_HEADER])
        assert isinstance(plan, ReplyPlan) and plan.status == 400
        assert b"no body" in plan.body

    run(body, tmp_path)


def test_a_user_agent_that_is_not_utf8_goes_to_the_href_as_it_came(tmp_path: Path) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        path = await linked(addon)
        f = flow("GET", path)
        f.request.headers = http.Headers([
            (b"host", HOST.encode()), (b"authorization", ALICE.encode()),
            (b"user-agent", b"git-lfs/3.3 (caf\xe9)")])
        addon.requestheaders(f)
        await addon.request(f)
        assert f.response is None and f.request.host == "media.example"
        assert dict(f.request.headers.fields) == {
            b"Host": b"media.example", b"User-Agent": b"git-lfs/3.3 (caf\xe9)",
            b"Accept-Encoding": b"identity", b"Authorization": b"RemoteAuth SECRET"}

    run(body, tmp_path)


def test_a_failure_while_deciding_a_link_refuses_it_and_forwards_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        assert addon.rt is not None
        path = await linked(addon)

        def broken(*args: object) -> object:
            raise RuntimeError("boom")
        monkeypatch.setattr(policy_lfs, "href_request", broken)
        monkeypatch.setattr(addon_lfs, "href_request", broken)
        f = flow("GET", path)
        addon.requestheaders(f)
        await addon.request(f)
        assert f.response is not None and f.response.status_code == 502
        assert f.response.content == (b"goblet: LFS link could not be handled "
                                      b"(RuntimeError): refused\n")
        assert f.request.host == HOST and f.request.headers["authorization"] == ALICE
        assert not list((tmp_path / "cache" / "lfs" / "tmp").iterdir())

    run(body, tmp_path)


def test_an_encoded_batch_answer_passes_on_unread(tmp_path: Path) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        f = flow("POST", "/o/r.git/info/lfs/objects/batch")
        addon.requestheaders(f)
        await addon.request(f)
        raw = gzip.compress(BATCH)
        f.response = tutils.tresp(status_code=200, content=b"")
        f.response.headers = http.Headers(content_type="application/vnd.git-lfs+json",
                                          content_encoding="gzip",
                                          content_length=str(len(raw)))
        addon.responseheaders(f)
        assert f.response.stream  # streamed as it is, never read
        f.response.raw_content = raw
        await addon.response(f)
        assert f.response.raw_content == raw

    run(body, tmp_path)


def many_objects(count: int) -> bytes:
    return json.dumps({"transfer": "basic", "objects": [{
        "oid": f"{i:064x}", "size": 1, "authenticated": True,
        "actions": {"download": {"href": f"https://media.example/o/{i}?sig=SECRET"}}}
        for i in range(count)]}).encode()


@pytest.mark.parametrize(("count", "off_loop"), [(1, False), (400, True)])
def test_a_big_batch_answer_is_read_and_written_off_the_event_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int, off_loop: bool) -> None:
    threads: dict[str, str] = {}
    for name in ("read_answer", "linked_answer"):
        real = getattr(policy_lfs.batch, name)

        def spy(*args: Any, _real: Any = real, _name: str = name) -> Any:
            threads[_name] = threading.current_thread().name
            return _real(*args)
        monkeypatch.setattr(policy_lfs.batch, name, spy)
    content = many_objects(count)
    assert (len(content) > policy_lfs.INLINE_ANSWER_BYTES) is off_loop

    async def body(addon: Goblet, tctx: Any) -> None:
        f = await answered_batch(addon, content)
        await addon.response(f)
        assert f.response is not None
        answer = json.loads(f.response.content or b"")
        hrefs = {o["actions"]["download"]["href"] for o in answer["objects"]}
        assert len(hrefs) == count and all("/info/lfs/goblet/" in h for h in hrefs)
        assert b"SECRET" not in (f.response.content or b"")

    run(body, tmp_path)
    main = threading.main_thread().name
    assert set(threads) == {"read_answer", "linked_answer"}
    assert all((t != main) is off_loop for t in threads.values()), threads


def test_a_batch_answer_read_while_its_tenant_is_refused_is_not_linked(tmp_path: Path) -> None:
    content = many_objects(400)  # (read in a thread: time for a refusal to come meanwhile)

    class RefusedMeanwhile(ThreadPoolExecutor):
        def __init__(self, refuse: Callable[[], object]) -> None:
            super().__init__(max_workers=1)
            self.refuse = refuse

        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            self.refuse()  # (a 401 to another batch request of the tenant, say)
            return super().submit(fn, *args, **kwargs)

    async def body(addon: Goblet, tctx: Any) -> None:
        assert addon.rt is not None
        lfs = addon.rt.lfs
        f = await answered_batch(addon, content)
        state = addon._flows[f]
        assert state.repo is not None
        url = state.repo.url
        lfs.inspector = RefusedMeanwhile(lambda: lfs.links.revoke(state.tenant, url))
        await addon.response(f)
        assert f.response is not None and f.response.content == content  # unlinked
        assert len(lfs.links) == 0

    run(body, tmp_path)


async def chunked_batch_stream(addon: Goblet) -> Callable[[bytes], list[bytes]]:
    """A batch request through the hooks, answered 200 without Content-Length: the
    response's stream callable (the held answer)."""
    f = flow("POST", "/o/r.git/info/lfs/objects/batch")
    addon.requestheaders(f)
    await addon.request(f)
    f.response = tutils.tresp(status_code=200, content=b"", headers=http.Headers(
        content_type="application/vnd.git-lfs+json", transfer_encoding="chunked"))
    addon.responseheaders(f)
    held = f.response.stream
    assert callable(held)
    return held


def test_a_chunked_batch_answer_is_held_within_the_inline_cap(tmp_path: Path) -> None:
    async def body(addon: Goblet, tctx: Any) -> None:
        held = await chunked_batch_stream(addon)
        big = many_objects(2000)
        assert len(big) > policy_lfs.HELD_ANSWER_CAP
        out = b"".join(piece for i in range(0, len(big), 65536)
                       for piece in held(big[i:i + 65536])) + b"".join(held(b""))
        assert out == big  # past the cap: passed on as it is, unlinked
        held = await chunked_batch_stream(addon)
        small = many_objects(3)
        out = b"".join(held(small)) + b"".join(held(b""))
        assert b"/info/lfs/goblet/" in out and b"SECRET" not in out

    run(body, tmp_path)


def test_a_live_token_never_leaves_outside_its_own_link(tmp_path: Path) -> None:
    """A live token anywhere but in its own link's place — in a batch path, in the repo
    part of a link, in any request once LFS was turned off — is refused with 400 and its
    flow shows the token hidden: the request never goes upstream with it."""
    async def body(addon: Goblet, tctx: Any) -> None:
        path = await linked(addon)
        token = path.split("/goblet/")[1].split("/")[0]
        for method, p, who in [("POST", f"/o/{token}/info/lfs/objects/batch", ALICE),
                               ("GET", link_path(f"/o/{token}", "A" * 43, OID), ALICE),
                               ("GET", f"/o/r.git/info/refs?x={token}", ALICE),
                               ("GET", f"/o/r.git/info/refs?x={token}", "Bearer bob"),
                               ("GET", f"/o/r.git/info/lfs//goblet/{token}/{OID}", None)]:
            f = flow(method, p, who)
            addon.requestheaders(f)
            await addon.request(f)
            assert f.response is not None and f.response.status_code == 400, p
            assert token not in f.request.path and f.request.host == HOST, p
        tctx.configure(addon, goblet_lfs="off")
        for p in (path, path.replace("/goblet/", "/goblet/./")):
            f = flow("GET", p)
            addon.requestheaders(f)
            await addon.request(f)
            assert f.response is not None and f.response.status_code == 400, p
            assert token not in f.request.path, p
        f = flow("GET", "/o/r.git/info/refs?service=git-upload-pack")
        addon.requestheaders(f)
        await addon.request(f)
        assert f.response is None  # everything else passes as before

    run(body, tmp_path)
