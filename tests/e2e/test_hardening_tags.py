"""Tag following sends no tag the upstream does not list to the credential.

``git fetch`` and ``--single-branch``/``--depth`` clones follow tags: their request carries
``include-tag``, and upload-pack then adds the tag object of every tag of the serving repo
that points into the pack, listed to the client or not. The cache keeps a tag deleted
upstream until a fill prunes it (a ref request limited to branches starts no fill), so a
fetch the cache answers could carry a tag object (its message, its tagger) the upstream no
longer has. So tag-following answers run in a view of the cache repo whose only tags are
those the upstream listed to this credential and the cache holds as listed. A fetch with
``have`` lines (git backfills the listed tags it lacks by id afterwards) is answered from
the cache even when it cannot follow every listed tag; one without (a clone, which never
backfills) then goes upstream.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.e2e.conftest import Repos
from tests.e2e.test_pack_cache import delta, scrape
from tests.e2e.test_redteam_filters import fetch_outcomes
from tests.support import rawhttp
from tests.support.attack import ALICE, STRANGERS, UPLOAD_HEADERS, no_pack, send
from tests.support.cachedir import has_object, repos_for
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.net import wait_for
from tests.support.packs import objects_in, v2_pack
from tests.support.proxy import GobletProxy
from tests.support.repos import add_commit
from tests.support.repos import git as upstream_git
from tests.support.upstream_client import UpstreamServer

V2 = {**UPLOAD_HEADERS, **ALICE}
V0 = {"Content-Type": "application/x-git-upload-pack-request", **ALICE}


def refs_then_fetch(upstream: UpstreamServer, proxy: GobletProxy | None, name: str,
                    prefixes: tuple[str, ...], head: str) -> dict[str, tuple[str, bytes]]:
    """As ``git fetch`` asks: info/refs, ls-refs (``prefixes``), then a fetch of ``head``
    following tags; the objects of the answer's pack."""
    path = f"/{name}/git-upload-pack"
    assert send(upstream, proxy, "GET", f"/{name}/info/refs?service=git-upload-pack",
                {"Git-Protocol": "version=2", **ALICE}).status == 200
    assert send(upstream, proxy, "POST", path, V2, rawhttp.v2_ls_refs_body(prefixes)).status == 200
    resp = send(upstream, proxy, "POST", path, V2,
                rawhttp.v2_fetch_body(head, extra=("include-tag", "no-progress")))
    assert resp.status == 200, resp.body[:300]
    return objects_in(v2_pack(resp.body))


def tagged_repo(repos: Repos, secret: bytes) -> tuple[str, Path, str, str]:
    """A private repo of alice's with an annotated tag ``leaky`` (message ``secret``) on
    main's parent: (name, upstream bare repo, the tag object, main)."""
    name = repos.create(public=False, readers=("alice",), commits=4)
    bare = repos.path(name)
    upstream_git("tag", "-a", "leaky", "-m", secret.decode(), "main~1", cwd=bare)
    return (name, bare, upstream_git("rev-parse", "refs/tags/leaky", cwd=bare),
            upstream_git("rev-parse", "refs/heads/main", cwd=bare))


def test_a_tag_deleted_upstream_is_not_sent_by_tag_following(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    secret = f"tag message {uuid.uuid4().hex}".encode()
    name, bare, tag, head = tagged_repo(repos, secret)
    url = upstream.url(name)
    git.clone(with_userinfo(url, "alice", "alice-pw"), tmp_path / "c")
    [cache] = repos_for(proxy.cache_dir, url)
    assert has_object(cache, tag)

    upstream_git("tag", "-d", "leaky", cwd=bare)
    upstream_git("gc", "--prune=now", "--quiet", cwd=bare)
    assert not has_object(bare, tag)
    straight = refs_then_fetch(upstream, None, name, ("refs/heads/",), head)
    assert tag not in straight  # the reference: the upstream sends no such tag

    # ls-refs of branches only: no fill prunes the cache's tag; a clone-like fetch (no
    # haves) that follows tags is the upstream's to answer
    seen = len(fetch_outcomes(proxy, name))
    via = refs_then_fetch(upstream, proxy, name, ("refs/heads/",), head)
    [state] = repos_for(proxy.cache_dir, url).values()
    assert "refs/tags/leaky" in state["refs"] and has_object(cache, tag)
    assert fetch_outcomes(proxy, name, seen + 1)[-1] == "upstream"
    assert tag not in via and set(via) == set(straight)

    # with haves (git backfills tags itself): the cache answers, without following tags
    base = upstream_git("rev-parse", "main~2", cwd=bare)
    resp = send(upstream, proxy, "POST", f"/{name}/git-upload-pack", V2, rawhttp.v2_fetch_body(
        head, extra=("include-tag", "no-progress", f"have {base}")))
    got = objects_in(v2_pack(resp.body))
    assert fetch_outcomes(proxy, name, seen + 2)[-1] == "cache" and head in got
    assert tag not in got and not any(secret in body for _, body in got.values())

    # protocol v0, include-tag hidden behind a tab in another capability (git reads it as
    # a capability of its own): the cache does not answer it
    body = (rawhttp.pkt(f"want {head} multi_ack_detailed ofs-delta agent=git/2.39.5\t"
                        "include-tag") + b"0000" + rawhttp.pkt("done"))
    resp = send(upstream, proxy, "POST", f"/{name}/git-upload-pack", V0, body)
    assert resp.status == 200 and fetch_outcomes(proxy, name, seen + 3)[-1] == "upstream"
    assert tag not in objects_in(resp.body[resp.body.index(b"PACK"):])


def test_git_fetch_still_gets_the_tags_it_was_listed_from_the_cache(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    secret = f"tag message {uuid.uuid4().hex}".encode()
    name, bare, _, _ = tagged_repo(repos, secret)
    url = with_userinfo(upstream.url(name), "alice", "alice-pw")
    git.clone(url, tmp_path / "c")
    shown = git.run("cat-file", "-p", "refs/tags/leaky", cwd=tmp_path / "c").stdout
    assert secret.decode() in shown

    # a tag inside the fetched history, not on a tip: only tag following brings it
    inside = add_commit(bare, branch="main", files={"new.txt": b"new\n"})
    upstream_git("tag", "-a", "fresh", "-m", "fresh tag", inside, cwd=bare)
    add_commit(bare, branch="main", files={"newer.txt": b"newer\n"})
    fresh = upstream_git("rev-parse", "refs/tags/fresh", cwd=bare)
    before = len(fetch_outcomes(proxy, name))
    git.run("fetch", "origin", cwd=tmp_path / "c")  # follows tags (include-tag)
    assert git.run("rev-parse", "refs/tags/fresh", cwd=tmp_path / "c").stdout.strip() == fresh
    outcomes = fetch_outcomes(proxy, name, before + 1)[before:]
    assert outcomes and set(outcomes) == {"cache"}, outcomes

    # the cache still holds a tag alice is no longer shown: the fetch is answered without
    # following tags, and git fetches the ones it was listed by id (its tag backfill)
    upstream_git("tag", "-d", "leaky", cwd=bare)
    inside = add_commit(bare, branch="main", files={"new2.txt": b"2\n"})
    upstream_git("tag", "-a", "fresh2", "-m", "second fresh tag", inside, cwd=bare)
    add_commit(bare, branch="main", files={"newer2.txt": b"2\n"})
    ls = send(upstream, proxy, "POST", f"/{name}/git-upload-pack", V2,
              rawhttp.v2_ls_refs_body(("refs/heads/",)))
    assert ls.status == 200  # (alice's view now lacks leaky; the cache's record has it)
    fresh2 = upstream_git("rev-parse", "refs/tags/fresh2", cwd=bare)
    before = len(fetch_outcomes(proxy, name))
    git.run("fetch", "origin", cwd=tmp_path / "c")
    assert git.run("rev-parse", "refs/tags/fresh2", cwd=tmp_path / "c").stdout.strip() == fresh2
    assert fetch_outcomes(proxy, name, before + 1)[before:]


def test_shallow_and_single_branch_clones_get_the_tags_upstream_gives(
    git: GitClient, direct: GitClient, repos: Repos, upstream: UpstreamServer,
    proxy: GobletProxy, tmp_path: Path
) -> None:
    # (such clones follow tags and never backfill: stripping include-tag would lose tags)
    name, bare, _, _ = tagged_repo(repos, b"on main's parent")
    url = with_userinfo(upstream.url(name), "alice", "alice-pw")
    reference = tmp_path / "reference.git"  # a stale local copy a clone borrows from
    direct.run("clone", "--bare", "--quiet", url, str(reference))
    tip = add_commit(bare, branch="main", files={"tip.txt": b"tip\n"})
    upstream_git("tag", "-a", "tip", "-m", "on main's tip", tip, cwd=bare)
    git.clone(url, tmp_path / "warm")
    for options in (("--depth", "1"), ("--single-branch",),
                    ("--reference", str(reference), "--single-branch")):  # (sends haves)
        dest = tmp_path / "-".join(o.replace("/", "_") for o in options)
        before = len(fetch_outcomes(proxy, name))
        git.clone(url, dest, *options)
        assert fetch_outcomes(proxy, name, before + 1)[before:] == ["cache"], options
        straight = dest.with_name("direct" + dest.name)
        direct.clone(url, straight, *options)
        tags = {n for n in git.refs(dest) if n.startswith("refs/tags/")}
        assert tags == {n for n in direct.refs(straight) if n.startswith("refs/tags/")}, options
        assert "refs/tags/tip" in tags


def test_a_tag_the_cache_repo_gains_behind_the_record_is_never_followed(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    # What a fill for another credential (shown a tag this one is not) writes before its
    # record, or leaves when it dies between its ref update and its record: the cache repo
    # holds a tag that neither the record nor this credential's listing has. upload-pack
    # in the cache repo itself would add it to every tag-following answer.
    name, _, tag, head = tagged_repo(repos, b"on main's parent")
    url = with_userinfo(upstream.url(name), "alice", "alice-pw")
    git.clone(url, tmp_path / "warm")
    [cache] = repos_for(proxy.cache_dir, upstream.url(name))
    secret = f"hidden tag message {uuid.uuid4().hex}"
    upstream_git("tag", "-a", "hidden", "-m", secret, "main~2", cwd=cache)
    hidden = upstream_git("rev-parse", "refs/tags/hidden", cwd=cache)
    for options in (("--single-branch",), ("--depth", "3")):
        dest = tmp_path / options[0].strip("-")
        before = len(fetch_outcomes(proxy, name))
        git.clone(url, dest, *options)
        assert fetch_outcomes(proxy, name, before + 1)[before:] == ["cache"], options
        refs = git.refs(dest)
        assert refs.get("refs/tags/leaky") == tag, options  # the listed tag is followed
        assert "refs/tags/hidden" not in refs, options
        assert git.run("cat-file", "-e", hidden, cwd=dest, check=False).returncode != 0
    before = len(fetch_outcomes(proxy, name))
    via = refs_then_fetch(upstream, proxy, name, ("refs/heads/", "refs/tags/"), head)
    assert fetch_outcomes(proxy, name, before + 1)[before:] == ["cache"]
    assert tag in via and hidden not in via
    assert not any(secret.encode() in body for _, body in via.values())
    wait_for("the tag views to go", lambda: not [
        p for p in (proxy.cache_dir / "tmp").iterdir() if p.name.startswith("tagview")] or None)


def test_tag_following_clones_share_stored_answers_with_the_same_tags_only(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name, bare, _, _ = tagged_repo(repos, b"on main's parent")
    upstream_git("tag", "-a", "tip", "-m", "on main", "main", cwd=bare)
    tip = upstream_git("rev-parse", "refs/tags/tip", cwd=bare)
    url = with_userinfo(upstream.url(name), "alice", "alice-pw")
    git.clone(url, tmp_path / "warm")
    before = scrape(proxy)
    for i in range(3):  # (a key is stored on its second sight, a hit on its third)
        git.clone(url, tmp_path / f"d{i}", "--depth", "1")
        assert git.refs(tmp_path / f"d{i}").get("refs/tags/tip") == tip
    d = delta(before, scrape(proxy))
    assert (d["bypass"], d["produce"], d["hit"]) == (1, 1, 1), d
    upstream_git("tag", "-d", "tip", cwd=bare)  # alice is no longer listed the tag
    git.clone(url, tmp_path / "after", "--depth", "1")
    assert "refs/tags/tip" not in git.refs(tmp_path / "after")
    assert git.run("cat-file", "-e", tip, cwd=tmp_path / "after", check=False).returncode != 0


def test_strangers_following_tags_get_the_upstreams_refusal_however_they_ask(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    # alice warms the cache (her tags listed to her); no credential and bob's, who may not
    # read the repo, ask for it with tag following, with and without haves, v2 and v0
    name, bare, tag, head = tagged_repo(repos, f"tag message {uuid.uuid4().hex}".encode())
    git.clone(with_userinfo(upstream.url(name), "alice", "alice-pw"), tmp_path / "c")
    base = upstream_git("rev-parse", "main~2", cwd=bare)
    path = f"/{name}/git-upload-pack"
    bodies = {
        "v2": (UPLOAD_HEADERS, rawhttp.v2_fetch_body(head, extra=("include-tag",))),
        "v2-haves": (UPLOAD_HEADERS, rawhttp.v2_fetch_body(
            head, extra=("include-tag", f"have {base}"))),
        "v0": ({"Content-Type": "application/x-git-upload-pack-request"},
               rawhttp.pkt(f"want {head} ofs-delta include-tag=1") + b"0000"
               + rawhttp.pkt("done")),
    }
    for who, auth in STRANGERS.items():
        for how, (headers, body) in bodies.items():
            for ask in (("GET", f"/{name}/info/refs?service=git-upload-pack", None),
                        ("POST", path, rawhttp.v2_ls_refs_body(("refs/heads/", "refs/tags/")))):
                send(upstream, proxy, ask[0], ask[1], {**UPLOAD_HEADERS, **auth}, ask[2])
            via = send(upstream, proxy, "POST", path, {**headers, **auth}, body)
            straight = send(upstream, None, "POST", path, {**headers, **auth}, body)
            assert no_pack(via) and tag.encode() not in via.body, (who, how)
            assert via.status == straight.status != 200, (who, how, via.status)


def test_a_stored_tag_following_answer_is_never_replayed_to_strangers_or_the_revoked(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    # alice's identical tag-following fetches get their answer stored (bypass, produce,
    # hit); the same bytes from no credential, bob's (no access), and alice's once the
    # upstream revoked her get exactly the upstream's refusal, never the stored answer
    name, _, tag, head = tagged_repo(repos, f"tag message {uuid.uuid4().hex}".encode())
    git.clone(with_userinfo(upstream.url(name), "alice", "alice-pw"), tmp_path / "warm")
    path = f"/{name}/git-upload-pack"
    fetch = rawhttp.v2_fetch_body(head, extra=("deepen 2", "include-tag", "no-progress"))
    ls_refs = rawhttp.v2_ls_refs_body(("HEAD", "refs/heads/", "refs/tags/"))
    before = scrape(proxy)
    for _ in range(3):
        assert send(upstream, proxy, "POST", path, V2, ls_refs).status == 200
        resp = send(upstream, proxy, "POST", path, V2, fetch)
        assert resp.status == 200 and tag in objects_in(v2_pack(resp.body))
    assert delta(before, scrape(proxy))["hit"] == 1

    def refused(who: str, auth: dict[str, str]) -> None:
        send(upstream, proxy, "POST", path, {**UPLOAD_HEADERS, **auth}, ls_refs)
        via = send(upstream, proxy, "POST", path, {**UPLOAD_HEADERS, **auth}, fetch)
        straight = send(upstream, None, "POST", path, {**UPLOAD_HEADERS, **auth}, fetch)
        assert no_pack(via) and tag.encode() not in via.body, who
        assert via.status == straight.status != 200, (who, via.status)

    stored = scrape(proxy)
    for who, auth in STRANGERS.items():
        refused(who, auth)
    repos.grant(name, public=False, readers=(), writers=())  # alice revoked upstream
    refused("alice, revoked", ALICE)
    assert delta(stored, scrape(proxy))["hit"] == 0
