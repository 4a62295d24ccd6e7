"""Request classification and the repo-path safety check (the cache key is the path)."""

from __future__ import annotations

import http.client
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from goblet.protocol import routes
from goblet.protocol.errors import ProtocolError
from goblet.protocol.routes import MAX_REPO_PATH, GitTarget, Service

if TYPE_CHECKING:
    from tests.unit.conftest import GitWire

UP = "?service=git-upload-pack"
RECV = "?service=git-receive-pack"

CLASSIFY = [
    pytest.param("GET", "/org/repo.git/info/refs" + UP, GitTarget(Service.INFO_REFS,
                 "/org/repo.git"),
                 id="info-refs"),
    pytest.param("POST", "/org/repo.git/git-upload-pack", GitTarget(Service.UPLOAD_PACK,
                 "/org/repo.git"),
                 id="upload-pack"),
    pytest.param("GET", "/org/repo/info/refs" + UP, GitTarget(Service.INFO_REFS, "/org/repo"),
                 id="no-dot-git-kept-as-is"),
    pytest.param("GET", "/Org/Repo.GIT/info/refs" + UP, GitTarget(Service.INFO_REFS,
                 "/Org/Repo.GIT"),
                 id="case-kept"),
    pytest.param("GET", "/group/sub/group/repo.git/info/refs" + UP,
                 GitTarget(Service.INFO_REFS, "/group/sub/group/repo.git"), id="nested-groups"),
    pytest.param("GET", "/r/info/refs" + UP, GitTarget(Service.INFO_REFS, "/r"),
                 id="one-char-repo"),
    pytest.param("GET", "/org/repo.git/info/refs?service=git-upload-pack&x=1",
                 GitTarget(Service.INFO_REFS, "/org/repo.git"), id="extra-query-param"),
    pytest.param("GET", "/org/repo.git/info/refs?x=1&service=git-upload-pack",
                 GitTarget(Service.INFO_REFS, "/org/repo.git"), id="service-not-first"),
    pytest.param("GET", "/org/repo.git/info/refs?service=git%2Dupload%2Dpack",
                 GitTarget(Service.INFO_REFS, "/org/repo.git"), id="percent-encoded-service"),
    pytest.param("POST", "/org/repo.git/git-upload-pack?x=1",
                 GitTarget(Service.UPLOAD_PACK, "/org/repo.git"), id="post-with-query"),
    pytest.param("GET", "/~user/my_repo-1.0.git/info/refs" + UP,
                 GitTarget(Service.INFO_REFS, "/~user/my_repo-1.0.git"), id="unreserved-chars"),
    pytest.param("GET", "/org/a%20b/info/refs" + UP, GitTarget(Service.INFO_REFS, "/org/a%20b"),
                 id="encoded-space-kept-encoded"),
    pytest.param("GET", "/org/%41bc/info/refs" + UP, GitTarget(Service.INFO_REFS, "/org/%41bc"),
                 id="encoded-letter-not-decoded"),
    pytest.param("GET", "/org/a%25b/info/refs" + UP, GitTarget(Service.INFO_REFS, "/org/a%25b"),
                 id="encoded-percent"),
    pytest.param("GET", "/org/.git/info/refs" + UP, GitTarget(Service.INFO_REFS, "/org/.git"),
                 id="dot-git-segment"),
    pytest.param("GET", "/org/...git/info/refs" + UP, GitTarget(Service.INFO_REFS, "/org/...git"),
                 id="three-dots-is-a-name"),
    pytest.param("GET", "/org/..x/info/refs" + UP, GitTarget(Service.INFO_REFS, "/org/..x"),
                 id="dotdot-prefix-is-a-name"),
    pytest.param("GET", "/info/refs/info/refs" + UP, GitTarget(Service.INFO_REFS, "/info/refs"),
                 id="repo-named-info-refs"),
    pytest.param("GET", "/org/repo.git/info/refs" + RECV, GitTarget(Service.PUSH, "/org/repo.git"),
                 id="push-advertisement"),
    pytest.param("POST", "/org/repo.git/git-receive-pack", GitTarget(Service.PUSH, "/org/repo.git"),
                 id="push"),
    pytest.param("GET", "/org/repo.git/info/refs", routes.OTHER, id="dumb-http-info-refs"),
    pytest.param("GET", "/org/repo.git/info/refs?service=git-upload-archive", routes.OTHER,
                 id="other-service"),
    pytest.param("GET", "/org/repo.git/info/refs?service=", routes.OTHER, id="empty-service"),
    pytest.param("GET", "/org/repo.git/HEAD", routes.OTHER, id="dumb-http-head"),
    pytest.param("GET", "/org/repo.git/objects/pack/pack-1.pack", routes.OTHER,
                 id="dumb-http-pack"),
    pytest.param("GET", "/org/repo.git/git-upload-pack", routes.OTHER, id="get-upload-pack"),
    pytest.param("POST", "/org/repo.git/info/refs" + UP, routes.OTHER, id="post-info-refs"),
    pytest.param("HEAD", "/org/repo.git/info/refs" + UP, routes.OTHER, id="head-method"),
    pytest.param("get", "/org/repo.git/info/refs" + UP, routes.OTHER, id="lower-case-method"),
    pytest.param("PUT", "/org/repo.git/git-upload-pack", routes.OTHER, id="put-method"),
    pytest.param("POST", "/org/repo.git/git-upload-pack/", routes.OTHER, id="trailing-slash"),
    pytest.param("GET", "/", routes.OTHER, id="root"),
    pytest.param("GET", "/api/v4/projects?x=/info/refs", routes.OTHER, id="suffix-in-query"),
    pytest.param("GET", "", routes.OTHER, id="empty-path"),
    # PUSH and OTHER pass through untouched, so their paths are not judged here.
    pytest.param("POST", "/org/../x/git-receive-pack", GitTarget(Service.PUSH, "/org/../x"),
                 id="push-path-not-checked"),
]


@pytest.mark.parametrize(("method", "path", "expected"), CLASSIFY)
def test_classify(method: str, path: str, expected: GitTarget) -> None:
    assert routes.classify(method, path) == expected


@pytest.mark.parametrize(("method", "path", "expected"), CLASSIFY)
def test_classify_ignores_an_unrelated_query_parameter(
    method: str, path: str, expected: GitTarget
) -> None:
    """Adding an unrelated parameter never changes the route of a git request."""
    sep = "&" if "?" in path else "?"
    assert routes.classify(method, path + sep + "foo=bar") == expected


@pytest.mark.parametrize(("kind", "method", "suffix"), [
    pytest.param(Service.INFO_REFS, "GET", "/info/refs" + UP, id="info-refs"),
    pytest.param(Service.UPLOAD_PACK, "POST", "/git-upload-pack", id="upload-pack"),
])
def test_repo_path_is_kept_exactly(kind: Service, method: str, suffix: str) -> None:
    for repo in ("/Org/Repo.git", "/org/repo", "/org/repo.git", "/a/b/c/d.GIT", "/x%41y/z"):
        assert routes.classify(method, repo + suffix) == GitTarget(kind, repo)


# Spellings an HTTP stack might rewrite into another repo: all refused.
UNSAFE = [
    pytest.param("", "repository path is empty", id="empty"),
    pytest.param("/", "repository path is empty", id="root"),
    pytest.param("org/repo", "repository path is empty", id="relative"),
    pytest.param("/org/../other", "'..' segment", id="dotdot-segment"),
    pytest.param("/..", "'..' segment", id="dotdot-only"),
    pytest.param("/org/..", "'..' segment", id="dotdot-last"),
    pytest.param("/org/./repo", "'.' or '..' segment", id="dot-segment"),
    pytest.param("/.", "'.' or '..' segment", id="dot-only"),
    pytest.param("//org/repo", "empty, '.' or '..' segment", id="leading-double-slash"),
    pytest.param("/org//repo", "empty, '.' or '..' segment", id="inner-double-slash"),
    pytest.param("/org/repo/", "empty, '.' or '..' segment", id="trailing-slash"),
    pytest.param("/org/%2e%2e/x", "percent-encoded dot", id="pct-2e2e"),
    pytest.param("/org/%2E%2E/x", "percent-encoded dot", id="pct-2E2E"),
    pytest.param("/org/.%2e/x", "percent-encoded dot", id="pct-dot-mixed"),
    pytest.param("/org/%2e/x", "percent-encoded dot", id="pct-single-dot"),
    pytest.param("/org/a%2ebc", "percent-encoded dot", id="pct-dot-inside-name"),
    pytest.param("/org%2Frepo", "percent-encoded dot, slash", id="pct-2F"),
    pytest.param("/org%2frepo", "percent-encoded dot, slash", id="pct-2f"),
    pytest.param("/org%5crepo", "percent-encoded", id="pct-5c"),
    pytest.param("/org%5Crepo", "percent-encoded", id="pct-5C"),
    pytest.param("/org/repo%00", "percent-encoded", id="pct-00"),
    pytest.param("/org/repo%0a", "percent-encoded", id="pct-0a"),
    pytest.param("/org/repo%0D", "percent-encoded", id="pct-0D"),
    pytest.param("/org/repo%1f", "percent-encoded", id="pct-1f"),
    pytest.param("/org/repo%7f", "percent-encoded", id="pct-7f"),
    pytest.param("/org/repo%7F", "percent-encoded", id="pct-7F"),
    pytest.param("/org/repo%", "percent-encoded", id="lone-percent"),
    pytest.param("/org/repo%4", "percent-encoded", id="percent-one-hex"),
    pytest.param("/org/repo%zz", "percent-encoded", id="percent-non-hex"),
    pytest.param("/org/repo%%41", "percent-encoded", id="double-percent"),
    pytest.param("/org/repo%u002e", "percent-encoded", id="iis-u-escape"),
    pytest.param("/org\\..\\repo", "invalid character", id="backslash"),
    pytest.param("/org/repo\x00", "invalid character", id="nul"),
    pytest.param("/org/re\npo", "invalid character", id="lf"),
    pytest.param("/org/re\rpo", "invalid character", id="cr"),
    pytest.param("/org/re\tpo", "invalid character", id="tab"),
    pytest.param("/org/re\x7fpo", "invalid character", id="del"),
    pytest.param("/org/re\x1bpo", "invalid character", id="esc"),
    pytest.param("/org/re po", "invalid character", id="space"),
    pytest.param("/org/re#po", "invalid character", id="hash"),
    pytest.param("/org/re\"po", "invalid character", id="quote"),
    pytest.param("/org/re<po>", "invalid character", id="angle-brackets"),
    pytest.param("/org/caf\u00e9", "invalid character", id="non-ascii"),
    pytest.param("/org/\uff0e\uff0e/x", "invalid character", id="fullwidth-dots"),
    pytest.param("/org/\u0130", "invalid character", id="dotted-capital-i"),
    pytest.param("/" + "a" * MAX_REPO_PATH, "longer than 1024", id="1025-chars"),
    pytest.param("/" + "a/" * 1000 + "x", "longer than 1024", id="many-segments"),
]


@pytest.mark.parametrize(("repo", "message"), UNSAFE)
def test_check_repo_path_rejects(repo: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as err:
        routes.check_repo_path(repo)
    assert err.value.culprit == "client"


@pytest.mark.parametrize(("repo", "message"), UNSAFE)
@pytest.mark.parametrize(("method", "suffix"), [
    pytest.param("GET", "/info/refs" + UP, id="info-refs"),
    pytest.param("POST", "/git-upload-pack", id="upload-pack"),
])
def test_classify_rejects_unsafe_repo_paths(repo: str, message: str, method: str,
                                            suffix: str) -> None:
    with pytest.raises(ProtocolError):
        routes.classify(method, repo + suffix)


@pytest.mark.parametrize("length", [2, 1023, MAX_REPO_PATH])
def test_longest_repo_path_accepted(length: int) -> None:
    repo = "/" + "a" * (length - 1)
    assert len(repo) == length
    assert routes.check_repo_path(repo) == repo


def test_error_message_is_short_and_printable() -> None:
    with pytest.raises(ProtocolError) as err:
        routes.check_repo_path("/org/\x1b[31m" + "x" * 200)
    assert err.value.reason.isprintable()
    assert len(err.value.reason) < 120


# Regression: check_repo_path used to build its message with excerpt(repo.encode()), which
# raised UnicodeEncodeError on the surrogates mitmproxy's Request.path holds for non-UTF-8
# bytes (it decodes the target with surrogateescape).
@pytest.mark.parametrize("path", [
    pytest.param("/org/\udcffrepo/git-upload-pack", id="upload-pack"),
    pytest.param("/org/r\udce9/info/refs" + UP, id="info-refs"),
])
def test_non_utf8_path_from_mitmproxy_is_a_protocol_error(path: str) -> None:
    method = "GET" if "/info/refs" in path else "POST"
    with pytest.raises(ProtocolError, match="invalid character") as err:
        routes.classify(method, path)
    assert err.value.reason.isprintable()


# -- the answers' Content-Types --------------------------------------------------------


def answer_type(wire: GitWire, method: str, path: str, body: bytes | None = None) -> str:
    """The Content-Type real ``git http-backend`` answers ``method path`` with."""
    parts = urlsplit(wire.base_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={
            "Git-Protocol": "version=2", "Content-Type": "application/x-git-upload-pack-request"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        return resp.getheader("Content-Type", "")
    finally:
        conn.close()


def test_the_answer_types_are_the_ones_git_sends(git_wire: GitWire) -> None:
    assert answer_type(git_wire, "GET", "/plain.git/info/refs" + UP) == routes.ADVERTISEMENT_TYPE
    ls_refs = b"0014command=ls-refs\n0000"
    assert answer_type(git_wire, "POST", "/plain.git/git-upload-pack", ls_refs) == \
        routes.RESULT_TYPE
