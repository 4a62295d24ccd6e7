"""``goblet``: the admin CLI for a goblet cache directory.

    goblet cache ls      [--lfs] [--cache-dir DIR] [--json]
    goblet cache stats   [--cache-dir DIR] [--json]
    goblet cache evict   (REPO... | --lru-to SIZE) [--wait SECONDS] [--cache-dir DIR] [--json]
    goblet cache verify  [REPO...] [--quarantine] [--cache-dir DIR] [--json]
    goblet cache warm    URL... [--credentials-file F] [--upstream-ca FILE] [--json] ...

REPO is a URL as ``ls`` shows it (every partition of that URL) or a unique
prefix of a cache key; ``lfs:OID`` names a stored LFS object (``ls --lfs``).
Safe while proxies serve the same directory: every change is made under the
repo's writer lock (the same ``flock`` the proxies take), evicted repos go to
``trash/`` and are deleted only after the drain time (an evicted LFS object is
deleted at once: a reader keeps its open file), and ``verify`` reads without a
lock.

Exit status: 0 ok, 1 a repo failed, 2 usage error. Errors are one line on
stderr; the CLI never prints a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from goblet.cache.evict import Eviction, Evictor, cache_bytes
from goblet.cache.store import CacheRepo, RepoInfo
from goblet.cache.usage import free_bytes, tree_bytes
from goblet.cli.cache import Cache, UsageError, entries, print_json, repo_json
from goblet.cli.format import human_age, human_bytes, table
from goblet.cli.verify import cmd_verify
from goblet.cli.warm import run_warm
from goblet.lfs.store import LfsStore
from goblet.options import parse_seconds, parse_size


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def cmd_ls(args: argparse.Namespace) -> int:
    """One line (or JSON object) per cached repo (with ``--lfs``: per LFS object)."""
    cache = Cache.open(args.cache_dir)
    now = time.time()
    if args.lfs:
        return _ls_lfs(cache, now, args.json)
    rows = []
    for info in cache.repos():
        state = cache.store.state(CacheRepo(info.url, info.key, info.path))
        rows.append({
            **repo_json(info), "path": str(info.path), "bytes": tree_bytes(info.path),
            "refs": len(state.refs) if state else None, "head": state.head if state else None,
            "last_access": info.last_access, "idle_seconds": round(now - info.last_access, 1),
            "filled_at": info.filled_at, "refs_age_seconds": round(now - info.filled_at, 1),
        })
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no repos in {cache.root}")
        return 0
    print(table(["URL", "PARTITION", "SIZE", "LAST USE", "REFS AGE", "KEY"], [
        [r["url"] or "?", r["partition"], human_bytes(r["bytes"]),
         human_age(r["idle_seconds"]) + " ago", human_age(r["refs_age_seconds"]), r["key"][:12]]
        for r in rows]))
    print(f"{len(rows)} repo(s), {human_bytes(sum(r['bytes'] for r in rows))}")
    return 0


def _ls_lfs(cache: Cache, now: float, as_json: bool) -> int:
    objects = sorted(LfsStore(cache.root).objects(), key=lambda o: o.oid)
    rows: list[dict[str, Any]] = [
        {"oid": o.oid, "size": o.size, "origin": o.origin or None, "path": str(o.path),
         "last_access": o.last_access, "idle_seconds": round(now - o.last_access, 1)}
        for o in objects]
    if as_json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no LFS objects in {cache.root}")
        return 0
    print(table(["OID", "SIZE", "LAST USE"], [
        [r["oid"], human_bytes(r["size"]), human_age(r["idle_seconds"]) + " ago"]
        for r in rows]))
    print(f"{len(rows)} LFS object(s), {human_bytes(sum(r['size'] for r in rows))}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Totals of the cache dir: what the budget counts, free disk, trash and quarantine."""
    cache = Cache.open(args.cache_dir)
    s = cache.store
    repos_bytes, pack_bytes = tree_bytes(s.repos_dir), tree_bytes(s.packcache_dir)
    lfs = LfsStore(cache.root)
    lfs_bytes = tree_bytes(lfs.root)
    stats: dict[str, Any] = {
        "cache_dir": str(cache.root), "repos": len(s.list_repos()), "repos_bytes": repos_bytes,
        "pack_cache_entries": len(entries(s.packcache_dir, "*.answer")),
        "pack_cache_bytes": pack_bytes, "lfs_objects": sum(1 for _ in lfs.objects()),
        "lfs_bytes": lfs_bytes, "budget_bytes": repos_bytes + pack_bytes + lfs_bytes,
        "total_bytes": tree_bytes(cache.root), "free_bytes": free_bytes(cache.root),
        "trash_entries": len(entries(s.trash_dir)), "trash_bytes": tree_bytes(s.trash_dir),
        "quarantine_entries": len(entries(s.quarantine_dir)),
        "quarantine_bytes": tree_bytes(s.quarantine_dir),
        "tmp_entries": len(entries(s.tmp_dir, "*.git")),
    }
    if args.json:
        print_json(stats)
        return 0
    print(table(["", ""], [
        ["cache dir", stats["cache_dir"]],
        ["repos", f"{stats['repos']} ({human_bytes(repos_bytes)})"],
        ["pack cache", f"{stats['pack_cache_entries']} answer(s) ({human_bytes(pack_bytes)})"],
        ["LFS objects", f"{stats['lfs_objects']} ({human_bytes(lfs_bytes)})"],
        ["budget counts",
         f"{human_bytes(stats['budget_bytes'])} (repos + pack cache + LFS objects)"],
        ["whole dir", human_bytes(stats["total_bytes"])],
        ["free disk", human_bytes(stats["free_bytes"])],
        ["trash", f"{stats['trash_entries']} ({human_bytes(stats['trash_bytes'])})"],
        ["quarantine",
         f"{stats['quarantine_entries']} ({human_bytes(stats['quarantine_bytes'])})"],
        ["temporary", f"{stats['tmp_entries']} (fills or tag views in progress, or crash residue)"],
    ]).lstrip("\n"))
    return 0


def _evicted_json(e: Eviction) -> dict[str, Any]:
    return {"url": e.url or None, "key": e.key, "partition": e.partition, "bytes": e.bytes,
            "idle_seconds": round(e.idle_seconds, 1)}


def _not_evicted_json(info: RepoInfo) -> dict[str, Any]:
    why = "its writer lock is busy" if info.path.exists() else "it is gone already"
    return {**repo_json(info), "error": f"not evicted: {why}"}


async def _evict(cache: Cache, args: argparse.Namespace) -> dict[str, Any]:
    lfs = LfsStore(cache.root)
    evictor = Evictor(cache.store, cache.locks, max_bytes=0, min_free_bytes=0, lfs=lfs)
    evicted: list[Eviction] = []
    passed: list[RepoInfo] = []
    failed: list[dict[str, Any]] = []
    answers: list[Path] = []
    if args.lru_to is None:
        objects = [spec.removeprefix("lfs:") for spec in args.repos if spec.startswith("lfs:")]
        for oid in objects:
            try:
                freed = lfs.remove(oid)
            except ValueError:
                freed = None
            if freed is None:
                failed.append({"url": f"lfs:{oid}", "key": None, "partition": "lfs",
                               "error": "no stored LFS object has this oid"})
            else:
                evicted.append(Eviction(oid, f"lfs:{oid}", freed, 0.0, "lfs"))
        infos, unknown = cache.select([s for s in args.repos if not s.startswith("lfs:")])
        failed += [{"url": spec, "key": None, "partition": None,
                    "error": "no cached repo matches"} for spec in unknown]
        for info in infos:
            eviction = await evictor.evict(info, tree_bytes(info.path), lock_timeout=args.wait)
            if eviction is None:
                passed.append(info)
            else:
                evicted.append(eviction)
    else:
        # The proxy's own LRU pass, with the bytes above the target to free.
        over = cache_bytes(cache.store) - args.lru_to
        evicted, passed = await evictor.evict_lru(over, lock_timeout=args.wait)
        # Still over: stored answers, oldest first (a replay in progress keeps
        # its open file; a proxy that misses one runs upload-pack instead).
        current = cache_bytes(cache.store)
        stored = entries(cache.store.packcache_dir, "*.answer")
        for path in sorted(stored, key=lambda p: p.stat().st_mtime):
            if current <= args.lru_to:
                break
            current -= path.stat().st_blocks * 512
            path.unlink(missing_ok=True)
            answers.append(path)
    purged = await evictor.purge_trash()
    return {"evicted": [_evicted_json(e) for e in evicted],
            "failed": failed + [_not_evicted_json(i) for i in passed],
            "pack_cache_answers_removed": len(answers), "trash_purged": purged,
            "bytes_after": cache_bytes(cache.store)}


def cmd_evict(args: argparse.Namespace) -> int:
    """Move repos to trash under their writer locks: named ones, or LRU down to a size."""
    if (args.lru_to is None) == (not args.repos):
        raise UsageError("evict needs REPO... or --lru-to SIZE (not both)")
    result = asyncio.run(_evict(Cache.open(args.cache_dir), args))
    if args.json:
        print_json(result)
    else:
        for e in result["evicted"]:
            print(f"evicted {e['url'] or e['key'][:12]} ({e['partition']}, "
                  f"{human_bytes(e['bytes'])}, idle {human_age(e['idle_seconds'])})")
        if result["pack_cache_answers_removed"]:
            print(f"removed {result['pack_cache_answers_removed']} stored pack-cache answer(s)")
        print(f"{len(result['evicted'])} repo(s) or LFS object(s) evicted; the cache now counts "
              f"{human_bytes(result['bytes_after'])}; evicted repos wait in trash/ until no "
              "clone can still read them")
    for f in result["failed"]:
        print(f"goblet: {f['url'] or f['key']}: {f['error']}", file=sys.stderr)
    return 1 if result["failed"] else 0


def _size(text: str) -> int:
    try:
        return parse_size("value", text, 0)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seconds(text: str) -> int:
    try:
        return parse_seconds("duration", text, 0, 86400)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``goblet``."""
    def add_common(p: argparse.ArgumentParser, leaf: bool) -> None:
        # Accepted before and after the command; a value after it wins.
        keep: dict[str, Any] = {"default": argparse.SUPPRESS} if leaf else {}
        p.add_argument("--cache-dir", **({"default": "cache"} | keep),
                       help="the cache directory (goblet_cache_dir; default ./cache)")
        p.add_argument("--json", action="store_true", **keep, help="print JSON instead of text")
        p.add_argument("-v", "--verbose", action="store_true", **keep, help="log what happens")

    common = _Parser(add_help=False)
    add_common(common, leaf=True)
    parser = _Parser(prog="goblet", description="Administer a goblet cache directory.")
    top = parser.add_subparsers(dest="area", required=True, metavar="cache")
    cache = top.add_parser("cache", help="look at and look after a cache directory")
    add_common(cache, leaf=False)
    sub = cache.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, str, Callable[[argparse.Namespace], int]]] = [
        ("ls", "list cached repos: URL, partition, size, last use, age of refs (--lfs: "
               "LFS objects)", cmd_ls),
        ("stats", "totals: repos, bytes, pack cache, free disk, trash, quarantine", cmd_stats),
        ("evict", "evict named repos, or least recently used ones down to a size", cmd_evict),
        ("verify", "git fsck every (or each named) repo", cmd_verify),
        ("warm", "fill repos from their upstream into the shared partition", run_warm),
    ]
    for name, text, func in commands:
        p = sub.add_parser(name, help=text, description=text, parents=[common])
        p.set_defaults(func=func)
        if name in ("evict", "verify"):
            p.add_argument("repos", nargs="*", metavar="REPO",
                           help="URL as `ls` shows it, or a unique cache-key prefix")
            p.add_argument("--wait", type=_seconds, default=10, metavar="SECONDS",
                           help="how long to wait for a busy writer lock (default 10)")
        if name == "ls":
            p.add_argument("--lfs", action="store_true", help="list stored LFS objects instead")
        if name == "evict":
            p.add_argument("--lru-to", type=_size, metavar="SIZE",
                           help="evict least recently used repos and LFS objects until the "
                                "cache counts at most SIZE (e.g. 10GiB, 0)")
        if name == "verify":
            p.add_argument("--quarantine", action="store_true",
                           help="move repos that fail to quarantine/ (under the writer lock)")
        if name == "warm":
            p.add_argument("urls", nargs="+", metavar="URL",
                           help="https://host[:port]/path, without credentials")
            p.add_argument("--credentials-file", metavar="F",
                           help="header lines for upstream (default: $GOBLET_WARM_HEADER)")
            p.add_argument("--upstream-ca", metavar="FILE",
                           help="CA bundle to verify the upstream with (http.sslCAInfo)")
            p.add_argument("--timeout", type=_seconds, default=60, metavar="SECONDS",
                           help="give up when the upstream sends nothing this long (default 60)")
    return parser


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"goblet: {record.getMessage()}"  # never a traceback


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_OneLine())
        logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                            handlers=[handler], force=True)
        status: int = args.func(args)
        return status
    except UsageError as e:
        print(f"goblet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("goblet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `goblet cache ls | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        print(f"goblet: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the CLI's promise: one line, never a traceback
        print(f"goblet: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
