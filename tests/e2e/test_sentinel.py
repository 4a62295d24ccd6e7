"""A unique secret goes through every path; it must surface nowhere.

Clone, fetch, a fill (whose git child is inspected through /proc), an error
answer, an offline answer — at debug log verbosity. Afterwards the secret and
its base64 forms must be absent from every log line, the /metrics output,
every file under the cache dir, every child's argv and every answer body.
"""

from __future__ import annotations

import base64
import threading
import time
import urllib.request
from pathlib import Path

from tests.e2e.conftest import USERS, Repos
from tests.support import rawhttp
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.proxy import GobletProxy
from tests.support.repos import add_commit
from tests.support.upstream_client import UpstreamServer

SENTINEL = "sentinel-7f3a9c0e5b2d4e18a6c1"


def forms() -> list[str]:
    """The secret as it may appear: raw, and inside each Basic header we send."""
    out = [SENTINEL]
    for pair in (f"dave:pw-{SENTINEL}", f"x:tok-{SENTINEL}"):
        out.append(base64.b64encode(pair.encode()).decode())
    return out


def test_the_secret_surfaces_nowhere(tmp_path: Path, confdir: Path) -> None:
    users = {**USERS, "dave": {"password": f"pw-{SENTINEL}", "tokens": [f"tok-{SENTINEL}"]}}
    upstream = UpstreamServer(tmp_path / "upstream", {"users": users, "repos": {}}).start()
    bodies: list[bytes] = []
    try:
        repos = Repos(upstream)
        repos.config["users"] = users
        name = repos.create(public=False, readers=("dave",))
        url = upstream.url(name)
        px = GobletProxy(tmp_path / "px", hosts=[upstream.host], upstream_ca=upstream.cert_path,
                         confdir=confdir,
                         sets={"termlog_verbosity": "debug", "goblet_offline": "on",
                               "goblet_upstream_timeout": "3", "goblet_metrics_port": "0",
                               # cold clones by fill: the fill's git child must be seen
                               "goblet_cold_clones": "fill"})
        with px:
            git = GitClient(tmp_path / "home", ca_file=px.ca_cert, proxy=px.url)
            bearer = (f"http.extraHeader=Authorization: Bearer tok-{SENTINEL}",)

            # A cold clone whose fill is held so its git child can be read from /proc.
            upstream.fault("stall", kinds=["fetch"], count=1)
            cloning = threading.Thread(
                target=lambda: git.clone(url, tmp_path / "bearer", config=bearer, check=False))
            cloning.start()
            try:
                deadline = time.monotonic() + 15
                seen: list[tuple[int, str]] = []
                while not seen and time.monotonic() < deadline:
                    seen = [c for c in px.children() if " fetch " in c[1]]
                    time.sleep(0.05)
                assert seen, "no fill child seen"
                for _, cmdline in px.children():
                    assert all(f not in cmdline for f in forms()), cmdline
            finally:
                upstream.fault("none")
                cloning.join(60)

            # Clone and fetch with Basic credentials; a fill of the new commit.
            work = tmp_path / "basic"
            git.clone(with_userinfo(url, "dave", f"pw-{SENTINEL}"), work)
            add_commit(repos.path(name), message="more")
            git.run("fetch", "origin", cwd=work)

            # An error path carrying the secret: a malformed request and a bad path.
            for path, body in ((f"/{name}/git-upload-pack", b"zzzz"),
                               (f"/a/../{name}/git-upload-pack", b"0000")):
                resp = rawhttp.request(
                    proxy_port=px.port, ca_file=px.ca_cert, host="127.0.0.1",
                    port=upstream.port, method="POST", path=path, body=body,
                    headers={"Authorization": f"Bearer tok-{SENTINEL}",
                             "Git-Protocol": "version=2"})
                assert resp.status == 400
                bodies.append(resp.body)

            # Metrics, scraped through the proxy port.
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                    f"http://127.0.0.1:{px.port}/metrics", timeout=10) as r:
                bodies.append(r.read())

            # Offline: the upstream is gone, dave is served from the cache.
            upstream.stop()
            res = git.clone(url, tmp_path / "offline", config=bearer, check=False)
            assert res.returncode == 0 and "upstream unreachable since" in res.stderr
            assert "outcome=offline" in px.log_text()
            assert "outcome=cache" in px.log_text()
        log = px.log_text()
        for secret in forms():
            assert secret not in log
            assert all(secret.encode() not in b for b in bodies)
            for path in px.cache_dir.rglob("*"):
                if path.is_file():
                    assert secret.encode() not in path.read_bytes(), path
    finally:
        upstream.stop()
