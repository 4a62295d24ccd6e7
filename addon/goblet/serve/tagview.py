"""A throwaway view of a cache repo whose only refs are the tags one answer may follow.

With ``include-tag``, pack-objects adds the tag object of every ``refs/tags/*``
of the repo it runs in that points into the pack, whether or not the client was
shown the tag (``uploadpack.hideRefs`` does not change that), and it reads those
refs at the end of its work, after a concurrent fill may have added one. So a
tag-following answer runs in a view instead: a bare repo that borrows every
object of the cache repo (``objects/info/alternates``) and has no refs but the
tags given (``packed-refs``). Nothing can add a ref to it while it is used.

Layout, in the cache dir's ``tmp/``, claimed like any temporary work
(``locks.claim_fresh``), so a view whose process died is swept with the rest::

    tmp/tagview.<pid>.<ns>.git/
        HEAD                     a dangling symref (nothing is served by ref name)
        config                   format 0, bare, then the cache repo's own config
        objects/info/alternates  the cache repo's objects directory
        refs/
        packed-refs              the tags, sorted by name
    tmp/tagview.<pid>.<ns>.lock  the claim, held while the view exists

Answers of the same repo with the same tags share one view (``TagViews``): a
view's contents follow from that pair alone, and a repo with many tags would
otherwise cost a ``packed-refs`` file per answer.

The view names the cache repo by its path, so the repo must stay there while
the view is used: the backend counts it as being read for that long, and
eviction passes over a repo this process reads (``cache/evict.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

from goblet.cache.locks import WorkClaim, claim_fresh
from goblet.cache.recovery import remove_tree

PREFIX = "tagview"
_OID = re.compile(r"[0-9a-f]{40}")
_NAME = re.compile(r"refs/tags/[^\x00-\x20\x7f~^:?*\[\\]+")


def packed_refs(tags: Iterable[tuple[str, str]]) -> bytes:
    """The ``packed-refs`` file of ``tags`` ((refname, oid)), sorted by name. A pair that
    is not a tag ref git could have written (a name outside ``refs/tags/``, with a
    space, a control or a special character; an object id that is not 40 hex digits)
    is left out: that tag is not followed."""
    lines = [b"# pack-refs with: sorted \n"]
    for name, oid in sorted(tags, key=lambda t: t[0].encode("utf-8", "surrogateescape")):
        if _NAME.fullmatch(name) and _OID.fullmatch(oid):
            lines.append(f"{oid} {name}\n".encode("utf-8", "surrogateescape"))
    return b"".join(lines)


def config_text(repo_dir: Path) -> str:
    """The view's config: its own format, then the cache repo's settings (included)."""
    quoted = str(repo_dir.resolve() / "config").replace("\\", "\\\\").replace('"', '\\"')
    return ("[core]\n\trepositoryformatversion = 0\n\tbare = true\n"
            f'[include]\n\tpath = "{quoted}"\n')


class TagView:
    """One view (``path``), removed by ``close`` (blocking; idempotent)."""

    def __init__(self, path: Path, claim: WorkClaim) -> None:
        self.path = path
        self._claim = claim

    def close(self) -> None:
        """Delete the view, then release its claim."""
        if self._claim.held:
            remove_tree(self.path)
            self._claim.release()


def open_view(tmp_dir: Path, repo_dir: Path, tags: Iterable[tuple[str, str]]) -> TagView:
    """Create a view of ``repo_dir`` whose only refs are ``tags`` (blocking: run it off the
    event loop). Raises OSError if it cannot be written (leaving nothing behind)."""
    refs = packed_refs(tags)
    objects = repo_dir.resolve() / "objects"
    if not objects.is_dir():  # (evicted meanwhile: git would find no objects through it)
        raise FileNotFoundError(f"{repo_dir.name[:12]}: the cache repo is gone")
    path, claim = claim_fresh(tmp_dir, PREFIX, ".git")
    try:
        (path / "objects" / "info").mkdir(parents=True)
        (path / "refs").mkdir()
        (path / "HEAD").write_text("ref: refs/heads/goblet-tag-view\n", "utf-8")
        (path / "config").write_text(config_text(repo_dir), "utf-8")
        (path / "objects" / "info" / "alternates").write_bytes(
            os.fsencode(objects) + b"\n")
        (path / "packed-refs").write_bytes(refs)
    except BaseException:
        remove_tree(path)
        claim.release()
        raise
    return TagView(path, claim)


@dataclass
class _Shared:
    made: asyncio.Future[TagView]
    users: int = 0


class TagViews:
    """The views in use in ``tmp_dir``, one per (repo, tags), shared by the answers that
    need it and removed when the last of them ends."""

    def __init__(self, tmp_dir: Path) -> None:
        self.tmp_dir = tmp_dir
        self._views: dict[tuple[Path, frozenset[tuple[str, str]]], _Shared] = {}

    def __len__(self) -> int:
        return len(self._views)

    @contextlib.asynccontextmanager
    async def using(self, repo_dir: Path, tags: frozenset[tuple[str, str]]
                    ) -> AsyncIterator[Path]:
        """The path of a view of ``repo_dir`` with ``tags``, for the body of the ``with``
        block. It is made off the event loop if no answer uses one yet; raises OSError
        if it cannot be made. Never leaked, whenever the task is cancelled."""
        key = (repo_dir, tags)
        shared = self._views.get(key)
        if shared is None:
            shared = self._views[key] = _Shared(asyncio.ensure_future(
                asyncio.to_thread(open_view, self.tmp_dir, repo_dir, tags)))
        shared.users += 1
        try:
            view = await asyncio.shield(shared.made)
            yield view.path
        finally:
            shared.users -= 1
            if not shared.users:
                if self._views.get(key) is shared:
                    del self._views[key]
                if shared.made.done():
                    _close_made(shared.made)
                else:
                    shared.made.add_done_callback(_close_made)


def _close_made(made: asyncio.Future[TagView]) -> None:
    """Close a view once it is made (at once if it is), unless making it failed; the files
    go in a worker thread (a repo with many tags has a large ``packed-refs``), no one waits
    for them: the view is no longer anyone's, and its path is its own."""
    if not made.cancelled() and made.exception() is None:
        view = made.result()
        try:
            asyncio.get_running_loop().run_in_executor(None, view.close)
        except RuntimeError:  # (the loop's executor is shutting down: close it here)
            view.close()
