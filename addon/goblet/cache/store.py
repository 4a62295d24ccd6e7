"""The repo store: where each upstream repo's bare mirror lives, and what it holds.

Layout under the cache root::

    repos/<key>.git/           one bare repo per canonical upstream URL (and partition)
    repos/<key>.git/goblet-state.json   URL, refs/HEAD snapshot, fill and repack times
    repos/<key>.git/goblet-access       touched when the repo serves (its mtime: last use)
    tmp/<key>.<pid>.<ns>.git   a repo being created (renamed into repos/ when whole)
    tmp/<key>.<pid>.<ns>.lock  its creator's claim (an flock held while it works)
    trash/                     evicted repos, deleted once no reader can need them
    quarantine/                repos that failed fsck (kept for a post-mortem, then deleted)
    packcache/                 stored upload-pack answers (the pack cache)
    locks/<key>.lock           flock files of the writer locks
    home/                      $HOME for git children (empty; no config is read)

``<key>`` is the SHA-256 of the canonical URL, so nothing from a request path
reaches the filesystem.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from goblet.cache.locks import WorkClaim, claim_fresh
from goblet.git.repo import read_head, write_config
from goblet.git.runner import GitRunner

log = logging.getLogger(__name__)

STATE_FILE = "goblet-state.json"
ACCESS_FILE = "goblet-access"
ACCESS_EVERY = 60.0  # seconds between access-time updates of one repo
MAX_REMEMBERED_REPOS = 10_000  # CacheRepo objects repo_for keeps (they are pure values)
OID_RE = re.compile(r"[0-9a-f]{40}")

# Per-repo settings: no background gc or maintenance (goblet runs it), whole packs.
REPO_CONFIG: tuple[tuple[str, str, str], ...] = (
    ("gc", "auto", "0"),
    ("gc", "autoDetach", "false"),
    ("maintenance", "auto", "false"),
    ("uploadpack", "allowFilter", "true"),
    ("uploadpack", "allowAnySHA1InWant", "true"),
    ("core", "logAllRefUpdates", "false"),
    ("fetch", "writeCommitGraph", "false"),
    # Keep every fetched pack whole (index-pack, renamed into place when
    # complete) instead of exploding small ones into loose objects: a cut
    # transfer must not leave a want present without its history.
    ("fetch", "unpackLimit", "1"),
    ("transfer", "unpackLimit", "1"),
    ("transfer", "fsckObjects", "false"),
)


@dataclass(frozen=True, slots=True)
class CacheRepo:
    """One cached upstream repo: its canonical URL, key and directory."""

    url: str
    key: str
    path: Path
    partition: str = ""

    @property
    def partition_kind(self) -> str:
        """``shared``, ``tenant`` or ``user`` (never the partition's id)."""
        return self.partition.split(":", 1)[0] if self.partition else "shared"


@dataclass(frozen=True, slots=True)
class RepoState:
    """What the last fill (and maintenance) wrote about a repo."""

    refs: dict[str, str]
    head: str | None
    filled_at: float
    url: str = ""
    partition: str = "shared"
    full_repack_at: float = 0.0
    digest: str = ""  # refs_digest(refs, head), computed once when the state is read
    tips: frozenset[str] = frozenset()  # the objects of ``refs``, also computed then


def refs_digest(refs: Mapping[str, str], head: str | None) -> str:
    """A hash of the refs and HEAD: equal digests mean the same refs."""
    h = hashlib.sha256((head or "").encode())
    for name in sorted(refs):
        h.update(b"\0" + name.encode("utf-8", "surrogatepass") + b" " + refs[name].encode())
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class RepoInfo:
    """One repo of the cache as found on disk (for eviction and the CLI)."""

    key: str
    path: Path
    url: str
    partition: str
    filled_at: float
    last_access: float


def _replace_state(repo_path: Path, data: Mapping[str, object]) -> None:
    """Atomically replace the state file in ``repo_path`` with ``data``."""
    tmp = repo_path / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(data), "utf-8")
    tmp.replace(repo_path / STATE_FILE)


def canonical_url(host: str, port: int, repo_path: str) -> str:
    """``https://host[:port]/repo`` with the host lower-cased and :443 omitted."""
    host = host.lower()
    netloc = host if port == 443 else f"{host}:{port}"
    if ":" in host and not host.startswith("["):
        netloc = f"[{host}]" if port == 443 else f"[{host}]:{port}"
    return f"https://{netloc}{repo_path}"


class RepoStore:
    """Maps upstream URLs to bare repos under ``root`` and answers questions about them."""

    def __init__(self, root: Path, git: GitRunner) -> None:
        self.root = root
        self.repos_dir = root / "repos"
        self.tmp_dir = root / "tmp"
        self.trash_dir = root / "trash"
        self.quarantine_dir = root / "quarantine"
        self.packcache_dir = root / "packcache"
        self.lock_dir = root / "locks"
        self.git = git
        self._state_cache: dict[str, tuple[tuple[int, int], RepoState]] = {}
        self._touched: dict[str, float] = {}
        self._repos: dict[tuple[str, str], CacheRepo] = {}  # repo_for, remembered

    def prepare(self) -> None:
        """Create the directory layout (idempotent). Raises OSError if impossible."""
        for d in (self.repos_dir, self.tmp_dir, self.trash_dir, self.quarantine_dir,
                  self.packcache_dir, self.lock_dir, self.git.home):
            d.mkdir(parents=True, exist_ok=True)

    def repo_for(self, url: str, partition: str = "") -> CacheRepo:
        """The CacheRepo for a canonical upstream URL (it may not exist yet).

        ``partition`` separates caches of one URL (isolation modes ``tenant``
        and ``user``); the empty partition is the shared cache.
        """
        got = self._repos.get((url, partition))
        if got is not None:
            return got
        material = url if not partition else f"{url}\0{partition}"
        key = hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()
        repo = CacheRepo(url, key, self.repos_dir / f"{key}.git", partition)
        if len(self._repos) >= MAX_REMEMBERED_REPOS:
            self._repos.clear()  # (a bound, not an LRU: misses only cost a hash)
        self._repos[(url, partition)] = repo
        return repo

    def touch(self, repo: CacheRepo) -> None:
        """Note that ``repo`` served a request (at most once a minute per repo)."""
        now = time.time()
        if now - self._touched.get(repo.key, 0.0) < ACCESS_EVERY:
            return
        self._touched[repo.key] = now
        try:
            (repo.path / ACCESS_FILE).touch()
        except OSError as e:
            log.debug("cannot note access of %s: %s", repo.key[:12], e)

    def last_access(self, path: Path) -> float:
        """When the repo at ``path`` last served or was filled, as far as is known."""
        times = [self._touched.get(path.name.removesuffix(".git"), 0.0)]
        for name in (ACCESS_FILE, STATE_FILE):
            try:
                times.append((path / name).stat().st_mtime)
            except OSError:
                continue
        return max(times)

    def list_repos(self) -> list[RepoInfo]:
        """Every complete repo under repos/ (blocking; reads small files only)."""
        out: list[RepoInfo] = []
        try:
            entries = sorted(self.repos_dir.iterdir())
        except OSError:
            return out
        for path in entries:
            if not path.name.endswith(".git") or not (path / "HEAD").is_file():
                continue
            key = path.name[: -len(".git")]
            state = self._read_state(path)
            filled = state.filled_at if state else path.stat().st_mtime
            try:
                access = (path / ACCESS_FILE).stat().st_mtime
            except OSError:
                access = filled
            out.append(RepoInfo(key, path, state.url if state else "",
                                state.partition if state else "?", filled, max(access, filled)))
        return out

    def exists(self, repo: CacheRepo) -> bool:
        """Whether the repo has been created (and completed its first fill)."""
        return (repo.path / "HEAD").is_file()

    def claim_temp(self, repo: CacheRepo) -> tuple[Path, WorkClaim]:
        """A fresh path in tmp/ (same filesystem as repos/) for building ``repo``, claimed.

        The claim marks the path as live work for other processes' recovery:
        hold it until the repo was renamed into repos/ or deleted, then
        release it. Raises OSError if tmp/ cannot be written.
        """
        return claim_fresh(self.tmp_dir, repo.key, ".git")

    async def init_bare(self, path: Path) -> None:
        """Create a configured, empty bare repo at ``path``.

        ``git init`` runs hardened, without templates (no sample hooks); the
        settings of REPO_CONFIG are written into its config in process.
        Raises OSError if git or the filesystem fails.
        """
        res = await self.git.run(["init", "--bare", "--quiet", "--template=", str(path)])
        if not res.ok:
            raise OSError(f"git init failed: {res.stderr_line()}")
        await asyncio.to_thread(write_config, path, REPO_CONFIG)

    def state(self, repo: CacheRepo) -> RepoState | None:
        """The last fill's snapshot, or None if the repo was never filled."""
        try:  # (a stat every call: another process may have filled the repo)
            st = os.stat(os.path.join(repo.path, STATE_FILE))
        except FileNotFoundError:
            return None
        stamp = (st.st_mtime_ns, st.st_ino)
        cached = self._state_cache.get(repo.key)
        if cached and cached[0] == stamp:
            return cached[1]
        state = self._read_state(repo.path)
        if state is not None:
            self._state_cache[repo.key] = (stamp, state)
        return state

    @staticmethod
    def _read_state(repo_path: Path) -> RepoState | None:
        try:
            raw = json.loads((repo_path / STATE_FILE).read_text("utf-8"))
            refs = {str(k): str(v) for k, v in dict(raw["refs"]).items()}
            head = raw.get("head")
            return RepoState(refs, head, float(raw["filled_at"]),
                             str(raw.get("url", "")), str(raw.get("partition", "shared")),
                             float(raw.get("full_repack_at", 0.0)), refs_digest(refs, head),
                             frozenset(refs.values()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable %s in %s: %s", STATE_FILE, repo_path.name[:12], e)
            return None

    async def read_refs(self, path: Path) -> tuple[dict[str, str], str | None]:
        """Branches and tags of the repo at ``path`` and its HEAD target.

        ``for-each-ref`` lists the refs (packed or loose, in one pass); HEAD is
        read without running git (``goblet.git.repo``).
        """
        res = await self.git.run(
            ["for-each-ref", "--format=%(objectname) %(refname)", "refs/heads", "refs/tags"],
            git_dir=path,
        )
        if not res.ok:
            raise OSError(f"for-each-ref failed: {res.stderr_line()}")
        refs: dict[str, str] = {}
        # (a name that is not UTF-8 keeps its bytes as surrogates: two such names never
        # become one, and git gets each back as it was, in arguments and environment)
        for line in res.stdout.decode("utf-8", "surrogateescape").splitlines():
            oid, _, name = line.partition(" ")
            refs[name] = oid
        return refs, read_head(path)

    def write_state(self, path: Path, repo: CacheRepo, refs: Mapping[str, str],
                    head: str | None, *, full_repack_at: float | None = None,
                    filled_at: float | None = None) -> None:
        """Atomically replace the state file of ``repo`` (being built at ``path``).

        ``full_repack_at`` keeps its previous value unless given. The file
        holds the canonical URL (never credentials) and the partition kind.
        """
        previous = self._read_state(path)
        _replace_state(path, {
            "url": repo.url, "partition": repo.partition_kind, "refs": dict(refs),
            "head": head, "filled_at": time.time() if filled_at is None else filled_at,
            "full_repack_at": full_repack_at if full_repack_at is not None
            else (previous.full_repack_at if previous else 0.0),
        })

    def mark_full_repack(self, repo: CacheRepo, refs: Mapping[str, str],
                         head: str | None) -> None:
        """Record that a full repack of ``repo`` just finished, with the ``refs`` and
        ``head`` the repo has now (read under the same writer lock).

        A record the last fill left behind its refs (the fill failed or was killed
        after its fetch moved them) names tips whose objects the repack has just
        dropped: it is set right here. URL and partition kind stay the ones the last
        fill recorded, so a caller that knows just the repo's key and path (the
        maintenance schedule) cannot relabel it; so does the fill time (refs recorded
        now are no fresher than that for a reader of their age).
        """
        state = self._read_state(repo.path)
        if state is not None:
            _replace_state(repo.path, {
                "url": state.url or repo.url, "partition": state.partition,
                "refs": dict(refs), "head": head, "filled_at": state.filled_at,
                "full_repack_at": time.time(),
            })

    async def present(self, repo: CacheRepo, oids: Iterable[str]) -> set[str]:
        """Which of ``oids`` exist as objects in the repo (a missing repo has none)."""
        wanted = sorted({o for o in oids if OID_RE.fullmatch(o)})
        if not wanted or not self.exists(repo):
            return set()
        res = await self.git.run(
            ["cat-file", "--batch-check=%(objectname)"],
            git_dir=repo.path,
            stdin=("\n".join(wanted) + "\n").encode("ascii"),
        )
        if not res.ok:
            log.warning("cat-file failed in %s: %s", repo.key[:12], res.stderr_line())
            return set()
        found = set()
        for line in res.stdout.decode("ascii", "replace").splitlines():
            if OID_RE.fullmatch(line):
                found.add(line)
        return found
