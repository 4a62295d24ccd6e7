"""What LFS downloads cost goblet's disk: a download that never gets the object (the href's
connection refused or failed) leaves nothing behind, not even an empty temporary file;
parallel downloads of one object write one temporary copy (the others stream it, verified,
without writing), and an object bigger than the cache budget is never written at all."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.support.hostile_lfs import ALICE, Scene, answer, granted, links, oid_of, send_json


@pytest.mark.parametrize("where", ["internal", "unresolvable"])
def test_failed_href_connections_leave_no_temporary_files(tmp_path: Path, where: str) -> None:
    scene = Scene(tmp_path, relay_internal=False)  # the default: loopback hrefs refused
    try:
        data = os.urandom(1000)
        oid = oid_of(data)
        href = (f"https://127.0.0.1:{scene.media.port}/obj" if where == "internal"
                else "https://nonexistent.invalid/obj")
        scene.api.app = lambda h, m, p, hd, b: send_json(
            h, 200, answer([granted(oid, len(data), href)]))
        link = links(scene.batch("o/leak.git", [(oid, len(data))], ALICE))[0]
        statuses = {scene.get(link, ALICE).status for _ in range(20)}
        assert statuses == {502} and scene.tmp_files() == [] and not scene.stored(oid, wait=0)
    finally:
        scene.close()


SIZE = 8 << 20
BIG = os.urandom(SIZE)


def slow_app(scene: Scene) -> Callable[..., None]:
    def app(h: BaseHTTPRequestHandler, m: str, p: str, hd: dict[str, str], b: bytes) -> None:
        if p.endswith("/objects/batch"):
            send_json(h, 200, answer([granted(oid_of(BIG), SIZE,
                                              f"https://{scene.media.host}/o")]))
            return
        h.send_response(200)
        h.send_header("Content-Length", str(SIZE))
        h.end_headers()
        for i in range(0, SIZE, 1 << 20):  # ~4 MiB/s per answer, as a WAN would
            h.wfile.write(BIG[i:i + (1 << 20)])
            time.sleep(0.25)
    return app


def parallel_downloads(scene: Scene, n: int) -> tuple[list[bytes], int]:
    """``n`` parallel GETs of one link; their bodies and the peak bytes in lfs/tmp."""
    link = links(scene.batch("o/big.git", [(oid_of(BIG), SIZE)], ALICE))[0]
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            total = 0
            for p in scene.tmp_files():
                with contextlib.suppress(OSError):
                    total += p.stat().st_size
            peak[0] = max(peak[0], total)
            time.sleep(0.05)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    bodies: list[bytes] = []
    threads = [threading.Thread(target=lambda: bodies.append(
        scene.get(link, ALICE, timeout=120).body)) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    return bodies, peak[0]


@pytest.mark.parametrize(("budget", "kept"), [("0", True), ("4MiB", False)])
def test_parallel_downloads_of_one_object_write_one_copy_within_the_budget(
        tmp_path: Path, budget: str, kept: bool) -> None:
    scene = Scene(tmp_path, {"goblet_cache_max_bytes": budget})
    try:
        scene.api.app = scene.media.app = slow_app(scene)
        bodies, peak = parallel_downloads(scene, 5)
        assert bodies == [BIG] * 5  # everyone gets the object, verified
        assert peak <= (SIZE if kept else 0)
        assert len(scene.stored(oid_of(BIG), wait=5 if kept else 0)) == (1 if kept else 0)
        assert scene.tmp_files() == []
    finally:
        scene.close()
