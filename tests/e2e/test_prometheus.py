"""Prometheus against a real goblet: rules load, metrics add up, probes answer.

- ``promtool`` accepts the shipped alert rules, their unit tests and config;
- ``/healthz``, ``/readyz`` and ``/metrics`` answer on the proxy port (plain HTTP
  to the proxy itself) and on ``goblet_metrics_port``;
- git answers carry ``X-Served-By`` (passed upstream and served from the cache);
- a cold then a warm clone move the counters as documented, the access log has
  the documented shape, and a real Prometheus scraping every second computes a
  fetch hit ratio in (0, 1], accepts every dashboard query and evaluates every
  alert rule without error;
- ``/readyz`` turns 503 with one line when the cache dir cannot take a file.

Uses Debian's real ``prometheus`` and ``promtool`` (package ``prometheus``, 2.42).
They are required, not optional: without them this module fails and says how
to install them. Tests run in file order (one worker, ``--dist loadfile``); the
last one breaks the cache dir on purpose and repairs it.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import shutil
import signal
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Repos
from tests.support import rawhttp
from tests.support.cachedir import settle
from tests.support.gitclient import GitClient
from tests.support.net import free_port, wait_for
from tests.support.proxy import REPO_ROOT, GobletProxy
from tests.support.repos import list_refs
from tests.support.upstream_client import UpstreamServer

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
RULES_DIR = REPO_ROOT / "loadtest" / "prometheus"
DASHBOARD = REPO_ROOT / "loadtest" / "grafana" / "dashboards" / "goblet.json"
INSTANCE = "goblet-e2e-metrics"
HIT_RATIO = (
    'sum(increase(goblet_requests_total{kind="fetch",outcome="cache"}[1m]))'
    ' / sum(increase(goblet_requests_total{kind="fetch"}[1m]))'
)
# The access-log line as docs/reference/metrics.md documents it.
ACCESS_LINE = re.compile(
    r"git (?P<kind>[a-z_]+) (?P<url>\S+) tenant=(?P<tenant>[0-9a-f]{12}|anonymous|-) "
    r"outcome=(?P<outcome>[a-z]+) status=(?P<status>\d{3}|-) bytes=(?P<bytes>\d+|-) "
    r"duration=(?P<duration>\d+\.\d{3})s upstream=(?P<upstream>\d{3}|-) "
    r"instance=(?P<instance>\S+)(?: reason=(?P<reason>'.*'|\".*\"))?$"
)


def require(binary: Path) -> str:
    """The binary's path, or fail: CI must install it (never skip)."""
    if not binary.exists():
        pytest.fail(f"{binary} is missing: install Debian's Prometheus with "
                    "`apt-get install -y prometheus` (.ci/run must install it too)")
    return str(binary)


def http_get(port: int, path: str, timeout: float = 10) -> tuple[int, dict[str, str], str]:
    """GET http://127.0.0.1:PORT/PATH with no proxy: status, headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query) of the Grafana dashboard, with its variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    values = {"$__rate_interval": "1m", "$__range": "5m", "$job": "goblet", "$instance": ".*"}
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            expr = target["expr"]
            for name, value in values.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


class Scrape:
    """One /metrics answer, parsed."""

    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text) for s in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels``."""
        return sum(v for n, lbl, v in self.samples
                   if n == name and all(lbl.get(k) == x for k, x in labels.items()))

    def one(self, name: str) -> float:
        """The value of the only sample called ``name`` (fails if there is none)."""
        values = [v for n, _, v in self.samples if n == name]
        assert len(values) == 1, f"{name}: {len(values)} samples"
        return values[0]

    def names(self) -> set[str]:
        """Every sample name in the answer."""
        return {n for n, _, _ in self.samples}


def scrape(port: int) -> Scrape:
    status, headers, body = http_get(port, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain"), headers
    return Scrape(body)


class Prometheus:
    """A real ``prometheus`` on 127.0.0.1, scraping one goblet every second."""

    def __init__(self, workdir: Path, target_port: int) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        self.config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES_DIR / "alerts.yml")],
            "scrape_configs": [{
                "job_name": "goblet",
                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
            }],
        }, indent=2))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [require(PROMETHEUS), f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a Prometheus HTTP API answer (None while it is not up)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log_path.read_text()[-3000:]}")
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            status, _, body = http_get(self.port, f"/api/v1/{path}{query}")
        except OSError:
            return None
        if status != 200:
            return None
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    def scalar(self, expr: str) -> float | None:
        """The value of a one-element instant query, None if it has no result yet."""
        data = self.api("query", query=expr)
        if not data or not data["result"]:
            return None
        return float(data["result"][0]["value"][1])


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer, confdir: Path,
    metrics_port: int,
) -> Iterator[GobletProxy]:
    """The conftest proxy, plus a metrics port and a known instance name."""
    px = GobletProxy(
        tmp_path_factory.mktemp("proxy"),
        hosts=[upstream.host],
        upstream_ca=upstream.cert_path,
        confdir=confdir,
        sets={"goblet_upstream_timeout": "5", "goblet_metrics_port": str(metrics_port),
              "goblet_instance": INSTANCE},
    )
    with px:
        yield px


@pytest.fixture
def prometheus(tmp_path: Path, metrics_port: int) -> Iterator[Prometheus]:
    prom = Prometheus(tmp_path, metrics_port)
    subprocess.run([require(PROMTOOL), "check", "config", str(prom.config)], check=True,
                   capture_output=True, timeout=60)
    prom.start()
    try:
        yield prom
    finally:
        prom.stop()


# -- tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ("check", "rules", "alerts.yml"),
    ("test", "rules", "alerts_test.yml"),
    ("check", "config", "prometheus.yml"),
], ids=" ".join)
def test_promtool_accepts_the_shipped_files(args: tuple[str, ...]) -> None:
    res = subprocess.run([require(PROMTOOL), *args], cwd=RULES_DIR, capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_endpoints_answer_on_the_proxy_port_and_the_metrics_port(
    proxy: GobletProxy, metrics_port: int
) -> None:
    assert f"metrics=127.0.0.1:{metrics_port}" in proxy.log_text()
    for port in (proxy.port, metrics_port):
        assert http_get(port, "/healthz")[::2] == (200, "ok\n")
        assert http_get(port, "/readyz")[::2] == (200, "ready\n")
        metrics = scrape(port)
        assert "goblet_requests_total" in metrics.names()
        assert "process_resident_memory_bytes" in metrics.names()
        assert metrics.one("goblet_ready") == 1.0
        assert metrics.one("goblet_cache_free_bytes") > 0


def test_git_responses_carry_x_served_by(
    proxy: GobletProxy, upstream: UpstreamServer, repos: Repos
) -> None:
    name = repos.create()
    tip = list_refs(repos.path(name))["refs/heads/main"]

    def send(method: str, path: str, body: bytes | None = None) -> rawhttp.RawResponse:
        headers = {"Git-Protocol": "version=2"}
        if body is not None:
            headers["Content-Type"] = "application/x-git-upload-pack-request"
        return rawhttp.request(proxy_port=proxy.port, ca_file=proxy.ca_cert, host="127.0.0.1",
                               port=upstream.port, method=method, path=path, headers=headers,
                               body=body)

    refs = send("GET", f"/{name}/info/refs?service=git-upload-pack")
    assert refs.status == 200
    assert refs.headers.get("x-served-by") == INSTANCE, "info/refs (passed upstream)"
    ls = send("POST", f"/{name}/git-upload-pack", rawhttp.v2_ls_refs_body())
    assert ls.status == 200 and ls.headers.get("x-served-by") == INSTANCE, "ls-refs"
    fetch = send("POST", f"/{name}/git-upload-pack", rawhttp.v2_fetch_body(tip))
    assert fetch.status == 200 and b"packfile" in fetch.body
    assert fetch.headers.get("x-served-by") == INSTANCE, "fetch (served from the cache)"
    bad = send("GET", "/a/../r.git/info/refs?service=git-upload-pack")
    assert bad.status == 400 and bad.body.startswith(b"goblet: bad repository path"), bad
    assert bad.headers.get("x-served-by") == INSTANCE, "400 (goblet's own answer)"


def test_cold_then_warm_clone_as_metrics_and_in_prometheus(
    proxy: GobletProxy, metrics_port: int, git: GitClient, repos: Repos,
    upstream: UpstreamServer, prometheus: Prometheus, tmp_path: Path,
) -> None:
    wait_for("prometheus to scrape goblet",
             lambda: prometheus.scalar('up{job="goblet"}') == 1 or None)
    assert prometheus.scalar('goblet_ready{job="goblet"}') == 1
    # A sample from before the clones, so increase() sees them happen.
    wait_for("a first goblet sample",
             lambda: prometheus.scalar('count(goblet_requests_total{kind="fetch"})'))
    name = repos.create(commits=20, blob_size=4000)
    url = upstream.url(name)

    before = scrape(proxy.port)
    git.clone(url, tmp_path / "cold")
    settle(proxy.cache_dir)  # a cold clone's answer fills the cache just after the client has it
    cold = scrape(metrics_port)
    git.clone(url, tmp_path / "warm")
    warm = scrape(proxy.port)

    def delta(a: Scrape, b: Scrape, name: str, **labels: str) -> float:
        return b.value(name, **labels) - a.value(name, **labels)

    fetched = "goblet_upstream_fetch_bytes_total"
    assert delta(before, cold, fetched) > 0, "the cold clone's fill brought no pack bytes"
    assert delta(cold, warm, fetched) == 0, "the warm clone fetched pack data upstream"
    assert delta(before, cold, "goblet_fills_total", result="ok") >= 1
    assert delta(cold, warm, "goblet_fills_total") == 0
    assert warm.value("goblet_requests_total", kind="fetch", outcome="cache") >= 1
    assert delta(cold, warm, "goblet_requests_total", kind="fetch", outcome="cache") >= 1
    assert delta(cold, warm, "goblet_served_bytes_total", source="cache") > 0
    assert delta(before, warm, "goblet_requests_total", kind="info_refs") >= 2
    assert delta(before, warm, "goblet_upstream_requests_total", kind="ls_refs",
                 status="2xx") >= 2
    assert warm.value("goblet_fills_in_flight") == 0
    assert warm.value("goblet_verdict_cache_entries") >= 1
    assert warm.value("goblet_request_duration_seconds_count", kind="fetch") >= 2

    lines = [m for m in map(ACCESS_LINE.search, proxy.log_text().splitlines())
             if m and m["url"] == url]
    fetches = [m for m in lines if m["kind"] == "fetch"]
    assert len(fetches) == 2, proxy.log_text()[-3000:]
    # The cold clone streamed from the upstream (filling the cache); the warm one from it.
    assert [m["outcome"] for m in fetches] == ["upstream", "cache"]
    assert all(m["instance"] == INSTANCE for m in fetches)
    assert all(m["tenant"] == "anonymous" for m in lines)

    def ratio() -> float | None:
        value = prometheus.scalar(HIT_RATIO)
        return value if value is not None and not math.isnan(value) and value > 0 else None

    hit_ratio = wait_for("the fetch hit ratio in prometheus", ratio)
    assert 0 < hit_ratio <= 1

    # A rate needs two samples of a series: a series born in the last scrape has none yet.
    for title, expr in dashboard_queries():
        data = prometheus.api("query", query=expr)
        assert data is not None, f"panel {title!r}: prometheus refused {expr!r}"
        wait_for(f"data for panel {title!r} ({expr})",
                 lambda expr=expr: prometheus.api("query", query=expr)["result"] or None)

    def rules_evaluated() -> list[dict[str, Any]] | None:
        data = prometheus.api("rules")
        rules = [r for g in (data or {}).get("groups", ()) if g["name"] == "goblet"
                 for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = wait_for("prometheus to evaluate the goblet rules", rules_evaluated)
    assert {r["name"]: r["health"] for r in rules} == {r["name"]: "ok" for r in rules}
    active = {r["name"]: r["state"] for r in rules if r["state"] != "inactive"}
    assert active == {}, "a healthy goblet set off alerts"


def test_readyz_names_an_unwritable_cache_dir(proxy: GobletProxy, metrics_port: int) -> None:
    """``<cache>/tmp`` replaced by a regular file: creating anything in it fails with
    ENOTDIR even for root (chmod would not stop root). Repaired at the end.

    ``goblet_ready`` follows: a /readyz request re-evaluates it at once (no waiting
    for the 15 s background check)."""
    tmp = proxy.cache_dir / "tmp"
    aside = proxy.cache_dir / "tmp.aside"
    assert tmp.is_dir()
    tmp.rename(aside)
    try:
        tmp.write_text("not a directory\n")
        for port in (proxy.port, metrics_port):
            status, _, body = http_get(port, "/readyz")
            assert status == 503, body
            lines = body.splitlines()
            assert len(lines) == 1, body
            assert "cache dir not writable" in lines[0], body
            assert http_get(port, "/healthz")[::2] == (200, "ok\n")
            assert scrape(port).one("goblet_ready") == 0.0
    finally:
        if tmp.is_file():
            tmp.unlink()
        if aside.exists():
            shutil.move(aside, tmp)
    wait_for("/readyz to recover", lambda: http_get(metrics_port, "/readyz")[0] == 200 or None,
             timeout=10)
    assert scrape(metrics_port).one("goblet_ready") == 1.0
