"""``goblet cache verify``: ``git fsck`` every (or each named) repo, optionally quarantine.

``fsck`` runs without a lock (a reader, like ``upload-pack``). A failure is
confirmed by a second ``fsck`` under the repo's writer lock, because a repack
replacing packs while a lock-free ``fsck`` reads can make it fail spuriously;
``--quarantine`` moves a confirmed failure to ``quarantine/`` under that lock,
the same way start-up recovery does, and the proxy fills the repo afresh on
its next request.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from goblet.cache.evict import Evictor
from goblet.cache.lifecycle import Lifecycle, fsck_error
from goblet.cache.locks import LockTimeout
from goblet.cache.maintenance import Maintainer
from goblet.cli.cache import Cache, print_json, repo_json


async def _verify(cache: Cache, args: argparse.Namespace) -> tuple[list[dict[str, Any]], int]:
    if args.repos:
        infos, unknown = cache.select(args.repos)
    else:
        infos, unknown = cache.repos(), []
    results = [{"url": spec, "key": None, "partition": None, "ok": False,
                "error": "no cached repo matches", "quarantined": False} for spec in unknown]
    evictor = Evictor(cache.store, cache.locks, max_bytes=0, min_free_bytes=0)
    lifecycle = Lifecycle(cache.store, cache.locks, cache.git, evictor,
                          Maintainer(cache.store, cache.locks, cache.git))
    for info in infos:
        error = first = await fsck_error(cache.git, info.path)
        quarantined = False
        if first is not None:
            # Confirm under the writer lock: a repack or fill replacing packs
            # while a lock-free fsck reads can make it fail spuriously.
            try:
                async with cache.locks.writer(info.key, timeout=args.wait):
                    if not info.path.exists():
                        continue  # evicted meanwhile: nothing to verify
                    error = await fsck_error(cache.git, info.path)
                    if error is not None and args.quarantine:
                        lifecycle.quarantine(info)
                        quarantined = True
            except LockTimeout:
                error = f"{first} (not confirmed: the writer lock stayed busy)"
        results.append({**repo_json(info), "ok": error is None, "error": error,
                        "quarantined": quarantined})
    return results, sum(1 for r in results if not r["ok"])


def cmd_verify(args: argparse.Namespace) -> int:
    """``git fsck`` every (or each named) repo; optionally quarantine the failing ones."""
    results, failed = asyncio.run(_verify(Cache.open(args.cache_dir), args))
    if args.json:
        print_json(results)
    else:
        for r in results:
            status = "ok" if r["ok"] else "FAILED"
            line = f"{status:6}  {r['url'] or r['key'][:12]}"
            if r["error"]:
                line += f": {r['error']}"
            print(line + ("  -> quarantine/" if r["quarantined"] else ""))
        print(f"{len(results)} repo(s) checked, {failed} failed")
    if failed:
        print(f"goblet: {failed} repo(s) failed verification", file=sys.stderr)
    return 1 if failed else 0
