#!/usr/bin/env python3
"""Load generator for goblet: real git protocol, strict success checks, bounded loops.

Two modes:

- ``--mode protocol`` (default): each worker repeats the three requests of a v2
  clone, ``GET info/refs``, ``POST ls-refs`` and ``POST fetch`` (a full pack of
  HEAD, or ``--depth N``), with pkt-lines built as git 2.39 builds them. A
  request succeeds only if its answer is valid git protocol: HTTP 200 with git's
  content type, well-formed pkt-lines, no ``ERR`` packet, no sideband error,
  and for a fetch a pack whose SHA-1 trailer matches its bytes.
- ``--mode clone``: each worker runs the real ``git clone`` (``--git-op clone``,
  a fresh clone every time) or clones once and then ``git fetch``-es
  (``--git-op fetch``); a non-zero exit status is a failure.

Two ways to reach goblet (``--via``):

- ``prefix`` (default): ``--url`` is a path-prefix address (HAProxy or a
  goblet prefix port); repo ``github.com/org/repo`` is requested as
  ``<url>/github.com/org/repo/...`` (clone mode uses git's ``insteadOf``).
- ``proxy``: ``--url`` is goblet's forward-proxy address (``HTTPS_PROXY``);
  repos are requested as ``https://github.com/org/repo`` through CONNECT, and
  ``--ca`` names goblet's CA certificate.

Repositories default to the local demo upstream (``loadtest/demo-upstream`` on
127.0.0.1:8443). Any other host needs ``--allow-remote-upstream``: every
clone's ``info/refs`` and ``ls-refs`` reach the upstream, so a load test
through goblet also loads that forge; load only one you own.

Every loop is bounded twice: ``--requests`` per worker and ``--duration``
seconds in all (each request also has ``--timeout``). Results go to stdout as a
summary and, with ``--output FILE``, as JSON (``-`` for stdout). The exit status
is 0 only if at least one request ran and none failed.

Uses only the standard library and the ``git`` binary.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a script: make ``loadtest`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest import protocol

USER_AGENT = f"{protocol.AGENT} (goblet-loadtest)"
_SERVED_BY_TRACE = re.compile(r"<= Recv header: x-served-by: *(\S+)", re.IGNORECASE)
_REPO = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+")
KINDS = ("info_refs", "ls_refs", "fetch")
DEMO_UPSTREAM = "127.0.0.1:8443"  # loadtest/demo-upstream's default address
DEMO_REPOS = tuple(f"{DEMO_UPSTREAM}/demo/repo-{i}.git" for i in range(3))


# -- configuration -----------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Validated command-line settings."""

    url: str
    via: str
    mode: str
    git_op: str
    workers: int
    requests: int
    think_time_ms: float
    repos: tuple[str, ...]
    duration: float
    timeout: float
    depth: int
    ca: str | None
    auths: tuple[tuple[str, str], ...] = ()
    output: str | None = None
    progress: bool = True

    def public(self) -> dict[str, Any]:
        """The settings for the JSON report (credentials reduced to a count)."""
        return {
            "url": self.url, "via": self.via, "mode": self.mode,
            "git_op": self.git_op if self.mode == "clone" else None,
            "workers": self.workers, "requests_per_worker": self.requests,
            "think_time_ms": self.think_time_ms, "repos": list(self.repos),
            "duration_limit_sec": self.duration, "timeout_sec": self.timeout,
            "depth": self.depth, "tenants": len(self.auths) or 1,
        }


def parse_repo(text: str) -> str:
    """``host[:port]/path`` (an ``https://`` prefix is dropped); ValueError if malformed."""
    repo = text.strip()
    if repo.startswith("https://"):
        repo = repo[len("https://"):]
    repo = repo.rstrip("/")
    if not _REPO.fullmatch(repo) or any(s in (".", "..") for s in repo.split("/")):
        raise ValueError(f"repo must look like host/org/repo, not {text!r}")
    return repo


def repo_host(repo: str) -> str:
    """The host of ``host[:port]/path``, without the port."""
    authority = repo.split("/", 1)[0]
    return authority.rsplit(":", 1)[0] if ":" in authority else authority


def is_this_machine(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def remote_hosts(repos: Sequence[str]) -> list[str]:
    """The hosts of ``repos`` that are not this machine, sorted."""
    return sorted({h for h in map(repo_host, repos) if not is_this_machine(h)})


def parse_auth(value: str) -> list[tuple[str, str]]:
    """``user:password``, or ``@FILE`` with one ``user:password`` per line."""
    if value.startswith("@"):
        lines = Path(value[1:]).read_text(encoding="utf-8").splitlines()
        pairs = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    else:
        pairs = [value]
    out = []
    for pair in pairs:
        user, sep, password = pair.partition(":")
        if not sep or not user:
            raise ValueError("--auth wants user:password (the value is not shown)")
        out.append((user, password))
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line (the classic load-test flags plus the mode, target and bound options)."""
    p = argparse.ArgumentParser(
        description="Load-test goblet with valid git traffic; see docs/operations/load-testing.md",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--url", default="http://127.0.0.1:8080",
                   help="goblet address: path-prefix base URL (--via prefix) or forward "
                        "proxy (--via proxy)")
    p.add_argument("--via", choices=("prefix", "proxy"), default="prefix",
                   help="path-prefix URLs, or HTTPS through the forward proxy (CONNECT)")
    p.add_argument("--mode", choices=("protocol", "clone"), default="protocol",
                   help="hand-made v2 requests, or the real git client")
    p.add_argument("--git-op", choices=("clone", "fetch"), default="clone",
                   help="clone mode: a fresh clone per request, or clone once then fetch")
    p.add_argument("--workers", type=int, default=10, help="concurrent workers")
    p.add_argument("--requests", type=int, default=100,
                   help="requests per worker (protocol: HTTP requests; clone: git commands)")
    p.add_argument("--think-time", type=float, default=100,
                   help="pause, ms, after each iteration (protocol: a clone's three requests; "
                        "clone: one git command)")
    p.add_argument("--repos", nargs="+", default=list(DEMO_REPOS),
                   help="repositories as host/org/repo (default: loadtest/demo-upstream's)")
    p.add_argument("--allow-remote-upstream", action="store_true",
                   help="allow repositories on a host other than this machine: every clone's "
                        "ref requests reach that forge, so only name one you own")
    p.add_argument("--output", help="write the JSON report here ('-': stdout)")
    p.add_argument("--duration", type=float, default=300,
                   help="stop after this many seconds, however many requests are left")
    p.add_argument("--timeout", type=float, default=120, help="per-request timeout, seconds")
    p.add_argument("--depth", type=int, default=0, help="shallow fetches/clones of this depth")
    p.add_argument("--ca", help="CA certificate to trust: goblet's (--via proxy) or the "
                                "HTTPS front's")
    p.add_argument("--auth", action="append", default=[], metavar="USER:PASSWORD",
                   help="a tenant's credential (repeat for several tenants, assigned to "
                        "workers in turn); @FILE reads one per line, keeping them out of ps")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    return p


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """Parse and validate ``argv``; exits with status 2 on a bad value."""
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        repos = tuple(parse_repo(r) for r in a.repos)
        auths = tuple(pair for value in a.auth for pair in parse_auth(value))
    except (ValueError, OSError) as e:
        parser.error(str(e))
    remote = remote_hosts(repos)
    if remote and not a.allow_remote_upstream:
        parser.error(f"--repos names {', '.join(remote)}, not this machine: every clone's "
                     "info/refs and ls-refs would reach that forge. Load only a forge you own "
                     "and say so with --allow-remote-upstream (the default repositories are "
                     "loadtest/demo-upstream's, on this machine)")
    if remote:
        print(f"loadtest: warning: loading {', '.join(remote)}: every clone's info/refs and "
              "ls-refs reach it (--allow-remote-upstream)", file=sys.stderr, flush=True)
    url = a.url.rstrip("/")
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        parser.error(f"--url must be http(s)://host[:port][/path], not {a.url!r}")
    if a.via == "proxy" and urlsplit(url).path:
        parser.error("--via proxy takes the proxy address without a path")
    for name in ("workers", "requests"):
        if getattr(a, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if a.duration <= 0 or a.timeout <= 0 or a.think_time < 0 or a.depth < 0:
        parser.error("--duration and --timeout must be > 0; --think-time and --depth >= 0")
    if a.ca and not Path(a.ca).is_file():
        parser.error(f"--ca {a.ca}: no such file")
    return Config(url=url, via=a.via, mode=a.mode, git_op=a.git_op, workers=a.workers,
                  requests=a.requests, think_time_ms=a.think_time, repos=repos,
                  duration=a.duration, timeout=a.timeout, depth=a.depth, ca=a.ca,
                  auths=auths, output=a.output, progress=not a.quiet)


# -- results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """One request: what, where, how long, who answered, and why it failed."""

    kind: str
    repo: str
    seconds: float
    served_by: str = "-"
    error: str | None = None
    bytes: int = 0


def _summary_ms(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {k: 0.0 for k in ("min", "max", "mean", "median", "p95", "p99")}
    ms = sorted(s * 1000 for s in seconds)

    def rank(q: float) -> float:
        return ms[min(len(ms) - 1, max(0, int(q * len(ms) + 0.999999) - 1))]

    return {"min": round(ms[0], 2), "max": round(ms[-1], 2),
            "mean": round(statistics.fmean(ms), 2), "median": round(statistics.median(ms), 2),
            "p95": round(rank(0.95), 2), "p99": round(rank(0.99), 2)}


@dataclass
class Tally:
    """Thread-safe collection of results."""

    results: list[Result] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, result: Result) -> None:
        """Record one finished request."""
        with self.lock:
            self.results.append(result)

    def snapshot(self) -> list[Result]:
        """A copy of everything recorded so far."""
        with self.lock:
            return list(self.results)


def report(results: list[Result], elapsed: float, cfg: Config, stopped_by: str
           ) -> dict[str, Any]:
    """The JSON report (the classic load-test fields first, then goblet's additions)."""
    failed = [r for r in results if r.error is not None]
    total = len(results)
    routing: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        routing[r.repo][r.served_by] += 1
    by_kind = {}
    for kind in sorted({r.kind for r in results}):
        of_kind = [r for r in results if r.kind == kind]
        by_kind[kind] = {"requests": len(of_kind),
                         "failed": sum(1 for r in of_kind if r.error is not None),
                         "duration_ms": _summary_ms([r.seconds for r in of_kind])}
    return {
        "total_requests": total,
        "successful": total - len(failed),
        "failed": len(failed),
        "success_rate": round(100.0 * (total - len(failed)) / total, 2) if total else 0.0,
        "total_duration_sec": round(elapsed, 3),
        "requests_per_sec": round(total / elapsed, 2) if elapsed > 0 else 0.0,
        "duration_ms": _summary_ms([r.seconds for r in results]),
        "server_distribution": dict(Counter(r.served_by for r in results).most_common()),
        "repo_distribution": dict(Counter(r.repo for r in results).most_common()),
        "errors": dict(Counter(r.error for r in failed if r.error).most_common(20)),
        "by_kind": by_kind,
        "routing": {repo: dict(c) for repo, c in sorted(routing.items())},
        "bytes_received": sum(r.bytes for r in results),
        "stopped_by": stopped_by,
        "config": cfg.public(),
    }


def render_summary(rep: dict[str, Any]) -> str:
    """A short human-readable summary of a report."""
    d = rep["duration_ms"]
    lines = [
        f"requests: {rep['total_requests']}  ok: {rep['successful']}  failed: {rep['failed']}"
        f"  success rate: {rep['success_rate']:.2f}%",
        f"duration: {rep['total_duration_sec']:.1f}s  throughput: "
        f"{rep['requests_per_sec']:.1f} req/s  (stopped by {rep['stopped_by']})",
        f"latency ms: min {d['min']}  median {d['median']}  mean {d['mean']}  "
        f"p95 {d['p95']}  p99 {d['p99']}  max {d['max']}",
    ]
    for kind, k in rep["by_kind"].items():
        lines.append(f"  {kind:<9} {k['requests']:>7} req  {k['failed']:>5} failed  "
                     f"p50 {k['duration_ms']['median']} ms  p95 {k['duration_ms']['p95']} ms")
    lines.append("served by: " + ", ".join(f"{s}={n}" for s, n in
                                           rep["server_distribution"].items()))
    split = [repo for repo, servers in rep["routing"].items()
             if len([s for s in servers if s != "-"]) > 1]
    if split:
        lines.append(f"note: {len(split)} repo(s) were answered by more than one instance")
    for message, count in rep["errors"].items():
        lines.append(f"error x{count}: {message}")
    return "\n".join(lines)


# -- protocol mode -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """Status, lower-cased headers and body of one HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes


class HttpClient:
    """One worker's keep-alive connections to goblet (prefix) or through it (proxy)."""

    def __init__(self, cfg: Config, auth: tuple[str, str] | None) -> None:
        self.cfg = cfg
        parts = urlsplit(cfg.url)
        self.scheme = parts.scheme
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path
        self.context = ssl.create_default_context(cafile=cfg.ca) if cfg.ca else \
            ssl.create_default_context()
        self.headers = {"User-Agent": USER_AGENT, "Git-Protocol": "version=2"}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        self._conns: dict[str, http.client.HTTPConnection] = {}

    def _connection(self, upstream: str) -> tuple[http.client.HTTPConnection, bool]:
        key = upstream if self.cfg.via == "proxy" else ""
        conn = self._conns.get(key)
        if conn is not None:
            return conn, True
        timeout = self.cfg.timeout
        if self.cfg.via == "proxy":
            host, _, port = upstream.partition(":")
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=self.context)
            conn.set_tunnel(host, int(port or 443))
        elif self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=self.context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        self._conns[key] = conn
        return conn, False

    def send(self, method: str, repo: str, suffix: str, body: bytes | None) -> Answer:
        """One request for ``repo`` (``host/path``); retried once on a stale keep-alive."""
        upstream, _, path = repo.partition("/")
        target = f"/{path}{suffix}" if self.cfg.via == "proxy" else \
            f"{self.base_path}/{repo}{suffix}"
        headers = dict(self.headers)
        if body is not None:
            headers["Content-Type"] = "application/x-git-upload-pack-request"
            headers["Accept"] = protocol.RESULT_TYPE
        for attempt in (1, 2):
            conn, reused = self._connection(upstream)
            try:
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close(upstream)
                if reused and attempt == 1:
                    continue
                raise
            except BaseException:
                self.close(upstream)
                raise
            if resp.will_close:
                self.close(upstream)
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        raise AssertionError("unreachable")

    def close(self, upstream: str | None = None) -> None:
        """Close one connection (or all)."""
        keys = list(self._conns) if upstream is None else \
            [upstream if self.cfg.via == "proxy" else ""]
        for key in keys:
            conn = self._conns.pop(key, None)
            if conn is not None:
                conn.close()


def _expect(answer: Answer, kind: str, content_type: str) -> None:
    if answer.status != 200:
        first = answer.body[:120].decode("utf-8", "replace").strip().splitlines()
        detail = f": {first[0]}" if first else ""
        raise protocol.ProtocolError(f"HTTP {answer.status}{detail}")
    got = answer.headers.get("content-type", "").split(";")[0].strip()
    if got != content_type:
        raise protocol.ProtocolError(f"content type {got or 'none'!r}, not {content_type}")


def protocol_iteration(client: HttpClient, repo: str, cfg: Config, budget: int,
                       record: Callable[[Result], None]) -> int:
    """The requests of one v2 clone of ``repo`` (at most ``budget``); returns how many ran.

    A step that fails ends the iteration: the next step needs its answer.
    """
    steps = 0
    tip = ""
    for kind in KINDS[:budget]:
        started = time.monotonic()
        served_by, size = "-", 0
        try:
            if kind == "info_refs":
                answer = client.send("GET", repo, "/info/refs?service=git-upload-pack", None)
            elif kind == "ls_refs":
                answer = client.send("POST", repo, "/git-upload-pack",
                                     protocol.ls_refs_request())
            else:
                answer = client.send("POST", repo, "/git-upload-pack",
                                     protocol.fetch_request([tip], depth=cfg.depth))
            served_by = answer.headers.get("x-served-by", "-")
            size = len(answer.body)
            if kind == "info_refs":
                _expect(answer, kind, protocol.ADVERTISEMENT_TYPE)
                if protocol.check_info_refs(answer.body).version != 2:
                    raise protocol.ProtocolError("server did not answer in protocol v2")
            elif kind == "ls_refs":
                _expect(answer, kind, protocol.RESULT_TYPE)
                tip = protocol.check_ls_refs(answer.body).tip()
            else:
                _expect(answer, kind, protocol.RESULT_TYPE)
                protocol.check_fetch(answer.body)
            error = None
        except protocol.ProtocolError as e:
            error = f"{kind}: {e}"
        except (OSError, http.client.HTTPException) as e:
            error = f"{kind}: {type(e).__name__}: {e}"[:300]
        record(Result(kind, repo, time.monotonic() - started, served_by, error, size))
        steps += 1
        if error is not None:
            break
    return steps


# -- clone mode --------------------------------------------------------------------


class GitRunner:
    """One worker's git client: an isolated HOME, its clones, and traced headers."""

    def __init__(self, cfg: Config, auth: tuple[str, str] | None, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.trace = workdir / "curl-trace.log"
        self.clones: dict[str, Path] = {}
        self.count = 0
        config: list[tuple[str, str]] = []
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            config.append(("http.extraHeader", f"Authorization: Basic {token}"))
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home), "LANG": "C", "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": "",
            "GIT_TRACE_CURL": str(self.trace), "GIT_TRACE_CURL_NO_DATA": "1",
        }
        if cfg.ca:
            self.env["GIT_SSL_CAINFO"] = cfg.ca
        elif "GIT_SSL_CAINFO" in os.environ:
            self.env["GIT_SSL_CAINFO"] = os.environ["GIT_SSL_CAINFO"]
        if cfg.via == "proxy":
            for name in ("HTTPS_PROXY", "https_proxy"):
                self.env[name] = cfg.url
            self.env["NO_PROXY"] = self.env["no_proxy"] = ""
        else:
            hosts = sorted({repo.split("/", 1)[0] for repo in cfg.repos})
            for host in hosts:
                config.append((f"url.{cfg.url}/{host}/.insteadOf", f"https://{host}/"))
        self.env["GIT_CONFIG_COUNT"] = str(len(config))
        for i, (key, value) in enumerate(config):
            self.env[f"GIT_CONFIG_KEY_{i}"] = key
            self.env[f"GIT_CONFIG_VALUE_{i}"] = value

    def _run(self, args: list[str], cwd: Path) -> tuple[int, str]:
        self.trace.unlink(missing_ok=True)
        proc = subprocess.Popen(["git", *args], cwd=cwd, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=self.cfg.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return -1, f"timed out after {self.cfg.timeout:.0f}s"
        return proc.returncode, err.decode("utf-8", "replace")

    def served_by(self) -> str:
        """The last X-Served-By header of the last git command ('-' if none)."""
        try:
            text = self.trace.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "-"
        found = _SERVED_BY_TRACE.findall(text)
        return found[-1] if found else "-"

    def operate(self, repo: str) -> Result:
        """One git command for ``repo``: a clone, or a fetch into this worker's clone."""
        started = time.monotonic()
        existing = self.clones.get(repo)
        if self.cfg.git_op == "fetch" and existing is not None:
            kind, args, cwd = "fetch", ["fetch", "--quiet", "origin"], existing
        else:
            self.count += 1
            dest = self.workdir / f"clone-{self.count}"
            kind, cwd = "clone", self.workdir
            args = ["clone", "--quiet", "--no-checkout", f"https://{repo}", str(dest)]
            if self.cfg.depth:
                args[1:1] = ["--depth", str(self.cfg.depth)]
        if self.cfg.depth and kind == "fetch":
            args[1:1] = ["--depth", str(self.cfg.depth)]
        code, stderr = self._run(args, cwd)
        seconds = time.monotonic() - started
        error = None
        if code != 0:
            lines = [line.strip() for line in stderr.splitlines() if line.strip()]
            error = f"git {kind}: " + (lines[-1] if lines else f"exit status {code}")[:300]
        if kind == "clone":
            if error is None and self.cfg.git_op == "fetch":
                self.clones[repo] = dest
            else:
                shutil.rmtree(dest, ignore_errors=True)
        return Result(kind, repo, seconds, self.served_by(), error)


# -- running -----------------------------------------------------------------------


class Progress(threading.Thread):
    """Prints a live progress line to stderr until stopped."""

    def __init__(self, tally: Tally, total: int, started: float, stop: threading.Event
                 ) -> None:
        super().__init__(name="progress", daemon=True)
        self.tally, self.total, self.started, self.stop_event = tally, total, started, stop
        self.tty = sys.stderr.isatty()

    def line(self) -> str:
        """The current progress line."""
        results = self.tally.snapshot()
        elapsed = max(1e-6, time.monotonic() - self.started)
        failed = sum(1 for r in results if r.error is not None)
        recent = sorted(r.seconds for r in results[-500:])
        p95 = recent[int(0.95 * (len(recent) - 1))] * 1000 if recent else 0.0
        return (f"[{elapsed:6.1f}s] {len(results)}/{self.total} requests  "
                f"{len(results) / elapsed:7.1f} req/s  failed {failed}  p95 {p95:.0f} ms")

    def run(self) -> None:
        """Print every 0.5 s on a terminal (one rewritten line), every 5 s otherwise."""
        interval = 0.5 if self.tty else 5.0
        while not self.stop_event.wait(interval):
            if self.tty:
                sys.stderr.write("\r" + self.line() + "\x1b[K")
            else:
                sys.stderr.write(self.line() + "\n")
            sys.stderr.flush()

    def finish(self) -> None:
        """Print the final line."""
        sys.stderr.write(("\r" if self.tty else "") + self.line() + ("\x1b[K\n"))
        sys.stderr.flush()


def run(cfg: Config) -> dict[str, Any]:
    """Run the load test described by ``cfg``; return the report."""
    tally = Tally()
    stop = threading.Event()
    started = time.monotonic()
    deadline = started + cfg.duration
    stopped_by = ["requests"]
    workroot = Path(tempfile.mkdtemp(prefix="goblet-loadtest-"))

    def worker(index: int) -> None:
        auth = cfg.auths[index % len(cfg.auths)] if cfg.auths else None
        done = 0
        iteration = 0
        client = HttpClient(cfg, auth) if cfg.mode == "protocol" else None
        runner = GitRunner(cfg, auth, workroot / f"w{index}") if cfg.mode == "clone" else None
        try:
            while done < cfg.requests and not stop.is_set():
                if time.monotonic() >= deadline:
                    stopped_by[0] = "duration"
                    return
                repo = cfg.repos[(index + iteration) % len(cfg.repos)]
                iteration += 1
                if client is not None:
                    done += protocol_iteration(client, repo, cfg, cfg.requests - done,
                                               tally.add)
                else:
                    assert runner is not None
                    tally.add(runner.operate(repo))
                    done += 1
                if cfg.think_time_ms and done < cfg.requests:
                    stop.wait(cfg.think_time_ms / 1000)
        finally:
            if client is not None:
                client.close()

    threads = [threading.Thread(target=worker, args=(i,), name=f"worker-{i}", daemon=True)
               for i in range(cfg.workers)]
    progress = Progress(tally, cfg.workers * cfg.requests, started, stop) \
        if cfg.progress else None
    if progress is not None:
        progress.start()
    try:
        for t in threads:
            t.start()
        hard_stop = deadline + cfg.timeout + 30
        for t in threads:
            while t.is_alive() and time.monotonic() < hard_stop:
                t.join(0.2)
    except KeyboardInterrupt:
        stopped_by[0] = "interrupt"
        stop.set()
        for t in threads:
            t.join(cfg.timeout + 5)
    finally:
        stop.set()
        if progress is not None:
            progress.join(1)
            progress.finish()
        shutil.rmtree(workroot, ignore_errors=True)
    return report(tally.snapshot(), time.monotonic() - started, cfg, stopped_by[0])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run, print the summary, write the JSON; 0 only if nothing failed."""
    cfg = parse_config(argv)
    rep = run(cfg)
    text = json.dumps(rep, indent=2)
    summary = render_summary(rep)
    if cfg.output and cfg.output != "-":
        Path(cfg.output).write_text(text + "\n", encoding="utf-8")  # before any printing
    try:
        if cfg.output == "-":
            print(summary, file=sys.stderr)
            print(text)
        else:
            print(summary)
    except BrokenPipeError:  # e.g. `| head`: the report file is already written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # quiet exit
    return 0 if rep["total_requests"] and not rep["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
