"""A folded (obs-fold) credential header is refused, and its value is kept nowhere.

HTTP/1.1 forbids line folding in requests (RFC 9112 §5.2: a server must reject it or
unfold it). A credential split over two lines would reach goblet's tenant key, its fill
configuration or its logs with a line break inside. Required: goblet answers 400 with a
one-line reason, and neither the credential's text nor its continuation appears in
mitmdump's output or anywhere in the cache directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support import rawhttp
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.proxy import GobletProxy
from tests.support.tunnel import exchange
from tests.support.upstream_client import UpstreamServer

SENTINEL = "Zm9sZGVkLXNlbnRpbmVsLTcxMw"
MORE = "bW9yZS1zZW50aW5lbC05Mjg"


PROXY_SETS = {"goblet_offline": "on"}  # the module's proxy (tests/e2e/conftest.py)


def folded(method: str, target: str, host: str, extra: list[str], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}",
             f"Authorization: Basic {SENTINEL}", f" {MORE}", *extra]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def found_in_cache(cache_dir: Path) -> list[str]:
    hits = []
    for path in cache_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if SENTINEL.encode() in data or MORE.encode() in data:
                hits.append(str(path.relative_to(cache_dir)))
    return hits


V2 = ["Git-Protocol: version=2", "Content-Type: application/x-git-upload-pack-request"]


@pytest.mark.parametrize("kind", ["info-refs", "ls-refs", "fetch"])
def test_a_folded_credential_header_gets_400_and_is_kept_nowhere(
    kind: str, git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy,
    tmp_path: Path,
) -> None:
    name = repos.create(public=False, readers=("alice",))
    url = upstream.url(name)
    git.clone(with_userinfo(url, "alice", "alice-pw"), tmp_path / "warm")
    head = git.run("rev-parse", "HEAD", cwd=tmp_path / "warm").stdout.strip()
    host = f"127.0.0.1:{upstream.port}"
    if kind == "info-refs":
        raw = folded("GET", f"/{name}/info/refs?service=git-upload-pack", host,
                     ["Git-Protocol: version=2"])
    else:
        body = rawhttp.v2_ls_refs_body() if kind == "ls-refs" else rawhttp.v2_fetch_body(head)
        raw = folded("POST", f"/{name}/git-upload-pack", host, V2, body)

    seen = len(proxy.log_text())  # the proxy is shared: look at this test's lines only
    resp = exchange(proxy.port, "127.0.0.1", upstream.port, raw, ca_file=proxy.ca_cert)
    git.clone(with_userinfo(url, "alice", "alice-pw"), tmp_path / "still-works")

    log = proxy.log_text()[seen:]
    leaked = [ln[:200] for ln in log.splitlines() if SENTINEL in ln or MORE in ln]
    assert leaked == [], "the folded credential reached mitmdump's log"
    assert "Traceback" not in log
    assert found_in_cache(proxy.cache_dir) == []
    assert resp.status == 400, (resp.status, resp.body[:300])
    assert resp.body.startswith(b"goblet: ") and resp.body.count(b"\n") == 1, resp.body
    assert b"PACK" not in resp.body
