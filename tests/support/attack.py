"""What the end-to-end attack tests share: proxies started with some options, hand-made
requests through goblet (or straight to the upstream, for the reference answer), requests
sent in one tunnel or from a thread, a grant warmed and then revoked, and tenants minted
with junk headers.

The tests in ``tests/e2e/test_hardening_*.py`` and ``tests/e2e/test_redteam_*.py`` play a
client goblet must not trust; these helpers set the scene and send the requests, and what
is required of goblet's answers stays in the tests.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support import rawhttp
from tests.support.cachedir import repos_for
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.net import wait_for
from tests.support.proxy import GobletProxy
from tests.support.tunnel import ResponseError, read_response
from tests.support.upstream_client import UpstreamServer

if TYPE_CHECKING:
    from tests.e2e.conftest import Repos

UPLOAD_HEADERS = {"Git-Protocol": "version=2",
                  "Content-Type": "application/x-git-upload-pack-request"}


def basic(user: str, password: str) -> dict[str, str]:
    """The ``Authorization`` header of HTTP Basic for ``user``."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ALICE = basic("alice", "alice-pw")
BOB = basic("bob", "bob-pw")
STRANGERS: dict[str, dict[str, str]] = {"anonymous": {}, "bob": BOB}


# The options of an offline-mode proxy (grace long enough to outlast any test).
OFFLINE = {"goblet_offline": "on", "goblet_offline_grace": "1h"}


def proxy_for(workdir: Path, upstream: UpstreamServer, confdir: Path,
              sets: dict[str, str] | None = None, *, cls: type[GobletProxy] = GobletProxy,
              **kwargs: Any) -> GobletProxy:
    """A goblet proxy (not started yet) caching ``upstream``'s host (and its second virtual
    host, if it has one) and trusting its certificate, with the ``--set`` options ``sets``."""
    hosts = [upstream.host, *([upstream.alt_host] if upstream.alt_name else [])]
    return cls(workdir, hosts=hosts, upstream_ca=upstream.cert_path, confdir=confdir,
               sets=dict(sets or {}), **kwargs)


def git_through(proxy: GobletProxy, home: Path) -> GitClient:
    """git through ``proxy``, trusting only its CA, with ``home`` as its HOME."""
    return GitClient(home, ca_file=proxy.ca_cert, proxy=proxy.url)


def clone_head(git: GitClient, url: str, dest: Path, user: str | None = None,
               password: str | None = None) -> str:
    """Clone ``url`` into ``dest`` (as ``user`` when given); return the clone's HEAD commit."""
    git.clone(with_userinfo(url, user, password or "") if user else url, dest)
    return git.run("rev-parse", "HEAD", cwd=dest).stdout.strip()


def send(upstream: UpstreamServer, proxy: GobletProxy | None, method: str, path: str,
         headers: dict[str, str] | None = None, body: bytes | None = None, *,
         host: str = "127.0.0.1", timeout: float = 30) -> rawhttp.RawResponse:
    """One request to ``host`` on ``upstream``'s port: through goblet, or straight to the
    upstream when ``proxy`` is None (the reference answer)."""
    return rawhttp.request(
        proxy_port=proxy.port if proxy else None,
        ca_file=proxy.ca_cert if proxy else upstream.cert_path,
        host=host, port=upstream.port, method=method, path=path, headers=headers, body=body,
        timeout=timeout)


def post_upload(upstream: UpstreamServer, proxy: GobletProxy | None, name: str,
                headers: dict[str, str], body: bytes, **kwargs: Any) -> rawhttp.RawResponse:
    """A POST of ``body`` to ``name``'s git-upload-pack with ``headers`` after the v2 ones."""
    return send(upstream, proxy, "POST", f"/{name}/git-upload-pack",
                {**UPLOAD_HEADERS, **headers}, body, **kwargs)


def fetch(upstream: UpstreamServer, proxy: GobletProxy | None, name: str, head: str,
          auth: dict[str, str], **kwargs: Any) -> rawhttp.RawResponse:
    """A protocol v2 fetch of ``head`` from ``name`` with the credential headers ``auth``."""
    return post_upload(upstream, proxy, name, auth, rawhttp.v2_fetch_body(head), **kwargs)


def tunnel_connection(proxy: GobletProxy, upstream: UpstreamServer,
                      timeout: float) -> http.client.HTTPSConnection:
    """An HTTPS connection to ``upstream`` (as 127.0.0.1) in a CONNECT tunnel of ``proxy``."""
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=context,
                                       timeout=timeout)
    conn.set_tunnel("127.0.0.1", upstream.port)
    return conn


def post_in_background(
    proxy: GobletProxy, upstream: UpstreamServer, path: str, headers: dict[str, str],
    body: bytes | Iterator[bytes], *, chunked: bool = False, timeout: float = 120,
) -> tuple[threading.Thread, dict[str, Any]]:
    """POST ``body`` to ``path`` on ``upstream`` through ``proxy``, from a thread.

    The result dict gets ``sent`` (the monotonic time the whole request was out), then
    ``status`` and ``body`` of the answer, or ``error``.
    """
    out: dict[str, Any] = {}

    def run() -> None:
        conn = tunnel_connection(proxy, upstream, timeout)
        try:
            conn.request("POST", path, body=body, headers=headers, encode_chunked=chunked)
            out["sent"] = time.monotonic()
            resp = conn.getresponse()
            out["status"], out["body"] = resp.status, resp.read()
        except (OSError, http.client.HTTPException) as e:
            out["error"] = repr(e)
        finally:
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def upload_posts(upstream: UpstreamServer, name: str) -> int:
    """How many POSTs to ``name``'s git-upload-pack the upstream has received."""
    return sum(1 for r in upstream.stats()["requests"]
               if r["method"] == "POST" and r["path"] == f"/{name}/git-upload-pack")


def no_pack(resp: rawhttp.RawResponse) -> bool:
    """The answer holds neither a v2 packfile section nor a pack."""
    return b"packfile" not in resp.body and b"PACK" not in resp.body


def one_by_one(sock: ssl.SSLSocket, requests: list[bytes]) -> list[rawhttp.RawResponse]:
    """Send ``requests`` one after another on ``sock`` (then closed), each after the last
    answer; the answers that came before the connection ended."""
    answers = []
    with sock:
        for raw in requests:
            try:
                sock.sendall(raw)
                answers.append(read_response(sock))
            except (ResponseError, OSError):
                break
    return answers


def warm_then_revoke(git: GitClient, repos: Repos, upstream: UpstreamServer, dest: Path,
                     stale_after: float, **shape: Any) -> tuple[str, str]:
    """alice clones a private repo of hers through ``git`` into ``dest``; then the upstream
    revokes her, and her grant goes stale (``stale_after`` seconds, the verdict TTL, pass).
    Returns (repo name, its HEAD commit)."""
    name = repos.create(public=False, readers=("alice",), **shape)
    head = clone_head(git, upstream.url(name), dest, "alice", "alice-pw")
    repos.grant(name, public=False, readers=())
    time.sleep(stale_after + 1)
    return name, head


def clone_as_junk_tenants(git: GitClient, url: str, workdir: Path, numbers: range) -> None:
    """Clone ``url`` once per number with a junk header ``X-Junk: N``: in ``tenant``
    isolation, each clone a tenant of its own (into ``workdir/junkN``)."""
    for i in numbers:
        git.clone(url, workdir / f"junk{i}", config=(f"http.extraHeader=X-Junk: {i}",))


def wait_partitions_at_most(proxy: GobletProxy, url: str, bound: int, what: str) -> None:
    """Wait (up to 15 s) until ``proxy``'s cache holds at most ``bound`` copies of ``url``."""
    def settled() -> int | None:
        n = len(repos_for(proxy.cache_dir, url))
        return n if n <= bound else None

    wait_for(what, settled, timeout=15)
