"""Push webhooks: signatures, payloads, and what an answer changes (nothing, unless
signed and a push)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Iterable
from pathlib import Path

import pytest
from goblet.observe import webhooks
from goblet.observe.metrics import Metrics
from goblet.observe.webhooks import Webhooks, github_signature_ok, gitlab_token_ok, push_urls

SECRET = b"s3cret"
URL = "https://git.example/org/repo.git"
KEYS = ("https://git.example/org/repo", "https://git.example/org/repo.git")
HOSTS = frozenset({("git.example", 443)})


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_github_signature() -> None:
    body = b'{"a": 1}'
    assert github_signature_ok(SECRET, body, sign(body))
    assert github_signature_ok(SECRET, body, sign(body).upper().replace("SHA256=", "sha256="))
    for bad in (None, "", sign(body, b"other"), sign(body + b" "), sign(body)[:-1],
                "sha1=" + sign(body)[7:], sign(body)[7:]):
        assert not github_signature_ok(SECRET, body, bad), bad
    assert not github_signature_ok(b"", body, sign(body, b""))  # no secret: nothing passes


def test_gitlab_token() -> None:
    assert gitlab_token_ok(SECRET, "s3cret")
    for bad in (None, "", "s3cre", "s3cret ", "S3CRET"):
        assert not gitlab_token_ok(SECRET, bad), bad
    assert not gitlab_token_ok(b"", "")


@pytest.mark.parametrize(("payload", "forge", "expected"), [
    ({"repository": {"clone_url": URL, "html_url": "https://git.example/org/repo"}},
     "github", KEYS),
    ({"project": {"git_http_url": URL, "web_url": "https://git.example/org/repo"}},
     "gitlab", KEYS),
    ({"repository": {"git_http_url": "https://Git.Example:443/org/repo.git"}}, "gitlab", KEYS),
    ({"repository": {"clone_url": "https://git.example:8443/r/"}}, "github",
     ("https://git.example:8443/r", "https://git.example:8443/r.git")),
    ({"repository": {"clone_url": "https://git.example/Org/Repo.git"}}, "github",
     ("https://git.example/Org/Repo", "https://git.example/Org/Repo.git", *KEYS)),
    ({"repository": {"clone_url": "ssh://git@git.example/r.git"}}, "github", ()),
    ({"repository": {"clone_url": "https://git.example:99999/r"}}, "github", ()),
    ({"repository": {"clone_url": 42}}, "github", ()),
    ({"repository": "x"}, "github", ()),
    ([URL], "github", ()),
    ({"repository": {"clone_url": "https://h/" + "x" * 2000}}, "github", ()),
])
def test_push_urls(payload: object, forge: str, expected: tuple[str, ...]) -> None:
    assert push_urls(payload, forge) == expected


class Marks:
    def __init__(self) -> None:
        self.marked: list[str] = []

    def __call__(self, urls: Iterable[str]) -> int:
        self.marked += list(urls)
        return len(self.marked)


def hooks(tmp_path: Path, secret: bytes | None = SECRET) -> tuple[Webhooks, Marks, Metrics]:
    path = tmp_path / "secret"
    if secret is not None:
        path.write_bytes(secret + b"\n")
    marks, metrics = Marks(), Metrics()
    return Webhooks(lambda: path, marks, metrics, lambda: HOSTS), marks, metrics


def call(h: Webhooks, path: str, headers: dict[str, str], body: bytes | None) -> tuple[int, bytes]:
    got = asyncio.run(h.answer(path, headers, body))
    return got.status, got.body


PUSH = json.dumps({"repository": {"clone_url": URL}}).encode()


def test_a_signed_github_push_marks_the_repo_stale(tmp_path: Path) -> None:
    h, marks, metrics = hooks(tmp_path)
    headers = {"x-github-event": "push", "x-hub-signature-256": sign(PUSH)}
    assert call(h, "/webhooks/github", headers, PUSH) == (200, b"accepted\n")
    assert marks.marked == list(KEYS)
    assert metrics.webhooks.labels("accepted")._value.get() == 1


def test_a_gitlab_push_with_the_token_marks_the_repo_stale(tmp_path: Path) -> None:
    h, marks, _ = hooks(tmp_path)
    body = json.dumps({"project": {"git_http_url": URL}}).encode()
    for event in ("Push Hook", "Tag Push Hook"):
        headers = {"x-gitlab-event": event, "x-gitlab-token": "s3cret"}
        assert call(h, "/webhooks/gitlab", headers, body)[0] == 200
    assert marks.marked == list(KEYS) * 2


@pytest.mark.parametrize(("path", "headers", "body", "status"), [
    ("/webhooks/github", {"x-github-event": "push"}, PUSH, 401),
    ("/webhooks/github", {"x-github-event": "push", "x-hub-signature-256": sign(PUSH, b"x")},
     PUSH, 401),
    ("/webhooks/github", {"x-github-event": "push", "x-gitlab-token": "s3cret"}, PUSH, 401),
    ("/webhooks/gitlab", {"x-gitlab-event": "Push Hook", "x-hub-signature-256": sign(PUSH)},
     PUSH, 401),
    ("/webhooks/github", {"x-github-event": "push", "x-hub-signature-256": sign(b"")}, None,
     413),
    ("/webhooks/github", {"x-github-event": "push", "x-hub-signature-256": sign(b"[1")}, b"[1",
     400),
    ("/webhooks/github", {"x-github-event": "push", "x-hub-signature-256": sign(b"{}")}, b"{}",
     400),
    ("/webhooks/github", {"x-github-event": "ping", "x-hub-signature-256": sign(PUSH)}, PUSH,
     200),
    ("/webhooks/bitbucket", {}, PUSH, 404),
    ("/metrics", {}, PUSH, 404),
])
def test_nothing_changes_unless_signed_and_a_push(tmp_path: Path, path: str,
                                                  headers: dict[str, str], body: bytes | None,
                                                  status: int) -> None:
    h, marks, _ = hooks(tmp_path)
    assert call(h, path, headers, body)[0] == status
    assert marks.marked == []


@pytest.mark.parametrize("secret", [None, b"", b"  \n"])
def test_without_a_usable_secret_every_webhook_is_refused(tmp_path: Path,
                                                          secret: bytes | None) -> None:
    h, marks, _ = hooks(tmp_path, secret)
    headers = {"x-github-event": "push", "x-hub-signature-256": sign(PUSH, b"")}
    assert call(h, "/webhooks/github", headers, PUSH)[0] == 503
    assert call(h, "/webhooks/gitlab", {"x-gitlab-event": "Push Hook", "x-gitlab-token": ""},
                PUSH)[0] == 503
    assert marks.marked == []


def test_webhooks_off_without_a_secret_file() -> None:
    h = Webhooks(lambda: None, Marks(), Metrics(), lambda: HOSTS)
    assert call(h, "/webhooks/github", {}, PUSH)[0] == 404
    assert webhooks.MAX_BODY >= 1024 * 1024


def test_only_repos_on_goblet_hosts_are_marked(tmp_path: Path) -> None:
    """A signed push for a repo on a host goblet does not cache is answered and ignored:
    nothing of it is in the cache, so nothing is marked."""
    h, marks, metrics = hooks(tmp_path)
    body = json.dumps({"repository": {"clone_url": "https://elsewhere.example/org/repo.git",
                                      "html_url": "https://git.example:8443/org/repo"}}).encode()
    headers = {"x-github-event": "push", "x-hub-signature-256": sign(body)}
    assert call(h, "/webhooks/github", headers, body) == (
        200, b"ignored: not a repository on goblet_hosts\n")
    assert marks.marked == [] and metrics.webhooks.labels("ignored")._value.get() == 1
    assert push_urls(json.loads(body), "github", HOSTS) == ()
    assert push_urls(json.loads(body), "github", HOSTS | {("git.example", 8443)}) == (
        "https://git.example:8443/org/repo", "https://git.example:8443/org/repo.git")


WELL_FORMED = "sha256=" + "ab" * 32  # the shape of a signature; the body decides the rest


@pytest.mark.parametrize(("path", "headers", "status"), [
    ("/webhooks/github", {"x-github-event": "push", "x-hub-signature-256": WELL_FORMED}, None),
    ("/webhooks/github", {"x-github-event": "ping",
                          "x-hub-signature-256": " " + WELL_FORMED.upper().replace("SHA", "sha")},
     None),
    ("/webhooks/gitlab", {"x-gitlab-token": "s3cret"}, None),
    ("/webhooks/gitlab", {"x-gitlab-event": "Push Hook", "x-gitlab-token": "s3cret"}, None),
    ("/metrics", {}, None),  # not a webhook's: ``answer`` says 404
    ("/webhooks/github", {"x-hub-signature-256": WELL_FORMED}, 401),  # no event
    ("/webhooks/github", {"x-github-event": "", "x-hub-signature-256": WELL_FORMED}, 401),
    ("/webhooks/github", {"x-github-event": "push"}, 401),
    ("/webhooks/github", {"x-github-event": "push", "x-hub-signature-256": ""}, 401),
    ("/webhooks/github", {"x-github-event": "push", "x-hub-signature-256": WELL_FORMED[:-1]},
     401),
    ("/webhooks/github", {"x-github-event": "push", "x-hub-signature-256": WELL_FORMED + "0"},
     401),
    ("/webhooks/github", {"x-github-event": "push",
                          "x-hub-signature-256": "sha256=" + "zz" * 32}, 401),
    ("/webhooks/github", {"x-github-event": "push", "x-hub-signature-256": "sha1=" + "ab" * 20},
     401),
    ("/webhooks/github", {"x-github-event": "push", "x-hub-signature-256": "ab" * 32}, 401),
    ("/webhooks/gitlab", {"x-gitlab-event": "Push Hook"}, 401),
    ("/webhooks/gitlab", {"x-gitlab-event": "Push Hook", "x-gitlab-token": "S3CRET"}, 401),
    ("/webhooks/gitlab?x=1", {"x-gitlab-event": "Push Hook", "x-gitlab-token": ""}, 401),
])
def test_the_head_alone_refuses_what_cannot_be_signed(
        tmp_path: Path, path: str, headers: dict[str, str], status: int | None) -> None:
    """``screen`` answers before any body is read; whatever it refuses, ``answer``
    refuses the same way with any body; a refusal counts once, like any other."""
    h, marks, metrics = hooks(tmp_path)
    early = asyncio.run(h.screen(path, headers))
    assert (early and early.status) == status
    if status is not None:
        assert early is not None and early.body == b"bad or missing signature\n"
        assert metrics.webhooks.labels("refused")._value.get() == 1
        assert call(h, path, headers, PUSH)[0] == status
        assert call(h, path, headers, None)[0] == status  # 401 before 413
    assert marks.marked == []


@pytest.mark.parametrize("secret", [None, b""])
def test_the_head_alone_refuses_every_webhook_without_a_secret(tmp_path: Path,
                                                               secret: bytes | None) -> None:
    h, _, _ = hooks(tmp_path, secret)
    headers = {"x-github-event": "push", "x-hub-signature-256": sign(PUSH, b"")}
    early = asyncio.run(h.screen("/webhooks/github", headers))
    assert early is not None and early.status == 503
    assert asyncio.run(Webhooks(lambda: None, Marks(), Metrics(), lambda: HOSTS)
                       .screen("/webhooks/github", headers)) is None  # webhooks off: 404 later
