"""The servers and clients of one benchmark session, all on 127.0.0.1.

* ``wan``: the tests' HTTPS ``git http-backend`` upstream with the emulated WAN (a fixed delay
  before the first byte of every git response, and a pacing cap on every response body);
* ``floor``: a second instance of the same server over the *same* repositories, without WAN
  emulation (the local floor, and the loopback upstream of the large-repo and load phases);
* ``goblet``: mitmdump with the addon, caching both upstream hosts;
* ``plain``: mitmdump without the addon (the cost of interception alone);
* ``canned``: a memoizing front of ``floor`` for the request-rate test (``bench.canned``).

Access logs are read incrementally (:class:`LogTail`) to count what each run caused.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.canned import CannedUpstream
from bench.genrepo import link_copy
from bench.rss import cpu_seconds
from tests.support.gitclient import GitClient
from tests.support.proxy import GobletProxy, ensure_ca
from tests.support.upstream_client import UpstreamServer
from tests.support.upstream_state import ALL_KINDS

_UPSTREAM_LINE = re.compile(
    r'"(?P<method>\S+) (?P<path>\S+)" (?P<status>\S+) kind=(?P<kind>\S+) .*?'
    r"in=(?P<in>\d+) out=(?P<out>\d+) ms=(?P<ms>\d+)"
)
_PROXY_LINE = re.compile(
    r"git (?P<kind>\S+) (?P<url>\S+) tenant=\S+ outcome=(?P<outcome>\S+) status=(?P<status>\S+) "
    r"bytes=(?P<bytes>\S+) duration=(?P<duration>[\d.]+)s"
)
# Two generations of the addon's fill line: "filled URL: N refs in Xs" and
# "fill URL result=ok bytes=N duration=Xs".
_FILL_LINE = re.compile(r"filled (?P<url>\S+): \d+ refs in (?P<seconds>[\d.]+)s"
                        r"|fill (?P<url2>\S+) result=ok bytes=\d+ duration=(?P<seconds2>[\d.]+)s")
_METRIC_LINE = re.compile(r"^(goblet_[a-z_]+_total(?:\{[^}]*\})?) ([0-9.e+-]+)$", re.M)
# Proxy-wide counters read from goblet's /metrics around every step (absent in old addons).
PACK_CACHE = "goblet_pack_cache_requests_total"


class LogTail:
    """Reads what a growing log file gained since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def read_new(self) -> str:
        """Complete lines appended since the previous call."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return ""
        cut = data.rfind(b"\n") + 1
        self.offset += cut
        return data[:cut].decode("utf-8", "replace")

    def size(self) -> int:
        """Current size of the file (0 if missing)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0


def settle(tails: list[LogTail], quiet: float = 0.1, limit: float = 3.0) -> None:
    """Wait until none of the files has grown for ``quiet`` seconds (at most ``limit``)."""
    deadline = time.monotonic() + limit
    sizes = [t.size() for t in tails]
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = [t.size() for t in tails]
        if now == sizes:
            return
        sizes = now


def upstream_lines(text: str) -> list[dict[str, Any]]:
    """Parsed git/api request lines of the upstream's log (control requests left out)."""
    out = []
    for m in _UPSTREAM_LINE.finditer(text):
        if m["kind"] != "control":
            out.append({"kind": m["kind"], "status": m["status"], "in": int(m["in"]),
                        "out": int(m["out"]), "ms": int(m["ms"]), "path": m["path"]})
    return out


def proxy_lines(text: str) -> dict[str, Any]:
    """Access-log lines and fills in the proxy's log."""
    flows = [
        {"kind": m["kind"], "url": m["url"], "outcome": m["outcome"], "status": m["status"],
         "bytes": int(m["bytes"]) if m["bytes"].isdigit() else None,
         "duration": float(m["duration"])}
        for m in _PROXY_LINE.finditer(text)
    ]
    fills = [{"url": m["url"] or m["url2"], "seconds": float(m["seconds"] or m["seconds2"])}
             for m in _FILL_LINE.finditer(text)]
    return {"flows": flows, "fills": fills}


@dataclass
class Traffic:
    """What one measured step caused upstream and in the proxy."""

    upstream: dict[str, int] = field(default_factory=dict)
    upstream_bytes_out: int = 0
    proxy_cache_serves: int = 0
    proxy_upstream_fetches: int = 0
    proxy_errors: int = 0
    fills: int = 0
    proxy_metrics: dict[str, float] = field(default_factory=dict)
    # Access-log durations of the fetches the proxy answered from its cache: request in to
    # last byte out (the client's index-pack runs meanwhile, so it is an upper bound).
    proxy_serve_s: list[float] = field(default_factory=list)

    @property
    def upload_pack_runs(self) -> int:
        """upload-pack processes the proxy ran: pack-cache bypasses and productions, or (for
        an addon without a pack cache) every fetch it served from the cache."""
        roles = {k: v for k, v in self.proxy_metrics.items() if k.startswith(PACK_CACHE)}
        if not roles:
            return self.proxy_cache_serves
        return int(sum(v for k, v in roles.items()
                       if 'result="bypass"' in k or 'result="produce"' in k))

    def pack_cache(self, role: str) -> int:
        """Pack-cache answers of ``role`` (hit, follow, produce, bypass) in the step."""
        return int(self.proxy_metrics.get(f'{PACK_CACHE}{{result="{role}"}}', 0))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "upstream": self.upstream, "upstream_bytes_out": self.upstream_bytes_out,
            "proxy_cache_serves": self.proxy_cache_serves,
            "proxy_upstream_fetches": self.proxy_upstream_fetches,
            "proxy_errors": self.proxy_errors, "fills": self.fills,
            "proxy_upload_pack_runs": self.upload_pack_runs,
            "proxy_metrics": self.proxy_metrics,
            "proxy_serve_s": self.proxy_serve_s,
        }


def scrape_metrics(port: int) -> dict[str, float]:
    """goblet's ``*_total`` counters from ``http://127.0.0.1:PORT/metrics`` ({} if none)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
    except OSError:
        return {}
    finally:
        conn.close()
    if resp.status != 200:
        return {}
    return {m[1]: float(m[2]) for m in _METRIC_LINE.finditer(body)}


class Meter:
    """Counts upstream requests, upstream bytes and proxy outcomes over a step (of goblet,
    or of another goblet proxy: ``proxy``)."""

    def __init__(self, env: BenchEnv, proxy: GobletProxy | None = None) -> None:
        self.env = env
        self.proxy = proxy or env.goblet
        self._before: dict[str, dict[str, int]] = {}
        self._tails: dict[str, LogTail] = {}
        self._metrics: dict[str, float] = {}

    def start(self) -> Meter:
        """Snapshot the counters and log offsets; returns self."""
        for name, server in self.env.upstreams.items():
            self._before[name] = counters(server.stats())
            self._tails[name] = LogTail(server.log_path)
        self._tails["goblet"] = LogTail(self.proxy.log_path)
        self._metrics = scrape_metrics(self.proxy.port)
        return self

    def collect(self) -> dict[str, Traffic]:
        """Per upstream name: what the step caused (after the logs have settled)."""
        settle(list(self._tails.values()))
        proxy = proxy_lines(self._tails["goblet"].read_new())
        after_metrics = scrape_metrics(self.proxy.port)
        metrics = {k: v - self._metrics.get(k, 0.0) for k, v in after_metrics.items()}
        metrics = {k: v for k, v in metrics.items() if v}
        result: dict[str, Traffic] = {}
        for name, server in self.env.upstreams.items():
            after = counters(server.stats())
            delta = {k: after[k] - self._before[name].get(k, 0) for k in after}
            delta = {k: v for k, v in delta.items() if v}
            lines = upstream_lines(self._tails[name].read_new())
            host = server.host
            mine = [f for f in proxy["flows"] if f"//{host}/" in f["url"]]
            result[name] = Traffic(
                upstream=delta,
                upstream_bytes_out=sum(line["out"] for line in lines),
                proxy_cache_serves=sum(1 for f in mine if f["kind"] == "fetch"
                                       and f["outcome"] == "cache"),
                proxy_upstream_fetches=sum(1 for f in mine if f["kind"] == "fetch"
                                           and f["outcome"] == "upstream"),
                proxy_errors=sum(1 for f in mine if f["outcome"] == "error"),
                fills=sum(1 for f in proxy["fills"] if f"//{host}/" in f["url"]),
                proxy_metrics=metrics,
                proxy_serve_s=[f["duration"] for f in mine
                               if f["kind"] == "fetch" and f["outcome"] == "cache"],
            )
        return result


def cache_repo_path(cache_dir: Path, url: str) -> Path:
    """Where goblet keeps the bare repo of an upstream URL (``goblet.cache.store`` layout:
    ``repos/<sha256 of the canonical URL>.git``)."""
    return cache_dir / "repos" / f"{hashlib.sha256(url.encode()).hexdigest()}.git"


def count_objects(repo: Path) -> dict[str, int]:
    """``git count-objects -v`` of ``repo`` as numbers (count, packs, size-pack, ...)."""
    res = subprocess.run(["git", "count-objects", "-v"], cwd=repo, capture_output=True,
                         text=True, check=False, timeout=120)
    out: dict[str, int] = {}
    for line in res.stdout.splitlines():
        name, _, value = line.partition(":")
        if value.strip().isdigit():
            out[name.strip()] = int(value.strip())
    return out


def pack_files(repo: Path) -> list[str]:
    """Kinds of the files in ``objects/pack`` (pack, idx, bitmap, multi-pack-index...), one
    entry per file."""
    pack_dir = repo / "objects" / "pack"
    if not pack_dir.is_dir():
        return []
    return sorted(
        "multi-pack-index" + ("-bitmap" if p.name.endswith(".bitmap") else "")
        if p.name.startswith("multi-pack-index") else p.name.rsplit(".", 1)[1]
        for p in pack_dir.iterdir() if p.name.startswith(("pack-", "multi-pack-index")))


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, zombies included (their CPU time reaches ``pid``'s
    ``cutime`` only once they are reaped)."""
    table: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
            except OSError:
                continue
            table[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    parents = {pid}
    changed = True
    while changed:
        changed = False
        for child, parent in table.items():
            if parent in parents and child not in parents:
                parents.add(child)
                found.append(child)
                changed = True
    return found


def server_cpu(pid: int | None, limit: float = 10.0) -> float | None:
    """CPU seconds used so far by the server ``pid`` and its reaped children (for mitmdump:
    its upload-pack and pack-objects processes; for an upstream: its CGI processes), read
    from /proc/<pid>/stat (utime + stime + cutime + cstime) once no child of it is left
    (waiting at most ``limit`` seconds)."""
    if pid is None:
        return None
    deadline = time.monotonic() + limit
    while descendants(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return cpu_seconds(pid, children=True)


def counters(stats: dict[str, Any]) -> dict[str, int]:
    """The numeric counters of an upstream stats snapshot, plus ``requests`` (their sum)."""
    out = {k: int(stats.get(k, 0)) for k in ALL_KINDS}
    out["requests"] = sum(out[k] for k in ALL_KINDS)
    out["pack_bytes"] = int(stats.get("pack_bytes", 0))
    return out


class BenchEnv:
    """Starts and stops the servers; hands out git clients."""

    def __init__(self, workdir: Path, *, latency_ms: float, rate_mbit: float) -> None:
        self.workdir = workdir
        self.latency_ms = latency_ms
        self.rate_mbit = rate_mbit
        self.repos_dir = workdir / "wan" / "repos"
        self.config: dict[str, Any] = {"users": {}, "repos": {}}
        self.upstreams: dict[str, UpstreamServer] = {}
        self.confdir = workdir / "confdir"
        self.clones = workdir / "clones"
        self._goblet: GobletProxy | None = None
        self._plain: GobletProxy | None = None
        self._canned: CannedUpstream | None = None
        self.upstream_ca: Path | None = None
        # Further goblet proxies some phases start with other options (by name).
        self.extras: dict[str, GobletProxy] = {}

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> BenchEnv:
        """Start both upstreams and both proxies."""
        self.repos_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "floor").mkdir(parents=True, exist_ok=True)
        floor_repos = self.workdir / "floor" / "repos"
        if not floor_repos.exists():
            floor_repos.symlink_to(self.repos_dir, target_is_directory=True)
        self.clones.mkdir(parents=True, exist_ok=True)
        wan = UpstreamServer(self.workdir / "wan", self.config,
                             latency_ms=int(self.latency_ms), rate_mbit=self.rate_mbit)
        floor = UpstreamServer(self.workdir / "floor", self.config)
        self.upstreams = {"wan": wan, "floor": floor}
        wan.start()
        floor.start()
        self._canned = CannedUpstream(self.workdir / "canned", target_port=floor.port,
                                      target_ca=floor.cert_path).start()
        bundle = self.workdir / "upstreams-ca.pem"
        bundle.write_bytes(wan.cert_path.read_bytes() + floor.cert_path.read_bytes()
                           + self._canned.cert_path.read_bytes())
        self.upstream_ca = bundle
        ensure_ca(self.confdir)
        self._goblet = GobletProxy(
            self.workdir / "goblet", hosts=[wan.host, floor.host, self._canned.host],
            upstream_ca=bundle,
            confdir=self.confdir, cache_dir=self.workdir / "goblet" / "cache",
        ).start()
        self._plain = GobletProxy(
            self.workdir / "plain", hosts=[], upstream_ca=bundle, confdir=self.confdir,
            addon=False,
        ).start()
        return self

    def start_proxy(self, name: str, sets: dict[str, str]) -> GobletProxy:
        """Start another goblet (its own cache dir under ``<workdir>/<name>``) caching both
        upstreams, with ``--set`` options ``sets``; git clients reach it as ``via=name``."""
        if name in self.extras or name in ("goblet", "plain") or name.startswith("direct"):
            raise ValueError(f"proxy name {name!r} is taken")
        proxy = GobletProxy(
            self.workdir / name, hosts=[self.wan.host, self.floor.host],
            upstream_ca=self.upstream_ca, confdir=self.confdir,
            cache_dir=self.workdir / name / "cache", sets=sets,
        )
        self.extras[name] = proxy
        proxy.start()
        return proxy

    def stop_proxy(self, name: str) -> None:
        """Stop a proxy of :meth:`start_proxy` (its log and cache stay)."""
        proxy = self.extras.get(name)
        if proxy is not None:
            proxy.stop()

    def stop(self) -> None:
        """Stop everything that was started (proxies first)."""
        for proxy in (self._goblet, self._plain, *self.extras.values()):
            if proxy is not None:
                proxy.stop()
        for server in self.upstreams.values():
            server.stop()
        if self._canned is not None:
            self._canned.stop()

    def __enter__(self) -> BenchEnv:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- parts ---------------------------------------------------------------------------

    @property
    def goblet(self) -> GobletProxy:
        """mitmdump with the addon."""
        assert self._goblet is not None
        return self._goblet

    @property
    def plain(self) -> GobletProxy:
        """mitmdump without the addon."""
        assert self._plain is not None
        return self._plain

    @property
    def canned(self) -> CannedUpstream:
        """The memoizing front of the floor upstream."""
        assert self._canned is not None
        return self._canned

    @property
    def wan(self) -> UpstreamServer:
        """The upstream behind the emulated WAN."""
        return self.upstreams["wan"]

    @property
    def floor(self) -> UpstreamServer:
        """The same upstream on plain loopback."""
        return self.upstreams["floor"]

    def add_repo(self, name: str, source: Path, *, link: bool = True) -> Path:
        """Put a copy of ``source`` on both upstreams as ``name``; public, anonymous read."""
        dest = self.repos_dir / name
        if dest.exists():
            shutil.rmtree(dest)
        if link:
            link_copy(source, dest)
        else:
            shutil.copytree(source, dest)
        self.config["repos"][name] = {"public": True, "readers": [], "writers": []}
        for server in self.upstreams.values():
            server.set_config(self.config)
        return dest

    def client(self, name: str, via: str) -> GitClient:
        """A git client: ``via`` is ``goblet``, ``plain`` or ``direct``."""
        home = self.workdir / "homes" / name
        if via == "goblet":
            return GitClient(home, ca_file=self.goblet.ca_cert, proxy=self.goblet.url)
        if via == "plain":
            return GitClient(home, ca_file=self.plain.ca_cert, proxy=self.plain.url)
        if via == "direct-wan":
            return GitClient(home, ca_file=self.wan.cert_path)
        if via == "direct-floor":
            return GitClient(home, ca_file=self.floor.cert_path)
        if via == "direct-canned":
            return GitClient(home, ca_file=self.canned.cert_path)
        if via in self.extras:
            return GitClient(home, ca_file=self.extras[via].ca_cert, proxy=self.extras[via].url)
        raise ValueError(via)

    def fresh_dir(self, name: str) -> Path:
        """An absent path under clones/ (removing what was there)."""
        path = self.clones / name
        if path.exists():
            shutil.rmtree(path)
        return path

    def disk_free_gib(self) -> float:
        """Free space where the clones go."""
        st = os.statvfs(self.clones)
        return st.f_bavail * st.f_frsize / 2**30
