"""Tests of the upstream server's GitHub-like authentication and authorization."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.support.repos import git, list_refs
from tests.support.upstream import UpstreamServer
from tests.unit.support.helpers import (
    CONFIG,
    clone,
    creds,
    run_git,
    statuses,
)


def test_anonymous_clone_of_private_repo_is_401(upstream: UpstreamServer, home: Path) -> None:
    result = clone(upstream, home, "private.git", home / "c")
    assert result.returncode != 0
    assert statuses(upstream.stats()) == [401]


def test_unknown_repo_anonymous_is_401(upstream: UpstreamServer, home: Path) -> None:
    result = clone(upstream, home, "nope.git", home / "c")
    assert result.returncode != 0
    assert statuses(upstream.stats()) == [401]


def test_alice_clones_private_with_basic_password(upstream: UpstreamServer, home: Path) -> None:
    result = clone(upstream, home, "private.git", home / "c", *creds("alice", "alice-pw"))
    assert result.returncode == 0, result.stderr
    stats = upstream.stats()
    assert statuses(stats)[0] == 401  # git only sends credentials after a challenge
    assert set(statuses(stats)[1:]) == {200}
    assert {entry["user"] for entry in stats["requests"][1:]} == {"alice"}


def test_token_as_basic_password(upstream: UpstreamServer, home: Path) -> None:
    result = clone(upstream, home, "private.git", home / "c", *creds("x-access-token", "tok-alice"))
    assert result.returncode == 0, result.stderr
    assert upstream.stats()["requests"][-1]["user"] == "alice"


def test_bearer_token_via_extra_header(upstream: UpstreamServer, home: Path) -> None:
    header = ["-c", "http.extraHeader=Authorization: Bearer tok-alice"]
    result = clone(upstream, home, "private.git", home / "c", *header)
    assert result.returncode == 0, result.stderr
    stats = upstream.stats()
    assert set(statuses(stats)) == {200}
    assert {entry["user"] for entry in stats["requests"]} == {"alice"}


def test_unknown_bearer_token_is_401_even_on_public(upstream: UpstreamServer, home: Path) -> None:
    header = ["-c", "http.extraHeader=Authorization: Bearer tok-nobody"]
    result = clone(upstream, home, "public.git", home / "c", *header)
    assert result.returncode != 0
    assert set(statuses(upstream.stats())) == {401}


def test_bob_gets_404_on_private(upstream: UpstreamServer, home: Path) -> None:
    result = clone(upstream, home, "private.git", home / "c", *creds("bob", "bob-pw"))
    assert result.returncode != 0
    assert "not found" in result.stderr.lower()
    stats = upstream.stats()
    assert statuses(stats) == [401, 404]
    assert stats["requests"][-1]["user"] == "bob"


def test_wrong_password_is_401(upstream: UpstreamServer, home: Path) -> None:
    result = clone(upstream, home, "private.git", home / "c", *creds("alice", "wrong"))
    assert result.returncode != 0
    assert "Authentication failed" in result.stderr
    assert set(statuses(upstream.stats())) == {401}


# -- pushing -------------------------------------------------------------------------------------


def _commit_file(work: Path, name: str, content: bytes) -> str:
    (work / name).write_bytes(content)
    git("add", name, cwd=work)
    git("commit", "-q", "-m", f"add {name}", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def test_push_by_alice_works_and_by_bob_is_403(upstream: UpstreamServer, home: Path) -> None:
    work = home / "c"
    assert clone(upstream, home, "scratch.git", work).returncode == 0
    oid = _commit_file(work, "alice.txt", b"hello\n")
    push = ("push", "origin", "HEAD:refs/heads/topic-alice")
    result = run_git(upstream, home, *creds("alice", "alice-pw"), *push, cwd=work)
    assert result.returncode == 0, result.stderr
    assert list_refs(upstream.root / "scratch.git")["refs/heads/topic-alice"] == oid
    stats = upstream.stats()
    assert stats["receive_pack"] >= 1
    assert [e for e in stats["requests"] if e["kind"] == "receive_pack"][-1]["user"] == "alice"

    upstream.reset_stats()
    push = ("push", "origin", "HEAD:refs/heads/topic-bob")
    result = run_git(upstream, home, *creds("bob", "bob-pw"), *push, cwd=work)
    assert result.returncode != 0
    assert "403" in result.stderr
    assert statuses(upstream.stats()) == [401, 403]
    assert "refs/heads/topic-bob" not in list_refs(upstream.root / "scratch.git")


def test_anonymous_push_is_401(upstream: UpstreamServer, home: Path) -> None:
    work = home / "c"
    assert clone(upstream, home, "scratch.git", work).returncode == 0
    _commit_file(work, "anon.txt", b"anon\n")
    result = run_git(upstream, home, "push", "origin", "HEAD:refs/heads/anon", cwd=work)
    assert result.returncode != 0
    assert statuses(upstream.stats())[-1] == 401


def test_large_push_uses_chunked_body(upstream: UpstreamServer, home: Path) -> None:
    work = home / "c"
    assert clone(upstream, home, "scratch.git", work).returncode == 0
    oid = _commit_file(work, "big.bin", random.Random(7).randbytes(3 << 20))
    push = ("push", "origin", "HEAD:refs/heads/topic-big")
    result = run_git(upstream, home, *creds("alice", "alice-pw"), *push, cwd=work)
    assert result.returncode == 0, result.stderr
    assert list_refs(upstream.root / "scratch.git")["refs/heads/topic-big"] == oid
    # A body above http.postBuffer is preceded by a "0000" probe POST, then sent chunked.
    receive = [e for e in upstream.stats()["requests"] if e["kind"] == "receive_pack"]
    assert [e["status"] for e in receive] == [200, 200]


# -- config changes ------------------------------------------------------------------------------


def test_set_config_revokes_grant(upstream: UpstreamServer, home: Path) -> None:
    alice = creds("alice", "alice-pw")
    assert clone(upstream, home, "private.git", home / "c1", *alice).returncode == 0
    config = json.loads(json.dumps(CONFIG))
    config["repos"]["private.git"]["readers"] = []
    upstream.set_config(config)
    upstream.reset_stats()
    result = clone(upstream, home, "private.git", home / "c2", *alice)
    assert result.returncode != 0
    assert statuses(upstream.stats())[-1] == 404


def test_set_config_changes_password(upstream: UpstreamServer, home: Path) -> None:
    config = json.loads(json.dumps(CONFIG))
    config["users"]["alice"]["password"] = "new-pw"
    upstream.set_config(config)
    assert clone(upstream, home, "private.git", home / "c1", *creds("alice", "alice-pw")).returncode
    assert (
        clone(upstream, home, "private.git", home / "c2", *creds("alice", "new-pw")).returncode == 0
    )
