"""goblet asks for an unencoded batch answer; one that comes encoded anyway passes on as the
upstream sent it, never inflated (before, a gzip answer within the size cap was inflated
whole, in memory, on the event loop: a few hundred KiB became gigabytes)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hostile_lfs import ALICE, MEDIA_TYPE, Scene, answer, granted, send


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    s = Scene(tmp_path_factory.mktemp("encoded"))
    yield s
    s.close()


def test_a_gzip_bomb_batch_answer_is_passed_on_uninflated(scene: Scene) -> None:
    bomb = gzip.compress(b'{"transfer":"basic","objects":[],"pad":"' + b"a" * (256 << 20)
                         + b'"}', compresslevel=9)
    scene.api.app = lambda h, m, p, hd, b: send(
        h, 200, bomb, [("Content-Type", MEDIA_TYPE), ("Content-Encoding", "gzip")])
    before = peak_rss(scene.px.proc.pid)  # type: ignore[union-attr]
    resp = scene.batch("o/gz.git", [("a" * 64, 1)], ALICE, timeout=120)
    grew = peak_rss(scene.px.proc.pid) - before  # type: ignore[union-attr]
    assert resp.status == 200 and resp.body == bomb
    assert grew < 64 << 20, f"peak RSS grew {grew >> 20} MiB"


def test_an_encoded_batch_answer_is_not_linked(scene: Scene) -> None:
    plain = json.dumps(answer([granted("b" * 64, 3, "https://media.example/o?sig=s")]))
    body = gzip.compress(plain.encode())
    scene.api.app = lambda h, m, p, hd, b: send(
        h, 200, body, [("Content-Type", MEDIA_TYPE), ("Content-Encoding", "gzip")])
    resp = scene.batch("o/gz.git", [("b" * 64, 3)], ALICE)
    assert resp.status == 200 and resp.body == body  # as the upstream sent it
    assert scene.api.requests[-1][2]["accept-encoding"] == "identity"
