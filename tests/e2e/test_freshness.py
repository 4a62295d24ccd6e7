"""Freshness the operator and the client choose, through a real mitmdump.

With ``goblet_refs_ttl=60s``: a second clone within the TTL by a credential
with a fresh grant makes no upstream request at all and is told how old its
refs are; a credential without a grant still gets the upstream's verdict;
``goblet-max-age=0`` (``git clone --server-option``, ``git fetch -o``) makes a
request strict again; a signed push webhook (GitHub or GitLab style) makes
the next clone see the new commit, and a bad or unsigned one changes nothing;
the webhook port answers what it cannot parse with a 400 and no traceback.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import select
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Repos, count
from tests.support.attack import post_upload
from tests.support.cachedir import settle
from tests.support.gitclient import GitClient
from tests.support.net import free_port, http_get
from tests.support.proxy import GobletProxy
from tests.support.rawhttp import pkt, v2_ls_refs_body
from tests.support.repos import add_commit
from tests.support.upstream_client import UpstreamServer

SECRET = "webhook-secret-for-tests"
ALICE = ("http.extraHeader=Authorization: Bearer tok-alice",)
BOB = ("http.extraHeader=Authorization: Bearer tok-bob",)
KINDS = ("info_refs", "ls_refs", "fetch", "upload_pack_v0")


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer, confdir: Path,
          metrics_port: int) -> Iterator[GobletProxy]:
    """The conftest proxy with a refs TTL, a metrics port and a webhook secret."""
    work = tmp_path_factory.mktemp("proxy")
    secret = work / "webhook-secret"
    secret.write_text(SECRET + "\n")
    px = GobletProxy(
        work, hosts=[upstream.host], upstream_ca=upstream.cert_path, confdir=confdir,
        sets={"goblet_upstream_timeout": "5", "goblet_refs_ttl": "60s",
              "goblet_metrics_port": str(metrics_port),
              "goblet_webhook_secret_file": str(secret)},
    )
    with px:
        yield px


def upstream_requests(upstream: UpstreamServer, name: str) -> dict[str, int]:
    stats = upstream.stats()
    return {kind: count(stats, kind, name) for kind in KINDS}


def warm(git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, dest: Path,
         config: tuple[str, ...] = (), **create: Any) -> tuple[str, str]:
    """A new repo (``create`` as for ``Repos.create``) cloned once through goblet into
    ``dest`` (filling the cache), the cache settled; its name and URL."""
    name = repos.create(**create)
    url = upstream.url(name)
    git.clone(url, dest, config=config)
    settle(proxy.cache_dir)
    return name, url


def head(git: GitClient, clone: Path, ref: str = "HEAD") -> str:
    return git.run("rev-parse", ref, cwd=clone).stdout.strip()


def test_a_clone_within_the_ttl_makes_no_upstream_request(
        git: GitClient, direct: GitClient, repos: Repos, upstream: UpstreamServer,
        proxy: GobletProxy, tmp_path: Path) -> None:
    name, url = warm(git, repos, upstream, proxy, tmp_path / "cold")
    upstream.reset_stats()

    res = git.clone(url, tmp_path / "warm")
    assert upstream_requests(upstream, name) == dict.fromkeys(KINDS, 0)
    assert "remote: goblet: refs from cache, " in res.stderr, res.stderr
    direct.clone(url, tmp_path / "direct")
    assert git.refs(tmp_path / "warm") == direct.refs(tmp_path / "direct")
    assert head(git, tmp_path / "warm") == head(direct, tmp_path / "direct")
    git.fsck(tmp_path / "warm")


def test_only_a_credential_with_a_fresh_grant_gets_cached_refs(
        git: GitClient, direct: GitClient, repos: Repos, upstream: UpstreamServer,
        proxy: GobletProxy, tmp_path: Path) -> None:
    name, url = warm(git, repos, upstream, proxy, tmp_path / "alice-cold", ALICE,
                     public=False, readers=("alice",))
    upstream.reset_stats()
    git.clone(url, tmp_path / "alice-warm", config=ALICE)
    assert upstream_requests(upstream, name) == dict.fromkeys(KINDS, 0)

    for config in (BOB, ()):  # no grant within the TTL: the upstream decides, and refuses
        upstream.reset_stats()
        via = git.clone(url, tmp_path / f"via-{len(config)}", config=config, check=False)
        ref = direct.clone(url, tmp_path / f"ref-{len(config)}", config=config, check=False)
        assert via.returncode != 0 and ref.returncode != 0
        assert upstream_requests(upstream, name)["info_refs"] >= 1
        assert not (tmp_path / f"via-{len(config)}").exists() or not any(
            (tmp_path / f"via-{len(config)}").rglob("*.pack"))

    repos.grant(name, public=False, readers=())  # alice loses access upstream
    upstream.reset_stats()
    assert git.clone(url, tmp_path / "alice-fresh", config=ALICE).returncode == 0  # TTL holds
    assert upstream_requests(upstream, name)["info_refs"] == 0


def test_goblet_max_age_zero_is_strict_again(
        git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy,
        tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    name, url = warm(git, repos, upstream, proxy, clone)

    upstream.reset_stats()
    res = git.clone(url, tmp_path / "strict", "--server-option=goblet-max-age=0")
    assert upstream_requests(upstream, name)["ls_refs"] == 1
    assert "goblet: refs from cache" not in res.stderr

    new = add_commit(repos.path(name), branch="main", message="after the warm clone")
    git.run("fetch", "origin", cwd=clone)  # within the TTL: the cached refs, no new commit
    assert head(git, clone, "origin/main") != new
    upstream.reset_stats()
    git.run("fetch", "-o", "goblet-max-age=0", "origin", cwd=clone)
    assert head(git, clone, "origin/main") == new
    assert upstream_requests(upstream, name)["ls_refs"] >= 1  # the client's (and the fill's)


def test_a_malformed_goblet_option_gets_a_git_error(
        git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy,
        tmp_path: Path) -> None:
    _, url = warm(git, repos, upstream, proxy, tmp_path / "cold")
    res = git.clone(url, tmp_path / "bad", "--server-option=goblet-max-age=soon", check=False)
    assert res.returncode != 0
    assert "goblet-max-age takes whole seconds" in res.stderr, res.stderr
    assert "Traceback" not in proxy.log_text()


def test_unknown_server_options_reach_the_upstream(
        git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy,
        tmp_path: Path) -> None:
    name, url = warm(git, repos, upstream, proxy, tmp_path / "cold")
    upstream.reset_stats()
    git.clone(url, tmp_path / "opt", "--server-option=ci-job=42")
    assert upstream_requests(upstream, name)["ls_refs"] == 1


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body,
                     headers={"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def github(url: str) -> bytes:
    return json.dumps({"ref": "refs/heads/main",
                       "repository": {"clone_url": url, "html_url": url.removesuffix(".git")}
                       }).encode()


def gitlab(url: str) -> bytes:
    return json.dumps({"object_kind": "push", "project": {
        "git_http_url": url, "web_url": url.removesuffix(".git")}}).encode()


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("forge", ["github", "gitlab"])
def test_a_signed_push_webhook_makes_the_next_clone_see_the_push(
        forge: str, git: GitClient, repos: Repos, upstream: UpstreamServer,
        proxy: GobletProxy, metrics_port: int, tmp_path: Path) -> None:
    name, url = warm(git, repos, upstream, proxy, tmp_path / "cold")
    new = add_commit(repos.path(name), branch="main", message="pushed")
    git.clone(url, tmp_path / "stale")
    assert head(git, tmp_path / "stale") != new  # within the TTL: the cached refs

    if forge == "github":
        body = github(url)
        bad = [{"X-GitHub-Event": "push"},
               {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(body, "wrong")},
               {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(body + b" ")}]
        good = {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(body)}
    else:
        body = gitlab(url)
        bad = [{"X-Gitlab-Event": "Push Hook"},
               {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "wrong"}]
        good = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET}
    for headers in bad:
        status, _ = post(metrics_port, f"/webhooks/{forge}", body, headers)
        assert status == 401, headers
    git.clone(url, tmp_path / "still-stale")
    assert head(git, tmp_path / "still-stale") != new, "a refused webhook changed something"

    status, answer = post(metrics_port, f"/webhooks/{forge}", body, good)
    assert (status, answer) == (200, b"accepted\n")
    res = git.clone(url, tmp_path / "fresh")
    assert head(git, tmp_path / "fresh") == new
    assert "goblet: refs from cache" not in res.stderr
    status, _ = post(metrics_port, f"/webhooks/{forge}", body, good)  # a replay: harmless
    assert status == 200
    git.clone(url, tmp_path / "again")
    assert head(git, tmp_path / "again") == new


def test_webhook_limits(proxy: GobletProxy, metrics_port: int) -> None:
    big = b"{" + b" " * (6 * 1024 * 1024) + b"}"
    status, _ = post(metrics_port, "/webhooks/github", big,
                     {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(big)})
    assert status == 413
    status, _ = post(metrics_port, "/webhooks/github", b"not json",
                     {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(b"not json")})
    assert status == 400
    ping = b'{"zen": "hello"}'
    status, _ = post(metrics_port, "/webhooks/github", ping,
                     {"X-GitHub-Event": "ping", "X-Hub-Signature-256": sign(ping)})
    assert status == 200
    status, _ = post(metrics_port, "/webhooks/elsewhere", ping, {})
    assert status == 404
    conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    assert 'goblet_webhooks_total{result="refused"}' in text
    assert 'goblet_refs_answers_total{source="cache"}' in text
    assert "Traceback" not in proxy.log_text()


def exchange(port: int, data: bytes, source: str = "127.0.0.1") -> bytes:
    """Send ``data`` from ``source`` to 127.0.0.1:``port`` and nothing more (the
    sending side is shut); what comes back until goblet closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(source, 0)) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


@pytest.mark.parametrize(("method", "path"), [("POST", "/webhooks/github"), ("GET", "/healthz")])
def test_a_content_length_int_cannot_read_gets_a_400_not_a_traceback(
        proxy: GobletProxy, metrics_port: int, method: str, path: str) -> None:
    """More digits than Python's int() takes (4300): anyone who reaches the port can
    send that, no secret needed. The answer is a one-line 400, then the close."""
    answer = exchange(metrics_port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode()
                      + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert body == b"malformed request\n"
    assert http_get(metrics_port, "/healthz")[0] == 200
    assert not proxy.wait_for_log("Traceback", timeout=1), proxy.log_text()[-3000:]


def announce(forge: str, headers: dict[str, str], length: int = 5 * 1024 * 1024) -> bytes:
    """The head of a webhook POST announcing a body of ``length`` bytes."""
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST /webhooks/{forge} HTTP/1.1\r\nHost: x\r\n{lines}"
            f"Content-Length: {length}\r\n\r\n").encode()


@pytest.mark.parametrize(("forge", "headers"), [
    ("github", {"X-GitHub-Event": "push"}),
    ("github", {"X-Hub-Signature-256": "sha256=" + "0" * 64}),
    ("github", {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 63}),
    ("gitlab", {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "wrong"}),
    ("gitlab", {"X-Gitlab-Event": "Push Hook"}),
])
def test_a_webhook_that_cannot_be_signed_is_refused_on_its_head(
        proxy: GobletProxy, metrics_port: int, forge: str, headers: dict[str, str]) -> None:
    """No secret needed to send these, so none of them may hold anything: the 401
    comes back at once, though the announced 5 MiB body never does."""
    answer = exchange(metrics_port, announce(forge, headers))
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:300]
    assert answer.endswith(b"\r\n\r\nbad or missing signature\n")


def test_a_signed_push_is_accepted_while_other_peers_hold_what_they_may(
        proxy: GobletProxy, upstream: UpstreamServer, metrics_port: int) -> None:
    """No secret needed for this either: a well-formed but wrong signature passes the
    head, so such connections reach the body budget. Two from one address announce
    5 MiB and send nothing: they hold nothing. Two from another send almost 5 MiB
    each and stall: that address is refused (503) past its share, 5 MiB. The
    forge's signed push, from a third address, still fits and is acted on. (From
    the address that holds its whole share it could not be: see the docs.)"""
    fake = {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64}
    almost = 5 * 1024 * 1024 - 1
    hogs: list[socket.socket] = []
    try:
        for _ in range(2):
            hogs.append(socket.create_connection(("127.0.0.1", metrics_port), timeout=30,
                                                 source_address=("127.0.0.2", 0)))
            hogs[-1].sendall(announce("github", fake))
        fillers = []
        for _ in range(2):
            fillers.append(socket.create_connection(("127.0.0.1", metrics_port), timeout=30,
                                                    source_address=("127.0.0.3", 0)))
            fillers[-1].sendall(announce("github", fake) + b"{" * almost)
        hogs += fillers
        # at least one of them is refused once that address's bytes pass its share
        ready, _, _ = select.select(fillers, [], [], 30)
        assert ready, "neither stalled body was refused"
        assert ready[0].recv(65536).startswith(b"HTTP/1.1 503 ")

        body = github(upstream.url("pushed-meanwhile"))
        good = {"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(body)}
        answer = exchange(metrics_port, announce("github", good, len(body)) + body)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        assert answer.endswith(b"\r\n\r\naccepted\n"), answer[-300:]
    finally:
        for s in hogs:
            s.close()


def scrape(port: int, sample: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(sample))


def test_clones_told_their_refs_age_still_share_the_pack_cache(
        git: GitClient, direct: GitClient, repos: Repos, upstream: UpstreamServer,
        proxy: GobletProxy, metrics_port: int, tmp_path: Path) -> None:
    _, url = warm(git, repos, upstream, proxy, tmp_path / "cold")
    hits = scrape(metrics_port, 'goblet_pack_cache_requests_total{result="hit"}')
    for i in range(3):  # seen once, then produced, then a hit
        res = git.clone(url, tmp_path / f"c{i}")
        assert "remote: goblet: refs from cache, " in res.stderr, (i, res.stderr)
        git.fsck(tmp_path / f"c{i}")
    assert scrape(metrics_port, 'goblet_pack_cache_requests_total{result="hit"}') > hits
    direct.clone(url, tmp_path / "direct")
    assert git.refs(tmp_path / "c2") == direct.refs(tmp_path / "direct")


def test_protocol_v0_refs_always_come_from_the_upstream(
        git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy,
        tmp_path: Path) -> None:
    v0 = ("protocol.version=0",)
    name, url = warm(git, repos, upstream, proxy, tmp_path / "cold", v0)
    upstream.reset_stats()
    res = git.clone(url, tmp_path / "warm", config=v0)
    got = upstream_requests(upstream, name)
    assert got["info_refs"] == 1 and got["upload_pack_v0"] == 0  # refs upstream, pack cached
    assert "goblet: refs from cache" not in res.stderr


def test_raw_ls_refs_get_cached_refs_only_as_the_upstream_would_answer_them(
        git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy,
        tmp_path: Path) -> None:
    """Raw ls-refs bytes within the TTL: the granted credential's plain question is
    answered from the cache with the upstream's own bytes; an oversized question (129
    ref-prefix lines) goes upstream; another credential, or none, gets the upstream's
    refusal and no ref."""
    name, _ = warm(git, repos, upstream, proxy, tmp_path / "cold", ALICE,
                   public=False, readers=("alice",))
    alice = {"Authorization": "Bearer tok-alice"}
    plain = v2_ls_refs_body()
    big = (pkt(b"command=ls-refs") + b"0001" + pkt("peel")
           + b"".join(pkt(f"ref-prefix refs/heads/b{i}/") for i in range(128))
           + pkt("ref-prefix refs/heads/") + b"0000")
    for body, upstream_asked in ((plain, 0), (big, 1)):
        upstream.reset_stats()
        via = post_upload(upstream, proxy, name, alice, body)
        assert upstream_requests(upstream, name)["ls_refs"] == upstream_asked
        ref = post_upload(upstream, None, name, alice, body)
        assert (via.status, via.body) == (ref.status, ref.body) and b"refs/heads/" in via.body
    for auth in ({"Authorization": "Bearer tok-bob"}, {}):
        via = post_upload(upstream, proxy, name, auth, plain)
        ref = post_upload(upstream, None, name, auth, plain)
        assert via.status == ref.status >= 400 and b"refs/heads/" not in via.body
