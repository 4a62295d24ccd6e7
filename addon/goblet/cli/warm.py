"""``goblet cache warm``: fill repos into the cache's shared partition, with progress.

Each URL is filled exactly like a proxy fills it (``Filler``: the writer
lock, ``tmp/`` then rename for a new repo, ``git fetch --atomic``), so it is
safe while proxies serve the same directory. Credentials are header lines
from ``--credentials-file`` or the ``GOBLET_WARM_HEADER`` environment
variable, never argv; git gets them through its environment only.

Output: a live progress line per repo (objects and bytes, from git's own
progress lines) and a summary; with ``--json`` one JSON object per repo and
line, written as each repo finishes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from goblet.auth.credentials import Credential
from goblet.cache.fill import Filler, FillError
from goblet.cache.store import CacheRepo, canonical_url
from goblet.cache.warm import ENV_HEADER, parse_repo_url, read_credential
from goblet.cli.cache import Cache, UsageError
from goblet.cli.format import ProgressView, human_bytes


def warm_urls(urls: list[str]) -> list[str]:
    """The canonical form of each URL; UsageError for one goblet would not cache.

    A refused URL is never echoed with its userinfo or query: either may be a token.
    """
    out = []
    for url in urls:
        parts = urlsplit(url.strip())
        shown = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
        if parts.username is not None or parts.password is not None:
            raise UsageError(f"{shown}: credentials do not belong in the URL; use "
                             f"--credentials-file or ${ENV_HEADER}")
        if parts.query or parts.fragment:
            raise UsageError(f"{shown}: a repo URL has no query or fragment")
        try:
            host, port, path = parse_repo_url(url)
        except ValueError as e:
            raise UsageError(str(e)) from None
        out.append(canonical_url(host, port, path))
    return out


def warm_credential(credentials_file: str | None) -> Credential:
    """The warming credential as the proxy's warming reads it (``read_credential``).

    The file is read here, once; its content is never printed.
    """
    try:
        return read_credential(None if credentials_file is None else Path(credentials_file))
    except OSError as e:
        raise UsageError(f"cannot read --credentials-file: {e.strerror}") from None


async def _warm_one(filler: Filler, repo: CacheRepo, credential: Credential, *,
                    view: ProgressView, out: TextIO | None, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    printed = False

    def progress(line: str) -> None:
        nonlocal printed
        text = view.feed(line)
        if text is not None and out is not None:
            out.write(text)
            out.flush()
            printed = True

    head = await filler.upstream_head(repo, credential, timeout=timeout)
    result: dict[str, Any] = {"url": repo.url, "key": repo.key, "ok": False, "created": None,
                              "refs": None, "objects": 0, "bytes": None, "seconds": 0.0,
                              "error": None}
    try:
        filled = await filler.start(repo, credential, head, progress=progress)
        result.update(ok=True, created=filled.created, refs=filled.refs)
    except FillError as e:
        result["error"] = e.reason
    if printed and view.tty and out is not None:
        out.write("\n")
    result.update(objects=view.objects, bytes=view.bytes,
                  seconds=round(time.monotonic() - started, 3))
    return result


async def _warm(cache: Cache, repos: list[CacheRepo], credential: Credential,
                args: argparse.Namespace) -> int:
    filler = Filler(cache.store, cache.locks, cache.git, stall_timeout=args.timeout)
    tty = sys.stdout.isatty() and not args.json
    failed = 0
    for i, repo in enumerate(repos, 1):
        label = f"[{i}/{len(repos)}]"
        if not args.json:
            print(f"{label} {repo.url}", flush=True)
        view = ProgressView(label, tty=tty)
        out = None if args.json else sys.stdout
        result = await _warm_one(filler, repo, credential, view=view, out=out,
                                 timeout=args.timeout)
        failed += not result["ok"]
        if args.json:
            print(json.dumps(result), flush=True)
        elif result["ok"]:
            print(f"{label} ok {repo.url}: {'created' if result['created'] else 'updated'}, "
                  f"{result['refs']} refs, {result['objects']} objects received, "
                  f"{human_bytes(result['bytes'])} in {result['seconds']:.1f}s", flush=True)
        else:
            print(f"{label} FAILED {repo.url}: {result['error']}", flush=True)
        if not result["ok"]:
            print(f"goblet: warming {repo.url} failed: {result['error']}", file=sys.stderr)
    if not args.json:
        print(f"warmed {len(repos) - failed} of {len(repos)} repo(s)"
              + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


def run_warm(args: argparse.Namespace) -> int:
    """The ``warm`` command: check every argument, then fill one repo after another."""
    urls = warm_urls(args.urls)
    credential = warm_credential(args.credentials_file)
    base_config = []
    if args.upstream_ca is not None:
        ca = Path(args.upstream_ca).expanduser().resolve()
        if not ca.is_file():
            raise UsageError(f"--upstream-ca {args.upstream_ca}: no such file")
        base_config.append(("http.sslCAInfo", str(ca)))
    cache = Cache.open(args.cache_dir, create=True, base_config=base_config)
    repos = [cache.store.repo_for(url) for url in urls]
    return asyncio.run(_warm(cache, repos, credential, args))
