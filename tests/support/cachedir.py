"""Read-only looks at goblet's cache directory, for tests that check what landed on disk."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any


def repo_states(cache_dir: Path) -> dict[Path, dict[str, Any]]:
    """Every cache repo (``repos/*.git``) with the JSON of its ``goblet-state.json``.

    A repo whose state file is missing or unreadable maps to ``{}``.
    """
    out: dict[Path, dict[str, Any]] = {}
    root = cache_dir / "repos"
    if not root.is_dir():
        return out
    for repo in sorted(root.glob("*.git")):
        try:
            out[repo] = json.loads((repo / "goblet-state.json").read_text("utf-8"))
        except (OSError, ValueError):
            out[repo] = {}
    return out


def settle(cache_dir: Path, timeout: float = 30.0) -> None:
    """Wait until no repo is being built in ``tmp/`` (a cold clone's answer fills the
    cache just after the client has it, or a fill is running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not any((cache_dir / "tmp").glob("*.git")):
                return
        except OSError:
            return
        time.sleep(0.05)


def repos_for(cache_dir: Path, url: str) -> dict[Path, dict[str, Any]]:
    """The cache repos whose state says they mirror ``url`` (once the cache settled)."""
    settle(cache_dir)
    return {p: s for p, s in repo_states(cache_dir).items() if s.get("url") == url}


def has_object(repo: Path, oid: str) -> bool:
    """Whether the bare repo ``repo`` holds object ``oid``."""
    res = subprocess.run(["git", "--git-dir", str(repo), "cat-file", "-e", oid],
                         capture_output=True, check=False,
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                              "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
                              "HOME": os.devnull})
    return res.returncode == 0
