"""The local fleet (``loadtest/run-local``) with real HAProxy, Prometheus, goblets and git.

Sharded topology (three instances, separate cache dirs, HAProxy hashing
``/<host>/<repo>`` onto their path-prefix ports):

- HAProxy's health checks and Prometheus see all three instances up;
- every request of one repository -- v2 and v0 ``info/refs``, ``ls-refs``,
  ``fetch``, a push's ``info/refs``, a real ``git clone`` -- is answered by one
  instance (``X-Served-By``, and HAProxy's own log agrees), and repositories do
  spread over the instances;
- concurrent clones (``loadtest.py --mode clone``) fill each repository exactly
  once across the fleet: one ``fill`` log line (clones that come while the
  first one's answer streams into the cache pass upstream rather than wait for
  it), and Prometheus counts the same fills;
- tenants' credentials pass through HAProxy: the upstream still decides;
- when an instance dies, only its repositories move (consistent hashing).

Shared topology (the design for forward-proxy clients): HAProxy in TCP mode in
front of three processes sharing one cache dir. Concurrent real clones through
``HTTPS_PROXY`` land on several processes and fill one cache repo per
repository (a clone finding another process filling it passes upstream rather
than wait); later clones through any process download no pack upstream.

Needs Debian's ``haproxy`` and ``prometheus``; fails (never skips) without them.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Repos, count
from tests.support import rawhttp
from tests.support.cachedir import settle
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.net import http_get, wait_for
from tests.support.proxy import REPO_ROOT, mitmdump_binary
from tests.support.repos import list_refs
from tests.support.upstream_client import UpstreamServer

RUN_LOCAL = REPO_ROOT / "loadtest" / "run-local"
LOADTEST = REPO_ROOT / "loadtest" / "loadtest.py"
_SERVED_BY = re.compile(r"<= Recv header: x-served-by: *(\S+)", re.IGNORECASE)
_HAPROXY_LINE = re.compile(r" goblet_\w+/(?P<server>goblet-\d) .* repo=(?P<repo>\S+) ")


def require_packages() -> None:
    """Fail with the apt command when HAProxy or Prometheus is missing (never skip)."""
    for binary, package in (("haproxy", "haproxy"), ("prometheus", "prometheus")):
        if not (shutil.which(binary) or Path(f"/usr/sbin/{binary}").exists()):
            pytest.fail(f"{binary} is missing: `apt-get install -y {package}` "
                        "(.ci/run must install it)")


@dataclass
class Fleet:
    """A running ``run-local`` fleet, as its topology.json describes it."""

    run_dir: Path
    state: dict[str, Any]

    def port(self, name: str) -> int:
        """Port of ``haproxy.http``, ``haproxy.stats``, ``haproxy.connect`` or ``prometheus``."""
        section, _, key = name.partition(".")
        value = self.state[section][key] if key else self.state[section]
        return int(value.rsplit(":", 1)[1])

    def prefix(self, upstream: UpstreamServer, name: str) -> str:
        """The repo's path-prefix URL through HAProxy."""
        return f"http://127.0.0.1:{self.port('haproxy.http')}/{upstream.host}/{name}"

    def logs(self) -> str:
        """Every instance's mitmdump log, concatenated."""
        return "".join((self.run_dir / i["name"] / "mitmdump.log").read_text(errors="replace")
                       for i in self.state["instances"])

    def fills(self, url: str) -> int:
        """How many successful fills of ``url`` the whole fleet logged."""
        return len(re.findall(rf"fill {re.escape(url)} result=ok ", self.logs()))

    def servers(self) -> dict[str, dict[str, str]]:
        """HAProxy's ``backend/server`` → {status, check_status} (CSV stats)."""
        status, body = http_get(self.port("haproxy.stats"), "/;csv")
        assert status == 200, body
        header, *rows = body.lstrip("# ").splitlines()
        names = header.split(",")
        out = {}
        for row in rows:
            cells = dict(zip(names, row.split(","), strict=False))
            if cells.get("svname") not in ("FRONTEND", "BACKEND", None):
                out[f"{cells['pxname']}/{cells['svname']}"] = {
                    "status": cells["status"], "check": cells["check_status"]}
        return out

    def prometheus(self, expr: str) -> float | None:
        """A one-value instant query (None before the first result)."""
        query = urllib.parse.urlencode({"query": expr})
        try:
            status, body = http_get(self.port("prometheus"), f"/api/v1/query?{query}")
        except OSError:
            return None
        result = json.loads(body)["data"]["result"] if status == 200 else []
        return float(result[0]["value"][1]) if result else None


def run_local(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run ``loadtest/run-local ARGS`` with the test's interpreter."""
    return subprocess.run([sys.executable, str(RUN_LOCAL), *args], capture_output=True,
                          text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def start_fleet(run_dir: Path, upstream: UpstreamServer, confdir: Path, topology: str
                ) -> Fleet:
    """``run-local start --detach`` on free ports; the fleet it reports."""
    require_packages()
    res = run_local(
        "start", "--detach", "--topology", topology, "--run-dir", str(run_dir),
        "--hosts", upstream.host, "--upstream-ca", str(upstream.cert_path),
        "--certs", str(confdir), "--mitmdump", mitmdump_binary(),
        "--port", "0", "--stats-port", "0", "--connect-port", "0", "--prometheus-port", "0",
        "--base-port", "0", "--scrape-interval", "1s", "--start-timeout", "60",
        "--set", "goblet_upstream_timeout=10")
    assert res.returncode == 0, f"run-local start failed:\n{res.stdout}\n{res.stderr}"
    assert "goblet fleet up" in res.stdout
    return Fleet(run_dir, json.loads((run_dir / "topology.json").read_text()))


def stop_fleet(fleet: Fleet) -> None:
    """``run-local stop``; every recorded process must be gone."""
    res = run_local("stop", "--run-dir", str(fleet.run_dir), timeout=60)
    assert res.returncode == 0, res.stderr
    for pid in fleet.state["pids"].values():
        assert not Path(f"/proc/{pid}/cmdline").exists() or \
            str(fleet.run_dir) not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")


def traced_clone(git: GitClient, url: str, dest: Path, *config: str) -> set[str]:
    """``git clone`` with curl tracing; the X-Served-By values it received."""
    trace = dest.with_name(dest.name + ".trace")
    git.run("clone", "--quiet", url, str(dest), config=config,
            env={"GIT_TRACE_CURL": str(trace), "GIT_TRACE_CURL_NO_DATA": "1"})
    return set(_SERVED_BY.findall(trace.read_text(errors="replace")))


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer,
          confdir: Path) -> Iterator[Fleet]:
    """The sharded fleet, for the whole module."""
    started = start_fleet(tmp_path_factory.mktemp("fleet"), upstream, confdir, "sharded")
    try:
        yield started
    finally:
        stop_fleet(started)


@pytest.fixture(scope="module")
def owners() -> dict[str, str]:
    """Repo name → the instance that served it (filled by the routing test)."""
    return {}


# -- sharded topology ----------------------------------------------------------------


def test_haproxy_and_prometheus_see_all_three_instances(fleet: Fleet) -> None:
    servers = fleet.servers()
    assert servers == {f"goblet_shards/goblet-{n}": {"status": "UP", "check": "L7OK"}
                       for n in (1, 2, 3)}
    status = run_local("status", "--run-dir", str(fleet.run_dir))
    assert status.returncode == 0, status.stdout + status.stderr
    assert wait_for("prometheus to scrape three goblets",
                    lambda: fleet.prometheus('sum(up{job="goblet"})') == 3 or None)
    instances = fleet.prometheus('count(goblet_ready{job="goblet",'
                                 'instance=~"goblet-[123]"} == 1)')
    assert instances == 3
    status, body = http_get(fleet.port("prometheus"), "/api/v1/rules")
    groups = {g["name"]: g for g in json.loads(body)["data"]["groups"]} if status == 200 else {}
    assert "goblet" in groups, "run-local's Prometheus did not load alerts.yml"
    assert all(r["health"] != "err" for r in groups["goblet"]["rules"])
    for name, pid in fleet.state["pids"].items():
        assert (fleet.run_dir / name / f"{name}.pid").read_text().strip() == str(pid)


def test_every_request_of_a_repo_reaches_one_instance(
    fleet: Fleet, repos: Repos, upstream: UpstreamServer, tmp_path: Path,
    owners: dict[str, str],
) -> None:
    git = GitClient(tmp_path / "home", ca_file=upstream.cert_path)  # plain HTTP to HAProxy
    port = fleet.port("haproxy.http")
    names = [repos.create(commits=4) for _ in range(12)]
    seen: dict[str, set[str]] = defaultdict(set)
    for name in names:
        base = f"/{upstream.host}/{name}"
        seen[name] |= traced_clone(git, fleet.prefix(upstream, name), tmp_path / name)
        tip = list_refs(repos.path(name))["refs/heads/main"]
        requests = [
            ("GET", "/info/refs?service=git-upload-pack", None, {"Git-Protocol": "version=2"}),
            ("GET", "/info/refs?service=git-upload-pack", None, {}),
            ("POST", "/git-upload-pack", rawhttp.v2_ls_refs_body(), {}),
            ("POST", "/git-upload-pack", rawhttp.v2_fetch_body(tip), {}),
            ("GET", "/info/refs?service=git-receive-pack", None, {}),
        ]
        post_headers = {"Git-Protocol": "version=2",
                        "Content-Type": "application/x-git-upload-pack-request"}
        for method, suffix, body, get_headers in requests:
            headers = get_headers if body is None else post_headers
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request(method, base + suffix, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            conn.close()
            assert resp.status in (200, 401), (method, suffix, resp.status)
            seen[name].add(resp.getheader("X-Served-By", "-"))
    for name, served in seen.items():
        assert len(served) == 1 and served <= {"goblet-1", "goblet-2", "goblet-3"}, \
            f"{name} was answered by {served}"
        owners[name] = next(iter(served))
    assert len(set(owners.values())) >= 2, f"12 repos all landed on one instance: {owners}"
    haproxy: dict[str, set[str]] = defaultdict(set)
    log = (fleet.run_dir / "haproxy" / "haproxy.log").read_text(errors="replace")
    for m in _HAPROXY_LINE.finditer(log):
        haproxy[m["repo"]].add(m["server"])
    for name, owner in owners.items():
        assert haproxy[f"/{upstream.host}/{name}"] == {owner}, "HAProxy's log disagrees"
    for name in names:
        assert count(upstream.stats(), "fetch", name) == 1, name
        assert fleet.fills(upstream.url(name)) == 1, name


def test_concurrent_clones_fill_each_repo_once_across_the_fleet(
    fleet: Fleet, repos: Repos, upstream: UpstreamServer, tmp_path: Path,
) -> None:
    names = [repos.create(commits=30, blob_size=3000) for _ in range(4)]
    out = tmp_path / "clones.json"
    res = subprocess.run(
        [sys.executable, str(LOADTEST), "--mode", "clone",
         "--url", f"http://127.0.0.1:{fleet.port('haproxy.http')}",
         "--workers", "8", "--requests", "2", "--think-time", "0", "--duration", "60",
         "--quiet", "--output", str(out), "--repos",
         *(f"{upstream.host}/{n}" for n in names)],
        capture_output=True, text=True, timeout=120, check=False)
    report = json.loads(out.read_text())
    assert res.returncode == 0, res.stdout + res.stderr
    assert report["success_rate"] == 100 and report["total_requests"] == 16
    for name in names:
        routing = report["routing"][f"{upstream.host}/{name}"]
        assert len(routing) == 1, f"{name} answered by {routing}"
        assert 1 <= count(upstream.stats(), "fetch", name) <= 16
        # (a cold clone's answer is stored after its client has it: wait for its line)
        wait_for(f"the fill of {name}", lambda n=name: fleet.fills(upstream.url(n)) or None)
        assert fleet.fills(upstream.url(name)) == 1, f"{name}: not exactly one fill"
    fills_logged = len(re.findall(r"\] fill \S+ result=ok ", fleet.logs()))
    assert wait_for(
        "prometheus to count every fill",
        lambda: fleet.prometheus('sum(goblet_fills_total{job="goblet",result="ok"})')
        == fills_logged or None)


def test_tenant_credentials_pass_through_haproxy(
    fleet: Fleet, repos: Repos, upstream: UpstreamServer, tmp_path: Path,
) -> None:
    name = repos.create(public=False, readers=("alice",), commits=3)
    git = GitClient(tmp_path / "home", ca_file=upstream.cert_path)
    url = fleet.prefix(upstream, name)
    git.clone(with_userinfo(url, "alice", "alice-pw"), tmp_path / "alice")
    bob = git.clone(with_userinfo(url, "bob", "bob-pw"), tmp_path / "bob", check=False)
    anonymous = git.clone(url, tmp_path / "anonymous", check=False)
    assert bob.returncode != 0 and "not found" in bob.stderr
    assert anonymous.returncode != 0 and "could not read Username" in anonymous.stderr
    assert not (tmp_path / "bob").exists() and not (tmp_path / "anonymous").exists()


def test_losing_an_instance_moves_only_its_repos(
    fleet: Fleet, upstream: UpstreamServer, owners: dict[str, str], tmp_path: Path,
) -> None:
    """Runs last among the sharded tests: it stops one instance for good."""
    assert owners, "needs the routing test's repos"
    victim = max({o for o in owners.values()}, key=list(owners.values()).count)
    pid = fleet.state["pids"][victim]
    subprocess.run(["kill", "-TERM", str(pid)], check=True)
    wait_for(f"HAProxy to mark {victim} DOWN",
             lambda: fleet.servers()[f"goblet_shards/{victim}"]["status"] == "DOWN" or None,
             timeout=30)
    port = fleet.port("haproxy.http")
    for name, owner in owners.items():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", f"/{upstream.host}/{name}/info/refs?service=git-upload-pack",
                     headers={"Git-Protocol": "version=2"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 200
        now = resp.getheader("X-Served-By")
        if owner == victim:
            assert now in {"goblet-1", "goblet-2", "goblet-3"} - {victim}
        else:
            assert now == owner, f"{name} moved from {owner} to {now} though {owner} is up"
    moved = next(n for n, o in owners.items() if o == victim)
    git = GitClient(tmp_path / "home", ca_file=upstream.cert_path)
    git.clone(fleet.prefix(upstream, moved), tmp_path / "moved")


# -- shared topology -----------------------------------------------------------------


def test_connect_clients_share_one_cache_dir_behind_haproxy_tcp(
    tmp_path: Path, upstream: UpstreamServer, confdir: Path, repos: Repos,
) -> None:
    shared = start_fleet(tmp_path / "shared", upstream, confdir, "shared")
    try:
        servers = shared.servers()
        assert {k: v["status"] for k, v in servers.items() if k.startswith("goblet_proxies/")} \
            == {f"goblet_proxies/goblet-{n}": "UP" for n in (1, 2, 3)}
        proxy = f"http://127.0.0.1:{shared.port('haproxy.connect')}"
        git = GitClient(tmp_path / "home", ca_file=Path(shared.state["ca_cert"]), proxy=proxy)
        names = [repos.create(commits=30, blob_size=3000) for _ in range(3)]
        jobs = [(name, tmp_path / f"{name}-{k}") for name in names for k in range(3)]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            served = list(pool.map(lambda job: traced_clone(git, upstream.url(job[0]), job[1]),
                                   jobs))
        instances = set().union(*served)
        assert len(instances) >= 2, f"every tunnel went to {instances}"
        for name, dest in jobs:
            head = git.run("rev-parse", "HEAD", cwd=dest).stdout.strip()
            assert head == list_refs(repos.path(name))["refs/heads/main"]
        cache = Path(shared.state["instances"][0]["cache_dir"])
        assert all(Path(i["cache_dir"]) == cache for i in shared.state["instances"])
        settle(cache)  # (a cold clone's answer is stored after its client has it)
        fetched = {}
        for name in names:  # (a clone finding another process filling passed upstream)
            fetched[name] = count(upstream.stats(), "fetch", name)
            assert 1 <= fetched[name] <= 3, f"{name}: more packs than clones"
            states = [json.loads(p.read_text()) for p in cache.glob("repos/*/goblet-state.json")]
            assert sum(1 for s in states if s.get("url") == upstream.url(name)) == 1
        # Warm: later clones through any process download no pack upstream.
        for k, name in enumerate(names * 2):
            traced_clone(git, upstream.url(name), tmp_path / f"warm-{k}")
        for name in names:
            assert count(upstream.stats(), "fetch", name) == fetched[name]
    finally:
        stop_fleet(shared)
