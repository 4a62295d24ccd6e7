"""What LFS downloads cost goblet's disk: a download that never gets the object (the href's
connection refused or failed) leaves nothing behind, not even an empty temporary file."""

from __future__ import annotations

import os
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
