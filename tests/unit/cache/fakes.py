"""A cache directory laid out on disk without git: repos of known sizes and access times."""

from __future__ import annotations

import json
import os
from pathlib import Path

from goblet.cache.evict import Eviction, Evictor
from goblet.cache.locks import RepoLocks
from goblet.cache.store import RepoStore
from goblet.git.runner import GitRunner


class FakeCache:
    """A store laid out on disk: repos of known sizes and access times, no git needed."""

    def __init__(self, root: Path) -> None:
        self.store = RepoStore(root, GitRunner(home=root / "home"))
        self.store.prepare()
        self.locks = RepoLocks(self.store.lock_dir, poll=0.01)

    def add(self, name: str, size: int, accessed: float) -> str:
        key = name * 64 if len(name) == 1 else name
        path = self.store.repos_dir / f"{key}.git"
        (path / "objects" / "pack").mkdir(parents=True)
        (path / "HEAD").write_text("ref: refs/heads/main\n")
        (path / "objects" / "pack" / "pack-1.pack").write_bytes(os.urandom(size))
        (path / "goblet-state.json").write_text(json.dumps({
            "url": f"https://git.example/{name}.git", "partition": "shared", "refs": {},
            "head": "refs/heads/main", "filled_at": accessed - 10}))
        (path / "goblet-access").touch()
        os.utime(path / "goblet-access", (accessed, accessed))
        return key

    def evictor(self, **kw: object) -> tuple[Evictor, list[Eviction]]:
        seen: list[Eviction] = []
        ev = Evictor(self.store, self.locks, on_evict=seen.append,
                     **{"max_bytes": 0, "min_free_bytes": 0, **kw})  # type: ignore[arg-type]
        return ev, seen

    def remaining(self) -> set[str]:
        return {p.name[:1] for p in self.store.repos_dir.iterdir()}
