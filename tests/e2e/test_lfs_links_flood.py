"""One credential cannot flood goblet's link table: a batch answer listing one object many
times (a server that does not deduplicate answers so) makes one link, renewed, not one per
entry; a tenant's links are bounded (its own oldest go first), and a batch answer too big to
be git-lfs's passes on as the upstream sent it. Other tenants' links keep working."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

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

DATA = os.urandom(2000)
OID = oid_of(DATA)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    s = Scene(tmp_path_factory.mktemp("flood"))

    def app(h: BaseHTTPRequestHandler, m: str, p: str, hd: dict[str, str], b: bytes) -> None:
        if p.endswith("/objects/batch"):  # one answer per object asked for
            href = f"https://{s.media.host}/objects/{OID}?sig=" + "s" * 200
            send_json(h, 200, answer([granted(o["oid"], o["size"], href,
                                              {"Authorization": "RemoteAuth x"})
                                      for o in json.loads(b)["objects"]]))
        else:
            send(h, 200, DATA, [("Content-Type", "application/octet-stream")])
    s.api.app = s.media.app = app
    yield s
    s.close()


def test_one_object_listed_many_times_makes_one_link(scene: Scene) -> None:
    bob = links(scene.batch("o/shared.git", [(OID, len(DATA))], BOB))[0]
    resp = scene.batch("o/shared.git", [(OID, len(DATA))] * 10_000, ALICE, timeout=120)
    hrefs = set(links(resp))
    assert len(hrefs) == 1 and "/info/lfs/goblet/" in next(iter(hrefs))
    assert scene.get(next(iter(hrefs)), ALICE).body == DATA
    assert scene.get(bob, BOB).body == DATA


def test_a_batch_answer_bigger_than_git_lfs_asks_for_passes_on_as_it_is(scene: Scene) -> None:
    resp = scene.batch("o/shared.git", [(OID, len(DATA))] * 25_000, ALICE, timeout=120)
    assert resp.status == 200 and len(resp.body) > 8 << 20
    assert b"/info/lfs/goblet/" not in resp.body  # not linked: the upstream's hrefs
