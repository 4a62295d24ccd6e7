"""Deterministic benchmark repositories, written with ``git fast-import``.

A :class:`RepoSpec` fully determines a repository: the same spec gives the same object ids on
every machine (fixed identities and dates, seeded pseudo-random content, no ambient config:
git runs with :func:`tests.support.repos.clean_env`). Shape:

* ``text_files`` source-like text files (lines of pseudo-words) under ``src/dNN/``; every
  commit on ``main`` rewrites, inserts or deletes a few lines in ``edits_per_commit`` of them
  (small deltas, like real code history);
* every ``asset_every``-th commit adds a binary asset of ``asset_size`` bytes, of which a
  fraction ``incompressible`` is random bytes and the rest compressible text, under
  ``assets/``; the assets dominate the pack size;
* ``branches`` extra branches fork from evenly spaced ``main`` commits, ``branch_commits``
  text-only commits each; a lightweight tag every ``tag_every`` commits of ``main``;
* commit ``n`` (in write order) is dated ``BASE_TIME + 60 n`` UTC.

The repository is then packed and configured like a forge keeps it: one pack with a
reachability bitmap (``git repack -adfb``: fast-import's own deltas are poor) and
``uploadpack.allowFilter`` (partial clones allowed). :func:`ensure_repo` caches the result
under a directory named by the spec's hash and reuses it on later runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tests.support.repos import AUTHOR_EMAIL, AUTHOR_NAME, BASE_TIME, clean_env, git

GENERATOR_VERSION = 2
MARKER = "bench-repo.json"


@dataclass(frozen=True)
class RepoSpec:
    """Generator parameters; all of them go into the cache key."""

    name: str
    commits: int
    text_files: int = 200
    edits_per_commit: int = 3
    asset_every: int = 8
    asset_size: int = 16 * 1024
    incompressible: float = 0.75
    branches: int = 3
    branch_commits: int = 20
    tag_every: int = 100
    seed: int = 1

    def key(self) -> str:
        """Hash of the parameters and the generator version (the cache key)."""
        data = json.dumps({"v": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:16]


# About a 12 MB clone pack and 3,000+ commits (a flask-sized project).
MEDIUM = RepoSpec("medium", commits=3000, text_files=300, asset_every=6, asset_size=22_000)
# A clone pack of at least 300 MB: mostly large, partly incompressible assets.
LARGE = RepoSpec(
    "large", commits=1400, text_files=300, asset_every=1, asset_size=256 * 1024,
    incompressible=0.85, branches=2,
)
# Quick mode: the same shapes, small enough for a CI smoke run.
MEDIUM_QUICK = replace(MEDIUM, name="medium-quick", commits=300, text_files=60)
LARGE_QUICK = replace(LARGE, name="large-quick", commits=40, text_files=40, branches=1,
                      branch_commits=5)


@dataclass(frozen=True)
class RepoInfo:
    """A generated repository and what it holds."""

    spec: RepoSpec
    path: Path
    head: str
    commits: int
    objects: int
    pack_bytes: int
    refs: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "name": self.spec.name, "key": self.spec.key(), "spec": asdict(self.spec),
            "head": self.head, "commits": self.commits, "objects": self.objects,
            "pack_bytes": self.pack_bytes, "refs": self.refs,
            "generate_seconds": round(self.seconds, 2),
        }


class _Words:
    """Pseudo-words and lines of pseudo-words, from one seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        letters = "abcdefghijklmnopqrstuvwxyz"
        self.rng = rng
        self.vocab = [
            "".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(800)
        ]

    def line(self) -> str:
        words = self.rng.choices(self.vocab, k=self.rng.randint(3, 12))
        indent = "    " * self.rng.randint(0, 3)
        return indent + " ".join(words)

    def text(self, lines: int) -> list[str]:
        return [self.line() for _ in range(lines)]


def _edit(rng: random.Random, words: _Words, lines: list[str]) -> None:
    """Rewrite, insert or delete a few lines (in place), keeping 20..200 lines."""
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(lines))
        op = rng.random()
        if op < 0.5 or not 20 < len(lines) < 200:
            lines[at] = words.line()
        elif op < 0.8:
            lines[at:at] = words.text(rng.randint(1, 4))
        else:
            del lines[at : at + rng.randint(1, 3)]


def _asset(spec: RepoSpec, index: int) -> bytes:
    rng = random.Random(f"{spec.seed}/asset/{index}")
    random_part = int(spec.asset_size * spec.incompressible)
    filler = f"asset {index} compressible section line\n".encode()
    text_part = (filler * (1 + (spec.asset_size - random_part) // len(filler)))
    return rng.randbytes(random_part) + text_part[: spec.asset_size - random_part]


class _Writer:
    """Streams a fast-import command stream into a running ``git fast-import``."""

    def __init__(self, repo: Path) -> None:
        self.proc = subprocess.Popen(
            ["git", "fast-import", "--quiet", "--done"],
            cwd=repo, env=clean_env(), stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        assert self.proc.stdin is not None
        self.stdin = self.proc.stdin
        self.mark = 0
        self.clock = BASE_TIME

    def data(self, payload: bytes) -> None:
        self.stdin.write(b"data %d\n" % len(payload))
        self.stdin.write(payload)
        self.stdin.write(b"\n")

    def commit(self, ref: str, message: str, parent: str | None,
               files: dict[str, bytes]) -> str:
        self.mark += 1
        mark = f":{self.mark}"
        ident = f"{AUTHOR_NAME} <{AUTHOR_EMAIL}> {self.clock} +0000"
        self.clock += 60
        head = f"commit {ref}\nmark {mark}\nauthor {ident}\ncommitter {ident}\n"
        self.stdin.write(head.encode())
        self.data(message.encode())
        if parent is not None:
            self.stdin.write(f"from {parent}\n".encode())
        for path in sorted(files):
            self.stdin.write(f"M 100644 inline {path}\n".encode())
            self.data(files[path])
        self.stdin.write(b"\n")
        return mark

    def reset(self, ref: str, mark: str) -> None:
        self.stdin.write(f"reset {ref}\nfrom {mark}\n\n".encode())

    def finish(self) -> None:
        self.stdin.write(b"done\n")
        self.stdin.close()
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        if self.proc.wait() != 0:
            raise RuntimeError(f"git fast-import failed: {err.decode(errors='replace')}")


def write_history(spec: RepoSpec, repo: Path) -> None:
    """Write the spec's history into the empty bare repo ``repo``."""
    rng = random.Random(f"{spec.seed}/history")
    words = _Words(random.Random(f"{spec.seed}/words"))
    names = [f"src/d{i % 20:02d}/f{i:04d}.txt" for i in range(spec.text_files)]
    files = {name: words.text(rng.randint(30, 90)) for name in names}
    writer = _Writer(repo)
    try:
        main_marks: list[str] = []
        parent: str | None = None
        assets = 0
        for n in range(spec.commits):
            if n == 0:
                changed = dict.fromkeys(names, b"")
            else:
                changed = {}
                for name in rng.sample(names, min(spec.edits_per_commit, len(names))):
                    _edit(rng, words, files[name])
                    changed[name] = b""
            blobs = {name: ("\n".join(files[name]) + "\n").encode() for name in changed}
            if spec.asset_every and n % spec.asset_every == 0:
                blobs[f"assets/a{assets // 100:03d}/asset-{assets:05d}.bin"] = _asset(spec, assets)
                assets += 1
            message = f"main: change {n}\n\n{words.line()}\n"
            parent = writer.commit("refs/heads/main", message, parent, blobs)
            main_marks.append(parent)
        for b in range(spec.branches):
            fork = main_marks[(b + 1) * len(main_marks) // (spec.branches + 1)]
            branch_files = {name: list(lines) for name, lines in files.items()}
            bparent = fork
            for n in range(spec.branch_commits):
                name = rng.choice(names)
                _edit(rng, words, branch_files[name])
                blob = {name: ("\n".join(branch_files[name]) + "\n").encode()}
                bparent = writer.commit(
                    f"refs/heads/topic-{b}", f"topic-{b}: change {n}\n", bparent, blob
                )
        if spec.tag_every:
            for t, mark in enumerate(main_marks[spec.tag_every - 1 :: spec.tag_every]):
                writer.reset(f"refs/tags/v0.{t}", mark)
    except BaseException:
        writer.proc.kill()
        writer.proc.wait()
        raise
    writer.finish()


def _describe(spec: RepoSpec, path: Path, seconds: float) -> RepoInfo:
    head = git("rev-parse", "refs/heads/main", cwd=path)
    commits = int(git("rev-list", "--count", "--all", cwd=path))
    counts = dict(
        line.split(": ", 1) for line in git("count-objects", "-v", cwd=path).splitlines()
    )
    pack_bytes = sum(p.stat().st_size for p in (path / "objects" / "pack").glob("*.pack"))
    refs = len(git("for-each-ref", "--format=%(refname)", cwd=path).splitlines())
    objects = int(counts["in-pack"]) + int(counts["count"])
    return RepoInfo(spec, path, head, commits, objects, pack_bytes, refs, seconds)


def generate(spec: RepoSpec, path: Path) -> RepoInfo:
    """Create the spec's repository at ``path`` (which must not exist), one bitmapped pack."""
    started = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    git("init", "--quiet", "--bare", "--initial-branch=main", str(path), cwd=path.parent)
    write_history(spec, path)
    git("repack", "-a", "-d", "-f", "-b", "-q", cwd=path)
    git("pack-refs", "--all", cwd=path)
    # Like GitHub/GitLab: partial clones are allowed (without this, upload-pack does not
    # advertise "filter" and git silently turns --filter=blob:none into a full clone).
    git("config", "uploadpack.allowFilter", "true", cwd=path)
    info = _describe(spec, path, time.monotonic() - started)
    (path / MARKER).write_text(json.dumps(info.as_dict(), indent=2) + "\n", encoding="utf-8")
    return info


def ensure_repo(spec: RepoSpec, cache_dir: Path) -> RepoInfo:
    """The spec's repository under ``cache_dir``, generated once and reused (keyed by spec)."""
    path = cache_dir / f"{spec.name}-{spec.key()}.git"
    marker = path / MARKER
    if marker.is_file():
        data = json.loads(marker.read_text(encoding="utf-8"))
        return RepoInfo(spec, path, data["head"], data["commits"], data["objects"],
                        data["pack_bytes"], data["refs"], data["generate_seconds"])
    tmp = cache_dir / f".tmp-{spec.name}-{spec.key()}-{os.getpid()}.git"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        info = generate(spec, tmp)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return replace(info, path=path)


def link_copy(source: Path, dest: Path) -> None:
    """A copy of the bare repo ``source`` at ``dest`` that shares its immutable pack files.

    Pack files are hard-linked (git never rewrites them in place); everything else, refs and
    config included, is copied, so writing to ``dest`` never changes ``source``.
    """
    def copy(src: str, dst: str) -> None:
        if "/objects/pack/" in src:
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(source, dest, copy_function=copy)


def main() -> None:
    """``python -m bench.genrepo [medium|large|...] [DIR]``: generate and describe."""
    specs = {s.name: s for s in (MEDIUM, LARGE, MEDIUM_QUICK, LARGE_QUICK)}
    name = sys.argv[1] if len(sys.argv) > 1 else "medium"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("bench/out/repos")
    print(json.dumps(ensure_repo(specs[name], out).as_dict(), indent=2))


if __name__ == "__main__":
    main()
