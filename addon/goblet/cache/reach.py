"""Which objects of a cache repo are reachable from a given set of ref tips.

``git upload-pack`` (protocol v2) hands out any object present in the repo,
reachable or not, so goblet checks before it serves an object by id: an
object the upstream deleted, or one only reachable from refs the upstream
does not show the asking credential, may still sit in the cache.

``git rev-list --objects --stdin`` is given the asked-for objects as positive
and the tips as negative revisions; what it prints is reachable from the
former but not from the latter. With a reachability bitmap (maintenance
writes one) this is fast; without it, the walk is bounded by the repo's size
and a timeout. The output is read as it comes and only lines naming an
asked-for object are kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path

from goblet.cache.store import OID_RE
from goblet.git.runner import READ_CHUNK, GitRunner, kill_and_reap

log = logging.getLogger(__name__)


async def existing(git: GitRunner, repo: Path, oids: Iterable[str]) -> set[str]:
    """The subset of ``oids`` present as objects in ``repo``."""
    wanted = sorted({o for o in oids if OID_RE.fullmatch(o)})
    if not wanted:
        return set()
    res = await git.run(["cat-file", "--batch-check=%(objectname)"], git_dir=repo,
                        stdin=("\n".join(wanted) + "\n").encode("ascii"))
    if not res.ok:
        return set()
    lines = res.stdout.decode("ascii", "replace").splitlines()
    return {line for line in lines if OID_RE.fullmatch(line)}


async def unreachable(git: GitRunner, repo: Path, oids: Iterable[str], tips: Iterable[str],
                      *, timeout: float = 60.0) -> set[str]:
    """The subset of ``oids`` not reachable from ``tips`` in ``repo``.

    Conservative: an object that is missing, a failing or slow ``rev-list``
    and a repo without any of the tips all count as unreachable.
    """
    asked = {o for o in oids if OID_RE.fullmatch(o)}
    if not asked:
        return set()
    tipset = set(tips)
    present = await existing(git, repo, asked | tipset)
    missing = asked - present
    candidates = (asked & present) - tipset
    bases = present & tipset
    if not candidates:
        return missing
    if not bases:
        return missing | candidates
    stdin = "".join(f"{o}\n" for o in sorted(candidates))
    stdin += "".join(f"^{o}\n" for o in sorted(bases))
    try:
        printed = await asyncio.wait_for(
            _rev_list(git, repo, stdin.encode("ascii"), candidates), timeout)
    except (TimeoutError, OSError) as e:
        log.warning("reachability check in %s failed: %s", repo.name[:12], e or "timeout")
        return asked
    return missing | printed


async def _rev_list(git: GitRunner, repo: Path, stdin: bytes, candidates: set[str]) -> set[str]:
    proc = await git.spawn(["rev-list", "--objects", "--no-object-names", "--use-bitmap-index",
                            "--stdin"], git_dir=repo)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    found: set[str] = set()
    try:
        proc.stdin.write(stdin)
        await proc.stdin.drain()
        proc.stdin.close()
        pending = b""
        while chunk := await proc.stdout.read(READ_CHUNK):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                oid = line.decode("ascii", "replace")
                if oid in candidates:
                    found.add(oid)
        await proc.stderr.read()
        if await proc.wait() != 0:
            raise OSError(f"git rev-list exited with status {proc.returncode}")
        return found
    finally:
        await kill_and_reap(proc)
