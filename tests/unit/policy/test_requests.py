"""Which requests are git requests goblet handles, and which are refused unread."""

from __future__ import annotations

import pytest
from goblet.policy.flows import Kind
from goblet.policy.requests import (
    Classified,
    RequestFacts,
    classify,
    host_header_matches,
    intercepts,
    prefix_target,
)

HOSTS = frozenset({("git.example", 443), ("git.internal", 8443)})
INFO = "/org/r.git/info/refs?service=git-upload-pack"


def facts(path: str = INFO, method: str = "GET", **kw: object) -> RequestFacts:
    base: dict[str, object] = {"method": method, "scheme": "https", "host": "git.example",
                               "port": 443, "path": path, "host_header": "git.example",
                               "tunnel": ("git.example", 443), "sni": "git.example"}
    return RequestFacts(**(base | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(("f", "kind"), [
    (facts(), Kind.INFO_REFS),
    (facts("/org/r.git/git-upload-pack", "POST"), Kind.UPLOAD_PACK),
    (facts("/org/r.git/git-receive-pack", "POST"), Kind.PUSH),
    (facts("/org/r.git/info/refs?service=git-receive-pack"), Kind.PUSH),
])
def test_git_routes(f: RequestFacts, kind: Kind) -> None:
    got = classify(f, HOSTS)
    assert got is not None and got.kind is kind and got.repo_path == "/org/r.git"


@pytest.mark.parametrize("f", [
    facts(scheme="http"), facts(host="other.example", host_header="other.example"),
    facts(port=8443, host_header="git.example:8443"),
    facts(host_header="evil.example"),  # Host disagrees: passed on, never cached
])
def test_everything_else_is_not_ours(f: RequestFacts) -> None:
    assert classify(f, HOSTS) is None


@pytest.mark.parametrize(("f", "why"), [
    (facts("/org/../r.git/info/refs?service=git-upload-pack"), "bad repository path"),
    (facts(authority="other.example"), "does not match the CONNECT host"),
    (facts(authority="git.example:8443"), "does not match the CONNECT host"),
    (facts(authority="x/y"), "malformed request target authority"),
    (facts(tunnel=("other.example", 443)), "does not match the CONNECT host"),
    (facts(sni="other.example"), "TLS server name"),
    (facts(headers=((b"authorization", b"Basic a\r\n b"),)), "folded"),
    (facts(headers=((b"x-a\nb", b"v"),)), "folded"),
    (facts(headers=((b"cookie", b"a\0b"),)), "folded"),
])
def test_refused_unread_with_a_reason_that_repeats_no_header(f: RequestFacts, why: str) -> None:
    got = classify(f, HOSTS)
    assert got is not None and got.kind is Kind.INVALID and why in got.problem
    assert "Basic" not in got.problem


@pytest.mark.parametrize("f", [
    facts(authority="git.example"), facts(authority="GIT.example:443"),
    facts(sni="GIT.EXAMPLE."), facts(sni=None), facts(tunnel=None),
])
def test_consistent_spellings_are_accepted(f: RequestFacts) -> None:
    assert classify(f, HOSTS) == Classified(Kind.INFO_REFS, "/org/r.git")


@pytest.mark.parametrize("f", [
    facts("/org/r.git/issues"),
    facts(INFO + "&access_token=x"), facts("/org/r.git/git-upload-pack?x=1", "POST"),
])
def test_other_requests_to_goblet_hosts_pass_through_and_are_logged(f: RequestFacts) -> None:
    got = classify(f, HOSTS)
    assert got is not None and got.kind is Kind.OTHER


def test_pushes_pass_through_whatever_they_look_like() -> None:
    got = classify(facts("/org/r.git/git-receive-pack", "POST", sni="other.example",
                         headers=((b"a", b"b\r\nc"),)), HOSTS)
    assert got == Classified(Kind.PUSH, "/org/r.git")


@pytest.mark.parametrize(("header", "host", "port", "ok"), [
    ("git.example", "git.example", 443, True), ("git.example:443", "git.example", 443, True),
    ("GIT.example", "git.example", 443, True), ("git.example", "git.example", 8443, False),
    ("git.example:8443", "git.example", 8443, True), ("[::1]", "::1", 443, True),
    ("[::1]:8443", "::1", 8443, True), ("[::1]", "::1", 8443, False), (None, "h", 443, False),
])
def test_host_header(header: str | None, host: str, port: int, ok: bool) -> None:
    assert host_header_matches(header, host, port) is ok


def test_interception_by_sni_or_address() -> None:
    assert intercepts([("GIT.example", 443)], HOSTS)
    assert intercepts([("unknown", 443), ("git.internal", 8443)], HOSTS)
    assert not intercepts([("git.example", 8443)], HOSTS)
    assert not intercepts([], HOSTS)


@pytest.mark.parametrize(("path", "want"), [
    ("/git.example/org/r.git/info/refs", ("git.example", 443, "/org/r.git/info/refs")),
    ("/git.internal:8443/r.git/git-upload-pack", ("git.internal", 8443, "/r.git/git-upload-pack")),
    ("/other.example/r.git/info/refs", "this host is not served here (goblet_hosts)"),
    ("/git.example", "path-prefix URLs look like /<host>/<repo>/…"),
    ("/bad host/x", "path-prefix URLs look like /<host>/<repo>/…"),
])
def test_prefix_targets_only_name_goblet_hosts(path: str, want: object) -> None:
    assert prefix_target(path, HOSTS) == want
