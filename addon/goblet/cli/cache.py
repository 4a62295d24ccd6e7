"""The cache directory as the ``goblet`` CLI opens it, and how REPO arguments select repos."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goblet.cache.locks import RepoLocks
from goblet.cache.store import RepoInfo, RepoStore
from goblet.git.runner import GitRunner

_KEY_PREFIX = re.compile(r"[0-9a-f]{4,64}")


class UsageError(Exception):
    """Bad arguments or an unusable cache dir (exit status 2)."""


@dataclass(frozen=True, slots=True)
class Cache:
    """An opened cache directory and the parts the commands share.

    Git runs exactly as in the proxy: the hardened environment with
    ``<cache>/home`` as its home (``GitRunner``).
    """

    root: Path
    store: RepoStore
    locks: RepoLocks
    git: GitRunner

    @classmethod
    def open(cls, path: str, *, create: bool = False,
             base_config: Sequence[tuple[str, str]] = ()) -> Cache:
        """Open ``path``; UsageError unless it is a goblet cache.

        With ``create``, a missing or empty directory becomes one (only if it
        belongs to us: files we create must stay writable for the proxy).
        """
        root = Path(path).expanduser().resolve()
        if not (root / "repos").is_dir():
            fresh = not root.exists() or (root.is_dir() and not any(root.iterdir()))
            if not (create and fresh):
                raise UsageError(f"{path} is not a goblet cache directory (no repos/); "
                                 "use --cache-dir")
        if create and root.exists() and root.stat().st_uid != os.geteuid():
            raise UsageError(f"{path} belongs to uid {root.stat().st_uid}: run this as that "
                             "user, so the proxy can update what it creates")
        git = GitRunner(home=root / "home", base_config=base_config)
        store = RepoStore(root, git)
        if create:
            store.prepare()
        return cls(root, store, RepoLocks(store.lock_dir), git)

    def repos(self) -> list[RepoInfo]:
        """Every complete repo, by URL then key."""
        return sorted(self.store.list_repos(), key=lambda r: (r.url, r.key))

    def select(self, specs: Sequence[str]) -> tuple[list[RepoInfo], list[str]]:
        """The repos ``specs`` name, and the specs that name none.

        A spec is a URL as ``ls`` shows it (every partition of it) or a
        cache-key prefix of at least 4 hex digits that names exactly one repo.
        """
        infos = self.repos()
        chosen: dict[str, RepoInfo] = {}
        unknown = []
        for spec in specs:
            hits = [i for i in infos if i.url == spec]
            if not hits and _KEY_PREFIX.fullmatch(spec):
                hits = [i for i in infos if i.key.startswith(spec)]
                if len(hits) > 1:
                    raise UsageError(f"key prefix {spec} matches {len(hits)} repos; "
                                     "give more digits")
            if not hits:
                unknown.append(spec)
            chosen.update((i.key, i) for i in hits)
        return list(chosen.values()), unknown


def repo_json(info: RepoInfo) -> dict[str, Any]:
    """The fields naming a repo in every JSON answer."""
    return {"url": info.url or None, "key": info.key, "partition": info.partition}


def entries(path: Path, pattern: str = "*") -> list[Path]:
    """The entries of ``path`` matching ``pattern`` (none if it cannot be read)."""
    try:
        return sorted(path.glob(pattern))
    except OSError:
        return []


def print_json(value: object) -> None:
    """Print ``value`` as indented JSON on stdout."""
    print(json.dumps(value, indent=2))
