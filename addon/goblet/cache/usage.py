"""How much the cache holds: repo count and bytes on disk, by walking the tree.

``git count-objects`` misses bitmaps, indexes and reverse indexes, so the
size is measured from the files themselves (allocated blocks, like ``du``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Usage:
    """Repos and bytes under the cache root."""

    repos: int
    bytes: int


def tree_bytes(path: Path) -> int:
    """Allocated bytes of every file under ``path`` (symlinks not followed)."""
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        else:
                            st = entry.stat(follow_symlinks=False)
                            total += st.st_blocks * 512
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def measure(root: Path) -> Usage:
    """Count the repos in ``root/repos`` and the bytes of the whole cache root."""
    repos_dir = root / "repos"
    try:
        repos = sum(1 for p in repos_dir.iterdir() if p.name.endswith(".git"))
    except OSError:
        repos = 0
    return Usage(repos, tree_bytes(root))


def pack_bytes(repo: Path) -> int:
    """Bytes of the ``.pack`` files of one repo (0 if it has none)."""
    try:
        return sum(p.stat().st_size for p in (repo / "objects" / "pack").glob("*.pack"))
    except OSError:
        return 0


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding ``path`` (0 if it cannot be read)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0
