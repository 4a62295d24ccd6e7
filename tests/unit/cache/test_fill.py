"""A fill's parts: classifying git's failure, the credential's git config, upstream's HEAD."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from goblet.auth.credentials import Credential, credential_from_headers
from goblet.cache.fill import FailureKind, Filler, FillError, classify_failure, header_config
from goblet.cache.locks import RepoLocks
from goblet.cache.store import RepoStore
from goblet.git.env import hardened_env
from goblet.git.runner import GitResult, GitRunner

if TYPE_CHECKING:
    from tests.unit.conftest import GitWire

U = "https://github.com/org/repo.git/"


def url_error(status: int) -> str:
    """What git prints when the upstream answers ``status``."""
    return f"fatal: unable to access '{U}': The requested URL returned error: {status}\n"


# (stderr as git 2.39 prints it, kind, HTTP status). Samples marked "real" were captured
# from git 2.39.5 against a local server (and a full tmpfs for ENOSPC).
FAILURES = [
    pytest.param(url_error(401), FailureKind.DENIED, 401, id="401"),
    pytest.param(url_error(403), FailureKind.DENIED, 403, id="403-real"),
    pytest.param(url_error(404), FailureKind.DENIED, 404, id="404-url-form"),
    pytest.param("error: RPC failed; HTTP 404 curl 22 The requested URL returned error: 404\n"
                 "fatal: expected flush after ref listing\n",
                 FailureKind.DENIED, 404, id="404-during-rpc"),
    pytest.param(url_error(500), FailureKind.UPSTREAM, 500, id="500-real"),
    pytest.param(url_error(502), FailureKind.UPSTREAM, 502, id="502-real"),
    pytest.param("error: RPC failed; HTTP 503 curl 22 The requested URL returned error: 503\n"
                 "fatal: the remote end hung up unexpectedly\n",
                 FailureKind.UPSTREAM, 503, id="503-rpc"),
    pytest.param(url_error(429), FailureKind.UPSTREAM, 429, id="429-rate-limited"),
    pytest.param(url_error(400), FailureKind.UPSTREAM, 400, id="400"),
    pytest.param(url_error(402), FailureKind.UPSTREAM, 402, id="402-next-to-denied"),
    pytest.param(url_error(405), FailureKind.UPSTREAM, 405, id="405-next-to-denied"),
    pytest.param("fatal: could not read Username for 'https://github.com': terminal prompts "
                 "disabled\n", FailureKind.DENIED, 401, id="username-prompt-real"),
    pytest.param(f"remote: Invalid username or password.\nfatal: Authentication failed for "
                 f"'{U}'\n", FailureKind.DENIED, 401, id="authentication-failed"),
    pytest.param(f"fatal: unable to access '{U}': Could not resolve host: github.com\n",
                 FailureKind.UPSTREAM, None, id="dns"),
    pytest.param("fatal: unable to access 'http://127.0.0.1:1/x.git/': Failed to connect to "
                 "127.0.0.1 port 1 after 0 ms: Couldn't connect to server\n",
                 FailureKind.UPSTREAM, None, id="failed-to-connect-real"),
    pytest.param(f"fatal: unable to access '{U}': Operation too slow. Less than 1000 bytes/sec "
                 "transferred the last 60 seconds\n", FailureKind.UPSTREAM, None,
                 id="operation-too-slow"),
    pytest.param("error: 2345 bytes of body are still expected\nfetch-pack: unexpected "
                 "disconnect while reading sideband packet\nfatal: early EOF\nfatal: "
                 "fetch-pack: invalid index-pack output\n", FailureKind.UPSTREAM, None,
                 id="early-eof"),
    pytest.param(f"fatal: unable to access '{U}': OpenSSL SSL_read: Connection was reset, "
                 "errno 10054\n", FailureKind.UPSTREAM, None, id="tls-reset"),
    pytest.param(f"fatal: unable to access '{U}': server certificate verification failed. "
                 "CAfile: /etc/ssl/certs/ca-certificates.crt CRLfile: none\n",
                 FailureKind.UPSTREAM, None, id="certificate"),
    pytest.param("fatal: protocol error: bad pack header\n", FailureKind.UPSTREAM, None,
                 id="bad-pack-header"),
    pytest.param("fatal: write error: No space left on device\nfatal: fetch-pack: invalid "
                 "index-pack output\n", FailureKind.LOCAL, None, id="enospc-index-pack-real"),
    pytest.param("fatal: unable to write loose object file: No space left on device\n"
                 "fatal: unpack-objects failed\n", FailureKind.LOCAL, None,
                 id="enospc-unpack-objects-real"),
    pytest.param("fatal: Unable to create '/c/repos/ab.git/packed-refs.lock': File exists.\n",
                 FailureKind.LOCAL, None, id="stale-lock"),
    pytest.param("error: cannot lock ref 'refs/heads/main': is at 1 but expected 2\n",
                 FailureKind.LOCAL, None, id="ref-lock"),
    pytest.param("fatal: not a git repository: '/c/repos/ab.git'\n", FailureKind.LOCAL, None,
                 id="not-a-repo"),
    pytest.param("error: cannot lock ref 'refs/heads/main': 'refs/heads/main/tls' exists; "
                 "cannot create 'refs/heads/main'\n", FailureKind.LOCAL, None,
                 id="ref-name-spelling-a-hint"),
    pytest.param(" * [new branch]      timed-out-ssl -> timed-out-ssl\nfatal: unable to write "
                 "new index file\n", FailureKind.LOCAL, None, id="ref-update-line-with-hints"),
    pytest.param("zzz random text 42\n", FailureKind.LOCAL, None, id="random-text"),
    pytest.param("", FailureKind.LOCAL, None, id="no-stderr"),
]


@pytest.mark.parametrize(("stderr", "kind", "status"), FAILURES)
def test_classify_failure(stderr: str, kind: FailureKind, status: int | None) -> None:
    err = classify_failure(GitResult(128, b"", stderr.encode()))
    assert err.kind is kind
    assert err.status == status
    assert "\n" not in err.reason
    assert err.reason == str(err)


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        pytest.param(url_error(403), "upstream answered 403", id="status"),
        pytest.param("warning: x\nfatal: protocol error: bad pack header\nhint: y\n",
                     "upstream fetch failed: fatal: protocol error: bad pack header",
                     id="last-fatal-line"),
        pytest.param("zzz\nlast words\n", "cache update failed: last words", id="last-line"),
        pytest.param("", "cache update failed: git exited with status 128", id="empty"),
    ],
)
def test_classify_failure_reason_is_the_telling_line(stderr: str, reason: str) -> None:
    assert classify_failure(GitResult(128, b"", stderr.encode())).reason == reason


def test_classify_failure_reason_is_bounded() -> None:
    err = classify_failure(GitResult(1, b"", b"fatal: " + b"x" * 5000))
    assert len(err.reason) < 400


def test_classify_failure_tolerates_non_utf8_stderr() -> None:
    err = classify_failure(GitResult(1, b"", b"fatal: \xff\xfe early EOF\n"))
    assert err.kind is FailureKind.UPSTREAM


def test_classify_failure_real_git_404_is_denied() -> None:
    real = b"fatal: repository 'http://127.0.0.1:36845/404/r.git/' not found\n"
    err = classify_failure(GitResult(128, b"", real))
    assert err.kind is FailureKind.DENIED
    assert err.status == 404


# ---------------------------------------------------------------------------- header_config

AUTH = credential_from_headers([("Authorization", "Bearer t0k"), ("User-Agent", "git/2.39.5")])


@pytest.mark.parametrize(
    ("url", "key"),
    [
        pytest.param("https://github.com/org/repo.git", "http.https://github.com/.extraHeader",
                     id="default-port"),
        pytest.param("https://git.example.com:8443/a/b/c", "http.https://git.example.com:8443/"
                     ".extraHeader", id="explicit-port"),
        pytest.param("https://[::1]:8443/r", "http.https://[::1]:8443/.extraHeader", id="ipv6"),
        pytest.param("https://github.com", "http.https://github.com/.extraHeader", id="no-path"),
        pytest.param("https://github.com/org/repo.git?x=1#f", "http.https://github.com/"
                     ".extraHeader", id="query-and-fragment-dropped"),
    ],
)
def test_header_config_is_scoped_to_the_origin(url: str, key: str) -> None:
    assert header_config(url, AUTH) == [(key, ""), (key, "authorization: Bearer t0k")]


def test_header_config_anonymous_is_empty() -> None:
    assert header_config("https://github.com/org/r.git", Credential()) == []
    assert header_config("https://github.com/org/r.git",
                         credential_from_headers([("User-Agent", "git/2.39.5")])) == []


def test_header_config_first_entry_clears_inherited_headers() -> None:
    entries = header_config("https://h/r", AUTH)
    assert entries[0][1] == ""
    assert len({k for k, _ in entries}) == 1


def test_header_config_replays_every_credential_header_in_order() -> None:
    cred = credential_from_headers([("Cookie", "a=1"), ("Authorization", "Basic eDp5"),
                                    ("Cookie", "b=2"), ("Private-Token", "p")])
    values = [v for _, v in header_config("https://h/r", cred)][1:]
    assert values == ["authorization: Basic eDp5", "cookie: a=1", "cookie: b=2",
                      "private-token: p"]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("a\r\nX-Injected: 1", id="crlf"),
        pytest.param("a\nX-Injected: 1", id="lf"),
        pytest.param("a\rX-Injected: 1", id="cr"),
        pytest.param("x\r\n y", id="obs-fold-as-mitmproxy-joins-it"),
        pytest.param("\n", id="only-lf"),
    ],
)
def test_header_config_never_emits_cr_or_lf_in_a_value(value: str) -> None:
    cred = credential_from_headers([("Authorization", value), ("Cookie", "ok=1")])
    entries = header_config("https://github.com/r", cred)
    assert all("\r" not in v and "\n" not in v for _, v in entries)
    assert [v for _, v in entries] == ["", "cookie: ok=1"]  # the bad header is dropped


@pytest.mark.parametrize("name", ["x\r\ny", "x\ny", "x\ry"], ids=["crlf", "lf", "cr"])
def test_header_config_never_emits_cr_or_lf_in_a_name(name: str) -> None:
    entries = header_config("https://github.com/r", Credential(((name, "v"),)))
    assert all("\r" not in v and "\n" not in v for _, v in entries)


def test_header_config_is_always_a_valid_git_environment(tmp_path: Path) -> None:
    cred = credential_from_headers([("Authorization", "Bearer a\x00b")])
    env = hardened_env(home=str(tmp_path), config=header_config("https://github.com/r", cred))
    subprocess.run(["git", "version"], env=env, capture_output=True, check=True)


# ------------------------------------------------------------------ upstream's HEAD


def loopback_filler(tmp_path: Path) -> Filler:
    """A Filler whose git may speak plain http (the recorded upstream is on loopback)."""
    git = GitRunner(home=tmp_path / "home", base_config=[("protocol.http.allow", "always")])
    store = RepoStore(tmp_path / "cache", git)
    store.prepare()
    return Filler(store, RepoLocks(store.lock_dir), git, stall_timeout=5)


def test_upstream_head_names_what_upstreams_head_points_to(git_wire: GitWire,
                                                            tmp_path: Path) -> None:
    filler = loopback_filler(tmp_path)
    repo = filler.store.repo_for(git_wire.url("plain.git"))
    assert asyncio.run(filler.upstream_head(repo, Credential())) == "refs/heads/main"


def test_upstream_head_asks_with_the_credential(git_wire: GitWire, tmp_path: Path) -> None:
    filler = loopback_filler(tmp_path)
    repo = filler.store.repo_for(git_wire.url("plain.git"))
    assert git_wire.server is not None
    start = len(git_wire.server.log)
    cred = credential_from_headers([("Authorization", "Bearer head-token")])
    assert asyncio.run(filler.upstream_head(repo, cred)) == "refs/heads/main"
    sent = [dict((k.lower(), v) for k, v in e.headers) for e in git_wire.server.log[start:]]
    assert sent and all(h.get("authorization") == "Bearer head-token" for h in sent)


@pytest.mark.parametrize("url", ["{base}/missing.git", "http://127.0.0.1:1/r.git"],
                         ids=["no-such-repo", "nobody-listening"])
def test_upstream_head_is_none_when_upstream_cannot_say(git_wire: GitWire, tmp_path: Path,
                                                       url: str) -> None:
    filler = loopback_filler(tmp_path)
    repo = filler.store.repo_for(url.format(base=git_wire.base_url))
    assert asyncio.run(filler.upstream_head(repo, Credential(), timeout=30)) is None


def test_upstream_head_gives_up_at_its_timeout(tmp_path: Path) -> None:
    filler = loopback_filler(tmp_path)
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        repo = filler.store.repo_for(f"http://127.0.0.1:{silent.getsockname()[1]}/r.git")
        started = time.monotonic()
        assert asyncio.run(filler.upstream_head(repo, Credential(), timeout=0.5)) is None
        assert 0.4 < time.monotonic() - started < 10  # waited for the deadline, then no longer


# ------------------------------------------------------------------ refs whose names clash


@pytest.mark.parametrize(("before", "after"), [
    ("topic/x", "topic"),  # the upstream replaced a branch with one named as its directory
    ("topic", "topic/x"),  # ... and the other way round
])
def test_a_fill_drops_a_cache_ref_whose_name_clashes_with_an_upstream_one(
        git_wire: GitWire, tmp_path: Path, before: str, after: str) -> None:
    """git's atomic fetch cannot drop ``before`` and create ``after`` in one transaction
    (one is a directory of the other); the upstream cannot have both, so the fill drops
    the cache's and fetches again, rather than failing on every update from then on."""
    bare = git_wire.root / f"clash-{before.replace('/', '-')}.git"
    git_wire.git("clone", "-q", "--bare", str(git_wire.root / "plain.git"), str(bare))
    git_wire.git("-C", str(bare), "branch", before, "main")
    filler = loopback_filler(tmp_path)
    repo = filler.store.repo_for(git_wire.url(bare.name))

    async def fill() -> None:
        await filler.start(repo, Credential())

    asyncio.run(fill())
    assert f"refs/heads/{before}" in asyncio.run(filler.store.read_refs(repo.path))[0]
    git_wire.git("-C", str(bare), "branch", "-D", before)
    git_wire.git("-C", str(bare), "branch", after, "main")
    asyncio.run(fill())
    refs = asyncio.run(filler.store.read_refs(repo.path))[0]
    assert f"refs/heads/{after}" in refs and f"refs/heads/{before}" not in refs
    assert filler.store.state(repo) is not None


def test_a_clash_is_named_only_for_mirrored_refs() -> None:
    def clash(stderr: str) -> str | None:
        return classify_failure(GitResult(1, b"", stderr.encode())).clash

    assert clash("error: cannot lock ref 'refs/heads/topic': 'refs/heads/topic/x' exists; "
                 "cannot create 'refs/heads/topic'\n") == "refs/heads/topic/x"
    assert clash("error: cannot lock ref 'refs/tags/a/b': 'refs/tags/a' exists; cannot "
                 "create 'refs/tags/a/b'\n") == "refs/tags/a"
    assert clash("error: 'refs/notes/x' exists; cannot create 'refs/notes/x/y'\n") is None
    assert clash("error: cannot lock ref 'refs/heads/main': is at 1 but expected 2\n") is None
    # text the upstream sent is not git's own line, and a name that is no relative is no clash
    assert clash("fatal: remote error: error: cannot lock ref 'refs/heads/x': 'refs/heads/main' "
                 "exists; cannot create 'refs/heads/x'\n") is None
    assert clash("remote: error: cannot lock ref 'refs/heads/main/x': 'refs/heads/main' "
                 "exists; cannot create 'refs/heads/main/x'\n") is None
    assert clash("error: cannot lock ref 'refs/heads/x': 'refs/heads/main' exists; cannot "
                 "create 'refs/heads/x'\n") is None


def test_objects_by_id_are_fetched_one_fetch_at_a_time_per_repo_never_queued(
        git_wire: GitWire, tmp_path: Path) -> None:
    """Each holds the writer lock for an upstream round trip and any client may ask for
    ids that do not exist: while one is under way another is refused at once (its
    request goes upstream), never queued in front of the repo's fills."""
    filler = loopback_filler(tmp_path)
    repo = filler.store.repo_for(git_wire.url("plain.git"))
    other = filler.store.repo_for(git_wire.url("extras.git"))

    async def run() -> None:
        await filler.start(repo, Credential())
        await filler.start(other, Credential())
        async with filler.locks.writer(repo.key, timeout=30):  # (a fill, say)
            first = asyncio.create_task(filler.fetch_oids(repo, Credential(), ["1" * 40]))
            await asyncio.sleep(0.2)
            with pytest.raises(FillError) as refused:
                await filler.fetch_oids(repo, Credential(), [git_wire.oids["c1"]])
            assert refused.value.kind is FailureKind.LOCAL
            await filler.fetch_oids(other, Credential(), [git_wire.oids["c1"]])  # another repo
        with pytest.raises(FillError):
            await first  # (no such object upstream)
        await filler.fetch_oids(repo, Credential(), [git_wire.oids["c1"]])  # free again

    asyncio.run(run())
