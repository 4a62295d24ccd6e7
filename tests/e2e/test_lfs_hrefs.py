"""Whatever an upstream puts in a batch answer, and whatever header bytes a client sends,
goblet's request to an href is built whole before the flow changes, and the client's
credential goes only to the batch request's own origin. An href goblet would not send a
request to (a bad port or IPv6 literal, no host, whitespace, user info) is not linked: that
object reaches git-lfs as the upstream sent it. Nothing ends in a traceback."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote

import pytest

from tests.support import rawhttp
from tests.support.hostile_lfs import (
    ALICE,
    Scene,
    answer,
    granted,
    links,
    oid_of,
    send,
    send_json,
)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    s = Scene(tmp_path_factory.mktemp("hrefs"))
    yield s
    s.close()


def grant_fresh(scene: Scene, href: str, header: dict[str, str] | None = None
                ) -> tuple[str, bytes]:
    """Script both hosts to grant (and serve) a fresh object at ``href``."""
    data = os.urandom(5000)
    oid = oid_of(data)

    def app(h: BaseHTTPRequestHandler, m: str, p: str, hd: dict[str, str], b: bytes) -> None:
        if p.endswith("/objects/batch"):
            send_json(h, 200, answer([granted(oid, len(data), href, header)]))
        else:
            send(h, 200, data)
    scene.api.app = scene.media.app = app
    return oid, data


def test_a_user_agent_that_is_not_utf8_keeps_the_credential_home(scene: Scene) -> None:
    oid, data = grant_fresh(scene, f"https://{scene.media.host}/o?sig=secret",
                            {"Authorization": "RemoteAuth secret"})
    link = links(scene.batch("o/ua.git", [(oid, len(data))], ALICE))[0]
    n_media, n_log = len(scene.media.requests), len(scene.px.log_text())
    resp = scene.get(link, ALICE, extra={"User-Agent": "git-lfs/3.3 (caf\xe9)"})
    assert resp.status == 200 and resp.body == data
    got = [(hd.get("authorization"), hd.get("user-agent"))
           for _, _, hd in scene.media.requests[n_media:]]
    assert got == [("RemoteAuth secret", "git-lfs/3.3 (caf\xe9)")]
    assert "Traceback" not in scene.px.log_text()[n_log:]


@pytest.mark.parametrize("href", [
    "https://127.0.0.1:99999/obj",  # port out of range
    "https://127.0.0.1:abc/obj",  # not a port
    "https://127.0.0.1:0/obj",
    "https://[::1/obj",  # a broken IPv6 literal
    "https:///obj",  # no host
    "https://:443/obj",
    "https://{api}/o bj",  # whitespace
    "https://{api}/o\tbj",
    "https://evil:pw@{api}/obj",  # user info
    "https://{api}@{media}/obj",
    "https://{media}\\@{api}/obj",  # a backslash
    "ftp://{api}/obj",
])
def test_an_href_goblet_would_not_request_is_not_linked(scene: Scene, href: str) -> None:
    href = href.format(api=scene.api.host, media=scene.media.host)
    oid, data = grant_fresh(scene, href)
    n_log, n_api = len(scene.px.log_text()), len(scene.api.requests)
    resp = scene.batch("o/odd.git", [(oid, len(data))], ALICE)
    assert resp.status == 200
    [obj] = json.loads(resp.body)["objects"]
    assert obj["actions"]["download"]["href"] == href  # as the upstream sent it
    assert [p for _, p, _ in scene.api.requests[n_api:]] == ["/o/odd.git/info/lfs/objects/batch"]
    assert "Traceback" not in scene.px.log_text()[n_log:]


@pytest.mark.parametrize(("case", "gets_it"), [
    ("same", True), ("same-upper-scheme", True), ("own-authorization", False),
    ("localhost-name", False), ("http-same-port", False), ("media", False),
])
def test_the_credential_goes_to_the_batch_origin_only(scene: Scene, case: str,
                                                      gets_it: bool) -> None:
    api, media = scene.api.port, scene.media.port
    href, header = {
        "same": (f"https://127.0.0.1:{api}/x/obj", None),
        "same-upper-scheme": (f"HTTPS://127.0.0.1:{api}/x/obj", None),
        "own-authorization": (f"https://127.0.0.1:{api}/x/obj", {"authorization": "Up given"}),
        "localhost-name": (f"https://localhost:{api}/x/obj", None),
        "http-same-port": (f"http://127.0.0.1:{api}/x/obj", None),
        "media": (f"https://127.0.0.1:{media}/x/obj", None),
    }[case]
    oid, data = grant_fresh(scene, href, header)
    n_api, n_media = len(scene.api.requests), len(scene.media.requests)
    link = links(scene.batch("o/routes.git", [(oid, len(data))], ALICE))[0]
    assert "/info/lfs/goblet/" in link
    with contextlib.suppress(http.client.HTTPException, ConnectionError):
        scene.get(link, ALICE, timeout=15)
    sent = [hd.get("authorization") for _, p, hd in scene.api.requests[n_api:]
            if "/objects/batch" not in p]
    sent += [hd.get("authorization") for _, _, hd in scene.media.requests[n_media:]]
    assert any(a == ALICE for a in sent) is gets_it, sent


def test_misspelled_links_log_no_live_token(scene: Scene) -> None:
    oid, data = grant_fresh(scene, f"https://{scene.media.host}/o")
    link = links(scene.batch("o/paths.git", [(oid, len(data))], ALICE))[0]
    path = "/" + link.split("/", 3)[3]
    token = path.split("/goblet/")[1].split("/")[0]
    n_log = len(scene.px.log_text())
    for spelled in (path, path.replace(oid, oid.upper()),
                    path.replace("/info/lfs/goblet/", "/info/lfs//goblet/"),
                    path.replace("/o/paths.git/", "/o/./paths.git/"), path + "/",
                    path.replace(f"{token}/", f"{token}%2F"),
                    path.replace(token, f"%{ord(token[0]):02X}{token[1:]}"),
                    path.replace("/info/lfs/", "/info/LFS/"),
                    path.replace(f"/{oid}", f";x=1/{oid}"),
                    path.replace("/goblet/", "/g%6Fblet/"), path.replace("/goblet/", "/goblet/./"),
                    path.replace("/goblet/", "/goblet%252F"),
                    path.replace("/goblet/", "/goblet;x/"), path.replace("/goblet/", "/goblet%3B/"),
                    path.replace("/info/lfs/", "/info/./lfs/"),
                    path.replace("/info/lfs/goblet/", "/info/lfs/x/../goblet/")):
        with contextlib.suppress(http.client.HTTPException, ConnectionError):
            rawhttp.request(proxy_port=scene.px.port, ca_file=scene.px.ca_cert,
                            host="127.0.0.1", port=scene.api.port, method="GET", path=spelled,
                            headers={"Authorization": ALICE})
    time.sleep(0.5)
    log = scene.px.log_text()[n_log:]
    assert log.count("git ") >= 16 and token not in log and token[1:] not in log
    # nor does the upstream see it: a spelling goblet does not read as its link is refused
    sent = [p for _, p, _ in [*scene.api.requests, *scene.media.requests]]
    assert not [p for p in sent if token[1:] in p or token[1:] in unquote(p)], sent
