"""An LFS object's answer looks the same whether goblet streams it from the upstream's href
or from its store: the same status and the same two headers (``Content-Type``,
``Content-Length``), so the headers do not tell another tenant whether someone downloaded
that object through goblet before (timing still may: see docs/security/isolation.md)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.hostile_lfs import ALICE, BOB, Scene, links, oid_of, serving

DATA = os.urandom(3000)
OID = oid_of(DATA)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    s = Scene(tmp_path_factory.mktemp("oracle"))
    s.api.app = s.media.app = serving(DATA, f"https://{s.media.host}/o",
                                      extra=[("ETag", '"media"'), ("X-Amz-Request-Id", "r1")])
    yield s
    s.close()


def test_an_answer_from_the_href_and_from_the_store_look_alike(scene: Scene) -> None:
    def probe(who: str, method: str) -> tuple[int, list[tuple[str, str]]]:
        link = links(scene.batch("o/oracle.git", [(OID, len(DATA))], who))[0]
        resp = scene.get(link, who, method=method)
        return resp.status, sorted(resp.headers.items())
    before = probe(BOB, "HEAD")
    first = probe(ALICE, "GET")  # from the href, and stored
    assert scene.stored(OID)
    assert probe(BOB, "HEAD") == before == (200, [("content-length", str(len(DATA))),
                                                  ("content-type", "application/octet-stream")])
    assert probe(ALICE, "GET") == first == before
