"""Unit-test set-up: the import path, and real git smart-HTTP traffic as fixtures.

``git_wire`` runs the real git client (the one on PATH, 2.39 in CI) against
``git http-backend`` behind a tiny loopback HTTP server and records every
request and answer, so the protocol tests parse exactly what git sends and
receives instead of hand-written approximations. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from tests.support.repos import make_bare_repo

ADDON_DIR = Path(__file__).resolve().parents[2] / "addon"
if str(ADDON_DIR) not in sys.path:
    sys.path.insert(0, str(ADDON_DIR))

# Hypothesis caches (constants, unicode tables) go to /tmp, not into the work tree.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "goblet-unit-hypothesis")


COMMIT_EPOCH = 1_700_000_000  # the fixture's commits are dated from here on


@pytest.fixture(autouse=True)
def _mitmproxy_dispatch() -> Iterator[None]:
    """A test that configures the addon puts goblet's hook dispatch in place for the
    whole process (``goblet/addon/dispatch.py``): every test ends with mitmproxy's own
    again, so no test depends on which ran before it in the same worker."""
    yield
    from goblet.addon import dispatch  # noqa: PLC0415 (after the path set-up above)
    dispatch.uninstall()


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    """A bare repo with branches main (HEAD) and dev, a plain tag v1, an annotated tag v2."""
    path = tmp_path / "r.git"
    make_bare_repo(path, commits=3, branches=("main", "dev"), tags=("v1",),
                   annotated_tags=("v2",))
    return path


@dataclass(frozen=True)
class Exchange:
    """One recorded HTTP round trip between git and ``git http-backend``."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]  # as git sent them, names in git's spelling
    body: bytes  # the request body, gunzipped
    status: int
    response: bytes


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.log: list[Exchange] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _cgi(self) -> None:
        path, _, query = self.path.partition("?")
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        gzipped = self.headers.get("Content-Encoding") == "gzip"
        body = gzip.decompress(raw) if gzipped else raw
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.server.root),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60,
            check=False,
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(": ")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value))
        with self.server.lock:
            self.server.log.append(
                Exchange(self.command, path, query, tuple(self.headers.items()), body, status,
                         payload)
            )
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


@dataclass
class GitWire:
    """Real repos served over loopback HTTP, and what git said to them."""

    root: Path  # GIT_PROJECT_ROOT of the upstream
    base_url: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # a clean environment for git clients
    oids: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, list[Exchange]] = field(default_factory=dict)
    server: _Server | None = None
    commits: int = 0  # commits made so far (each one dated a minute after the last)

    def url(self, repo: str) -> str:
        return f"{self.base_url}/{repo}"

    def git(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run a git client command; raise with its stderr if ``check`` and it fails."""
        res = subprocess.run(["git", *args], cwd=cwd, env=env or self.env, capture_output=True,
                             timeout=60, check=False)
        if check and res.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed: {res.stderr.decode()}")
        return res

    def record(self, name: str, *args: str, cwd: Path | None = None,
               env: dict[str, str] | None = None, check: bool = True) -> list[Exchange]:
        """Run git and keep the HTTP exchanges it made under ``name``."""
        assert self.server is not None
        start = len(self.server.log)
        self.git(*args, cwd=cwd, env=env, check=check)
        with self.server.lock:
            self.sessions[name] = self.server.log[start:]
        return self.sessions[name]

    def posts(self, name: str) -> list[Exchange]:
        return [e for e in self.sessions[name] if e.method == "POST"]

    def info_refs(self, name: str) -> Exchange:
        (first,) = [e for e in self.sessions[name] if e.path.endswith("/info/refs")]
        return first


def _commit(w: GitWire, work: Path, name: str) -> str:
    """Commit ``name`` a minute after the previous commit of the fixture.

    Distinct, increasing dates make what git derives from them deterministic:
    a fetch lists its haves newest first, and equal dates (two commits in one
    second) would leave their order to chance.
    """
    w.commits += 1
    date = f"@{COMMIT_EPOCH + 60 * w.commits} +0000"
    env = {**w.env, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    (work / f"{name}.txt").write_text(f"{name}\n" * 50)
    w.git("-C", str(work), "add", ".")
    w.git("-C", str(work), "commit", "-q", "-m", name, env=env)
    return w.git("-C", str(work), "rev-parse", "HEAD").stdout.decode().strip()


@pytest.fixture(scope="session")
def git_wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitWire]:
    """Record real git 2.39 smart-HTTP traffic for every protocol shape we parse."""
    base = tmp_path_factory.mktemp("git-wire")
    root, home, clients = base / "upstream", base / "home", base / "clients"
    for d in (root, home, clients):
        d.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C",
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "A U Thor",
        "GIT_AUTHOR_EMAIL": "author@example.com",
        "GIT_COMMITTER_NAME": "A U Thor",
        "GIT_COMMITTER_EMAIL": "author@example.com",
    }
    server = _Server(root)
    thread = threading.Thread(target=server.serve_forever, name="git-wire", daemon=True)
    thread.start()
    w = GitWire(root, f"http://127.0.0.1:{server.server_port}", env, server=server)
    try:
        _populate(w, base)
        _record_sessions(w, clients)
        yield w
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _populate(w: GitWire, base: Path) -> None:
    """Upstream repos: sha1 (plain and with optional v2 features), sha256, empty."""
    work = base / "work"
    w.git("init", "-q", "-b", "main", str(work))
    w.oids["c1"] = _commit(w, work, "one")
    w.git("-C", str(work), "tag", "-a", "v1", "-m", "v1")
    w.oids["v1"] = w.git("-C", str(work), "rev-parse", "v1").stdout.decode().strip()
    w.oids["c2"] = _commit(w, work, "two")
    for repo, config in {
        "plain.git": {"uploadpack.allowFilter": "true"},
        "refinwant.git": {"uploadpack.allowRefInWant": "true"},
        "extras.git": {
            "uploadpack.allowSidebandAll": "true",
            "uploadpack.blobPackfileUri": f"{'a' * 40} {'b' * 40} https://cdn.example/p.pack",
        },
    }.items():
        w.git("init", "-q", "--bare", "-b", "main", str(w.root / repo))
        for key, value in config.items():
            w.git("-C", str(w.root / repo), "config", key, value)
        w.git("-C", str(work), "push", "-q", str(w.root / repo), "main", "v1")
    w.oids["main"] = w.oids["c2"]

    work256 = base / "work256"
    w.git("init", "-q", "-b", "main", "--object-format=sha256", str(work256))
    w.oids["sha256"] = _commit(w, work256, "one")
    w.git("init", "-q", "--bare", "-b", "main", "--object-format=sha256",
          str(w.root / "sha256.git"))
    w.git("-C", str(work256), "push", "-q", str(w.root / "sha256.git"), "main")

    w.git("init", "-q", "--bare", "-b", "main", str(w.root / "empty.git"))
    w.oids["work"] = str(work)


def _record_sessions(w: GitWire, clients: Path) -> None:
    v2, v0 = ("-c", "protocol.version=2"), ("-c", "protocol.version=0")
    for name, proto, extra, repo in [
        ("v2-clone", v2, (), "plain.git"),
        ("v0-clone", v0, (), "plain.git"),
        ("v2-shallow", v2, ("--depth", "1"), "plain.git"),
        ("v0-shallow", v0, ("--depth", "1"), "plain.git"),
        ("v2-filter", v2, ("--filter=blob:none",), "plain.git"),
        ("v2-ref-in-want", v2, (), "refinwant.git"),
        ("v2-extras", (*v2, "-c", "fetch.uriProtocols=https"), (), "extras.git"),
        ("v2-sha256", v2, (), "sha256.git"),
        ("v0-sha256", v0, (), "sha256.git"),
        ("v2-empty", v2, (), "empty.git"),
        ("v0-empty", v0, (), "empty.git"),
    ]:
        # extras.git advertises a packfile URI git cannot download: the clone fails
        # after the request we want was sent.
        w.record(name, *proto, "clone", "-q", *extra, w.url(repo), str(clients / name),
                 check=name != "v2-extras")

    # Incremental fetches: a new upstream commit, fetched by the existing clones.
    work = Path(w.oids.pop("work"))
    w.oids["c3"] = _commit(w, work, "three")
    w.git("-C", str(work), "push", "-q", str(w.root / "plain.git"), "main")
    w.record("v2-incremental", *v2, "-C", str(clients / "v2-clone"), "fetch", "-q", "origin")
    w.record("v0-incremental", *v0, "-C", str(clients / "v0-clone"), "fetch", "-q", "origin")
    w.record("v2-ls-remote", *v2, "ls-remote", w.url("plain.git"))
    w.record("v2-auth", *v2, "-c", "http.extraHeader=Authorization: Bearer wire-token",
             "ls-remote", w.url("plain.git"))
