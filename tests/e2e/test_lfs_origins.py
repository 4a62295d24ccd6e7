"""One LFS API's grant never unlocks what another one's grant stored: goblet keeps LFS
objects per LFS API (the goblet host the batch request went to) and per partition. A
tenant who controls the batch answers of one goblet host (or finds a lax one) and knows
the oid of an object someone downloaded through another host gets nothing from the store;
in ``tenant`` and ``user`` isolation another tenant granted the same object by the same
API gets its own copy, fetched from the upstream, as for repos."""

from __future__ import annotations

import os
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.support import rawhttp
from tests.support.hostile_lfs import (
    ALICE,
    BOB,
    Scene,
    answer,
    granted,
    links,
    oid_of,
    send,
    send_json,
)

SECRET = b"alice's private weights " + os.urandom(3000)
OID = oid_of(SECRET)
MALLORY = "Bearer mallory"


def strict_app(scene: Scene, readers: tuple[str, ...]):  # type: ignore[no-untyped-def]
    def app(h: BaseHTTPRequestHandler, m: str, p: str, hd: dict[str, str], b: bytes) -> None:
        if p.endswith("/objects/batch"):
            if hd.get("authorization") not in readers:
                send_json(h, 404, {"message": "not found"})
            else:
                send_json(h, 200, answer([granted(OID, len(SECRET),
                                                  f"https://{scene.media.host}/o?sig=x")]))
        else:
            send(h, 200, SECRET)
    return app


@pytest.mark.parametrize("isolation", ["shared", "tenant", "user"])
def test_a_lax_host_does_not_unlock_what_a_strict_host_stored(tmp_path: Path,
                                                               isolation: str) -> None:
    scene = Scene(tmp_path, {"goblet_isolation": isolation}, extra_hosts=1)
    lax = scene.others[0]
    try:
        scene.api.app = scene.media.app = strict_app(scene, (ALICE,))
        link = links(scene.batch("alice/private.git", [(OID, len(SECRET))], ALICE))[0]
        assert scene.get(link, ALICE).body == SECRET and scene.stored(OID)
        assert scene.batch("alice/private.git", [(OID, len(SECRET))], MALLORY).status == 404
        # another goblet host grants mallory whatever oid he names, at an href to nowhere
        lax.app = lambda h, m, p, hd, b: send_json(h, 200, answer(
            [granted(OID, len(SECRET), "https://nowhere.invalid/x")]))
        resp = rawhttp.request(proxy_port=scene.px.port, ca_file=scene.px.ca_cert,
                               host="127.0.0.1", port=lax.port, method="POST",
                               path="/mallory/own.git/info/lfs/objects/batch",
                               headers={"Authorization": MALLORY,
                                        "Content-Type": "application/vnd.git-lfs+json"},
                               body=b'{"operation":"download","objects":[]}')
        got = scene.get(links(resp)[0], MALLORY)
        assert got.status != 200 and SECRET not in got.body
    finally:
        scene.close()


@pytest.mark.parametrize(("isolation", "copies"), [("shared", 1), ("tenant", 2)])
def test_partitions_keep_their_own_copies(tmp_path: Path, isolation: str, copies: int) -> None:
    scene = Scene(tmp_path, {"goblet_isolation": isolation})
    try:
        scene.api.app = scene.media.app = strict_app(scene, (ALICE, BOB))
        for who in (ALICE, BOB):
            link = links(scene.batch("o/shared.git", [(OID, len(SECRET))], who))[0]
            assert scene.get(link, who).body == SECRET
        fetched = [p for _, p, _ in scene.media.requests if p.startswith("/o?")]
        assert len(fetched) == copies and len(scene.stored(OID, at_least=copies)) == copies
    finally:
        scene.close()
