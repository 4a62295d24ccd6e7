"""Tag views: a tag-following answer carries the tags of its plan and no other, with real
git (upload-pack through the backend, and in a view whose repo gains a tag meanwhile)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from goblet.cache.recovery import sweep_abandoned
from goblet.git.runner import GitRunner
from goblet.protocol import pktline
from goblet.serve import tagview as tagview_mod
from goblet.serve.backend import ServeBackend
from goblet.serve.packcache import Role
from goblet.serve.plans import PlanRegistry, ServePlan
from goblet.serve.tagview import TagViews, open_view, packed_refs

from tests.support.net import wait_for
from tests.support.packs import objects_in, v2_pack
from tests.support.repos import clean_env, git
from tests.unit.serve.test_backend import RecordingPackCache, http_call


def emptied(directory: Path) -> list[str]:
    """What is left in ``directory`` once it is empty (views are removed in a worker
    thread once their last answer ended; slow on a busy disk: fails after 30 s)."""
    wait_for(f"{directory.name} to empty", lambda: not os.listdir(directory) or None, 30)
    return os.listdir(directory)


def tagged_repo(path: Path) -> dict[str, str]:
    """A bare cache-like repo: one commit on main, annotated tags ``listed`` and
    ``hidden`` on it. Returns name -> oid (the commit as ``main``)."""
    git("init", "-q", "--bare", "-b", "main", str(path), cwd=path.parent)
    git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=path)
    tree = git("mktree", cwd=path, input=b"")
    commit = git("commit-tree", tree, "-m", "x", cwd=path)
    git("update-ref", "refs/heads/main", commit, cwd=path)
    oids = {"main": commit}
    for name in ("listed", "hidden"):
        git("tag", "-a", "-m", f"the {name} tag's message", name, commit, cwd=path)
        oids[name] = git("rev-parse", f"refs/tags/{name}", cwd=path)
    return oids


def fetch_body(want: str, *, include_tag: bool = True) -> bytes:
    return (pktline.encode_data(b"command=fetch\n") + pktline.DELIM
            + pktline.encode_data(f"want {want}\n".encode())
            + (pktline.encode_data(b"include-tag\n") if include_tag else b"")
            + pktline.encode_data(b"done\n") + pktline.FLUSH)


def serve(tmp_path: Path, plans_and_views: list[ServePlan], views: Path
          ) -> list[tuple[bytes, bytes]]:
    """Run the plans through a backend at once; their (head, body) answers."""
    async def main() -> list[tuple[bytes, bytes]]:
        plans = PlanRegistry()
        backend = ServeBackend(GitRunner(home=tmp_path), plans, views_dir=views)
        await backend.start()
        try:
            got = await asyncio.gather(*(http_call(backend.port, plans.register(p))
                                         for p in plans_and_views))
        finally:
            await backend.stop()
        return [answers[0] for answers in got]

    return asyncio.run(main())


def tag_messages(answer: bytes) -> set[str]:
    return {body.split(b"\n\n", 1)[1].decode().strip()
            for kind, body in objects_in(v2_pack(answer)).values() if kind == "tag"}


@pytest.mark.parametrize("tags", [None, frozenset({"listed"}), frozenset()],
                         ids=["no-view", "view-of-one", "empty-view"])
def test_the_answer_follows_only_the_plans_tags(tmp_path: Path, tags: frozenset[str] | None
                                                 ) -> None:
    repo = tmp_path / "r.git"
    oids = tagged_repo(repo)
    views = tmp_path / "tmp"
    views.mkdir()

    async def main() -> None:
        plans = PlanRegistry()
        backend = ServeBackend(GitRunner(home=tmp_path), plans, views_dir=views)
        await backend.start()
        try:
            plan = ServePlan(repo, fetch_body(oids["main"]), "version=2", "test",
                             tags=None if tags is None else
                             frozenset((f"refs/tags/{n}", oids[n]) for n in tags))
            [(head, answer)] = await http_call(backend.port, plans.register(plan))
        finally:
            await backend.stop()
        assert head.startswith(b"HTTP/1.1 200") and plan.stats.complete, plan.stats.error
        expected = {"listed", "hidden"} if tags is None else tags
        assert tag_messages(answer) == {f"the {n} tag's message" for n in expected}
        assert emptied(views) == []  # the view is gone with its run

    asyncio.run(main())


def test_a_v0_fetch_in_a_view_follows_its_tags(tmp_path: Path) -> None:
    # (the want is on no ref of the view: upload-pack serves it by the repo's own
    # allowAnySHA1InWant, which the view's config includes)
    repo = tmp_path / "r.git"
    oids = tagged_repo(repo)
    tip = git("commit-tree", git("mktree", cwd=repo, input=b""), "-p", oids["main"], "-m", "y",
              cwd=repo)
    (tmp_path / "tmp").mkdir()
    view = open_view(tmp_path / "tmp", repo, {("refs/tags/listed", oids["listed"])})
    body = (pktline.encode_data(f"want {tip} ofs-delta include-tag\n".encode())
            + pktline.FLUSH + pktline.encode_data(b"done\n"))
    try:
        answer = subprocess.run(["git", "upload-pack", "--stateless-rpc", str(view.path)],
                                input=body, env=clean_env(), capture_output=True,
                                check=True).stdout
    finally:
        view.close()
    tags = {c.split(b"\n\n", 1)[1].strip() for k, c in
            objects_in(answer[answer.index(b"PACK"):]).values() if k == "tag"}
    assert tags == {b"the listed tag's message"}


def test_a_tag_the_repo_gains_while_a_view_is_used_is_not_followed(tmp_path: Path) -> None:
    repo = tmp_path / "r.git"
    oids = tagged_repo(repo)
    (tmp_path / "tmp").mkdir()
    view = open_view(tmp_path / "tmp", repo, {("refs/tags/listed", oids["listed"])})
    try:
        # a fill for another credential brings a tag (loose ref) and packs refs
        git("tag", "-a", "-m", "the new tag's message", "new", oids["main"], cwd=repo)
        git("pack-refs", "--all", cwd=repo)
        answer = subprocess.run(
            ["git", "upload-pack", "--stateless-rpc", str(view.path)],
            input=fetch_body(oids["main"]), env=clean_env({"GIT_PROTOCOL": "version=2"}),
            capture_output=True, check=True).stdout
        assert tag_messages(answer) == {"the listed tag's message"}
    finally:
        view.close()
    assert os.listdir(tmp_path / "tmp") == []


def test_packed_refs_are_sorted_and_leave_out_what_git_could_not_have_written() -> None:
    a, b = "a" * 40, "b" * 40
    got = packed_refs({("refs/tags/v2", b), ("refs/tags/v1", a), ("refs/heads/main", a),
                       ("refs/tags/x y", a), ("refs/tags/x\nrefs/tags/y", a),
                       ("refs/tags/short", "abc"), ("refs/tags/v3", "A" * 40)})
    assert got == (b"# pack-refs with: sorted \n"
                   + f"{a} refs/tags/v1\n{b} refs/tags/v2\n".encode())


def test_a_view_that_cannot_be_made_leaves_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "r.git"
    oids = tagged_repo(repo)
    views = tmp_path / "tmp"
    views.mkdir()
    (views / "blocker").mkdir()
    real_write = Path.write_bytes

    def failing(self: Path, data: bytes) -> int:
        if self.name == "packed-refs":
            raise OSError(28, "No space left on device")
        return real_write(self, data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "write_bytes", failing)
        with pytest.raises(OSError, match="No space"):
            open_view(views, repo, {("refs/tags/listed", oids["listed"])})
    assert os.listdir(views) == ["blocker"]


def test_a_view_left_by_a_dead_process_is_swept(tmp_path: Path) -> None:
    repo = tmp_path / "r.git"
    oids = tagged_repo(repo)
    views = tmp_path / "tmp"
    views.mkdir()
    code = ("import os, sys; from pathlib import Path; from goblet.serve.tagview import "
            "open_view; open_view(Path(sys.argv[1]), Path(sys.argv[2]), "
            "{('refs/tags/listed', sys.argv[3])}); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(views), str(repo), oids["listed"]],
                   check=True)
    left = sorted(os.listdir(views))
    assert len(left) == 2 and left[0].startswith("tagview.") and left[1].endswith(".lock")
    assert sweep_abandoned(views) and os.listdir(views) == []


def test_answers_with_the_same_tags_share_one_view(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "r.git"
    oids = tagged_repo(repo)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    views = TagViews(tmp)
    listed = frozenset({("refs/tags/listed", oids["listed"])})

    async def main() -> None:
        async with views.using(repo, listed) as one, views.using(repo, listed) as two, \
                views.using(repo, frozenset()) as other:
            assert one == two != other and len(views) == 2
            assert len([p for p in os.listdir(tmp) if p.endswith(".git")]) == 2
        assert len(views) == 0 and await asyncio.to_thread(emptied, tmp) == []
        # cancelled while its view is being made: the view goes once it is made
        made = threading.Event()

        def watched_open(*args: Any) -> Any:
            try:
                return real_open(*args)
            finally:
                made.set()

        real_open = tagview_mod.open_view
        monkeypatch.setattr(tagview_mod, "open_view", watched_open)
        task = asyncio.ensure_future(views.using(repo, listed).__aenter__())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(made.wait, 30)
        assert await asyncio.to_thread(emptied, tmp) == [] and len(views) == 0
        # a repo gone meanwhile (evicted) makes no view
        gone = tmp_path / "gone.git"
        with pytest.raises(FileNotFoundError):
            async with views.using(gone, listed):
                pass
        assert os.listdir(tmp) == [] and len(views) == 0

    asyncio.run(main())


@pytest.mark.parametrize("backfills", [True, False], ids=["with-haves", "clone"])
def test_when_no_view_can_be_made(tmp_path: Path, backfills: bool) -> None:
    # (a full disk, say: here the views' directory is missing)
    repo = tmp_path / "r.git"
    oids = tagged_repo(repo)
    plan = ServePlan(repo, fetch_body(oids["main"]), "version=2", "test",
                     tags=frozenset({("refs/tags/listed", oids["listed"])}),
                     untagged=fetch_body(oids["main"], include_tag=False) if backfills
                     else None)
    [(head, answer)] = serve(tmp_path, [plan], tmp_path / "missing")
    assert head.startswith(b"HTTP/1.1 200")
    if backfills:  # git fetches the listed tags it lacks by id afterwards
        assert plan.stats.complete and b"PACK" in answer and tag_messages(answer) == set()
    else:  # a clone would lose its tags: it is told to retry instead
        assert not plan.stats.complete and b"PACK" not in answer
        assert b"ERR goblet: cache unavailable, retry" in answer
        assert "cannot make a tag view" in (plan.stats.error or "")


def test_an_answer_given_without_its_view_is_not_stored_under_its_key(tmp_path: Path) -> None:
    # (the key names the view's tags; the fallback's answer follows none)
    repo = tmp_path / "r.git"
    oids = tagged_repo(repo)
    (tmp_path / "pc").mkdir()
    packcache = RecordingPackCache(tmp_path / "pc")

    def plan() -> ServePlan:
        return ServePlan(repo, fetch_body(oids["main"]), "version=2", "test", cache_key="k",
                         repo_key="r", tags=frozenset({("refs/tags/listed", oids["listed"])}),
                         untagged=fetch_body(oids["main"], include_tag=False))

    async def main() -> None:
        plans = PlanRegistry()
        backend = ServeBackend(GitRunner(home=tmp_path), plans, packcache,
                               views_dir=tmp_path / "missing")
        await backend.start()
        try:
            for _ in range(3):
                served = plan()
                [(_, answer)] = await http_call(backend.port, plans.register(served))
                assert served.stats.complete and tag_messages(answer) == set()
        finally:
            await backend.stop()

    asyncio.run(main())
    assert Role.PRODUCE in packcache.roles and Role.HIT not in packcache.roles
    assert list((tmp_path / "pc").glob("*.answer")) == []
