"""``parse_count_objects``: the numbers maintenance decides on, from real git too."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from goblet.cache.maintenance import ObjectCounts, parse_count_objects


def test_parse_count_objects() -> None:
    text = ("count: 12\nsize: 48\nin-pack: 300\npacks: 3\nsize-pack: 1024\n"
            "prune-packable: 0\ngarbage: 0\nsize-garbage: 0\n")
    assert parse_count_objects(text) == ObjectCounts(loose=12, packs=3)
    assert parse_count_objects("") == ObjectCounts(0, 0)
    assert parse_count_objects("count: many\npacks\n: 4\npacks: 2") == ObjectCounts(0, 2)


def test_parse_count_objects_of_real_git(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1",
           "HOME": str(tmp_path), "GIT_CONFIG_GLOBAL": "/dev/null"}
    repo = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True, env=env)
    for i in range(3):
        subprocess.run(["git", "--git-dir", str(repo), "hash-object", "-w", "--stdin"],
                       input=f"blob {i}".encode(), check=True, env=env, capture_output=True)
    out = subprocess.run(["git", "--git-dir", str(repo), "count-objects", "-v"], check=True,
                         env=env, capture_output=True, text=True).stdout
    assert parse_count_objects(out) == ObjectCounts(loose=3, packs=0)
