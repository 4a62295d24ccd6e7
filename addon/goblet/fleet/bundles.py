"""Git bundles of a cache repo, made and read back through goblet's git runner.

A bundle is git's own file format for "these refs and the objects they need,
given these prerequisites": ``git bundle verify`` checks one, and fetching from
it runs ``index-pack`` (with ``fetch.fsckObjects``), so what comes back from the
store is checked by git itself before it lands in a repo.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from goblet.cache.locks import claim_fresh
from goblet.git.runner import GitRunner, GitTimeout

REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
# Reading a bundle is git's "file" transport: allowed for this call only.
_READ_CONFIG = (("protocol.file.allow", "always"), ("fetch.fsckObjects", "true"),
                ("transfer.fsckObjects", "true"), ("fetch.unpackLimit", "1"))


class BundleError(Exception):
    """git refused to make or read a bundle; the message is one safe line."""


async def create(git: GitRunner, repo: Path, out: Path, refs: Sequence[str],
                 exclude: Sequence[str] = (), *, timeout: float = 3600.0) -> bool:
    """Write a bundle of ``refs`` (names of ``repo``'s branches and tags) to ``out``,
    leaving out what ``exclude`` (object ids) reach; False if nothing would be in it.

    Names and ids go to git on stdin (``--stdin``), never as arguments."""
    lines = "".join(f"{name}\n" for name in refs) + "".join(f"^{oid}\n" for oid in exclude)
    try:
        res = await git.run(["bundle", "create", "--quiet", str(out), "--stdin"], git_dir=repo,
                            stdin=lines.encode("utf-8", "surrogateescape"), timeout=timeout)
    except GitTimeout as e:
        raise BundleError(str(e)) from None
    if res.ok:
        return True
    out.unlink(missing_ok=True)
    if b"empty bundle" in res.stderr:
        return False
    raise BundleError(f"git bundle create failed: {res.stderr_line()}")


async def verify(git: GitRunner, repo: Path, bundle: Path, *, timeout: float = 3600.0) -> None:
    """``git bundle verify`` in ``repo`` (which must hold its prerequisites)."""
    try:
        res = await git.run(["bundle", "verify", "--quiet", str(bundle)], git_dir=repo,
                            timeout=timeout)
    except GitTimeout as e:
        raise BundleError(str(e)) from None
    if not res.ok:
        raise BundleError(f"bundle does not verify: {res.stderr_line()}")


async def fetch(git: GitRunner, repo: Path, bundle: Path, *, timeout: float = 3600.0) -> None:
    """Fetch the branches and tags of ``bundle`` into ``repo``; objects are checked
    (``index-pack`` with fsck) before any ref moves."""
    try:
        res = await git.run(
            ["fetch", "--quiet", "--no-write-fetch-head", "--no-auto-maintenance",
             "--no-recurse-submodules", "--no-tags", str(bundle), *REFSPECS],
            git_dir=repo, config=_READ_CONFIG, timeout=timeout)
    except GitTimeout as e:
        raise BundleError(str(e)) from None
    if not res.ok:
        raise BundleError(f"bundle fetch failed: {res.stderr_line()}")


@contextlib.contextmanager
def bundle_file(tmp_dir: Path, repo_key: str) -> Iterator[Path]:
    """A fresh path in the cache's ``tmp/`` for one bundle, claimed while in use (so no
    sweep of ``tmp/`` takes it; a crashed process's is swept), deleted afterwards.
    Raises OSError if no claim can be made."""
    path, claim = claim_fresh(tmp_dir, repo_key, ".bundle")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        claim.release()
