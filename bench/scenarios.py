"""The timed runs of one benchmark session.

Method (also stated in docs/benchmarks.md):

* all scenarios run in one session against the same servers; the medium-repo scenarios are
  interleaved: every round runs each scenario once, in a seeded shuffled order;
* round 0 is an untimed warm-up of every scenario (the page cache cannot be dropped here);
* wall time is ``time.perf_counter`` around the git subprocess only; checks (HEAD equals the
  upstream's, ``git fsck`` on the first timed run of each scenario) and clean-up run outside;
* every step records what it caused upstream (request counts by kind, pack bytes, bytes
  sent) and in the proxy (upload-pack runs from cache, fetches sent upstream, fills).
"""

from __future__ import annotations

import asyncio
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.env import (
    BenchEnv,
    Meter,
    Traffic,
    cache_repo_path,
    count_objects,
    pack_files,
    scrape_metrics,
    server_cpu,
)
from bench.genrepo import RepoInfo, RepoSpec
from bench.load import run_load
from bench.profile import Profiler, summarize
from bench.rss import RssSampler
from tests.support.proxy import GobletProxy
from tests.support.repos import add_commit, clean_env, git

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Scenario:
    """One kind of timed git operation."""

    key: str
    label: str
    via: str  # goblet | plain | direct-wan | direct-floor
    upstream: str  # wan | floor: the server whose counters belong to this scenario
    flags: tuple[str, ...] = ()
    group: str = "medium"


MEDIUM_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("direct", "direct from upstream over the WAN", "direct-wan", "wan"),
    Scenario("mitmdump", "plain mitmdump (no addon), WAN", "plain", "wan"),
    Scenario("cold", "goblet cold (streamed over the WAN while it fills the cache)", "goblet",
             "wan"),
    Scenario("warm", "goblet warm (refs from upstream over the WAN)", "goblet", "wan"),
    Scenario("warm_lo", "goblet warm, upstream on loopback (diagnostic)", "goblet", "floor"),
    Scenario("warm_ttl", "goblet warm, goblet_refs_ttl on (refs from the cache)", "ttl", "wan"),
    Scenario("floor", "local floor: http-backend on loopback, no proxy", "direct-floor",
             "floor"),
    Scenario("shallow_warm", "goblet warm, --depth 1", "goblet", "wan", ("--depth", "1")),
    Scenario("shallow_floor", "local floor, --depth 1", "direct-floor", "floor",
             ("--depth", "1")),
    Scenario("blobless_warm", "goblet warm, --filter=blob:none", "goblet", "wan",
             ("--filter=blob:none",)),
    Scenario("blobless_floor", "local floor, --filter=blob:none", "direct-floor", "floor",
             ("--filter=blob:none",)),
)
FETCH_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("fetch_goblet", "fetch 1 new commit via goblet (delta fill, then serve)",
             "goblet", "wan", group="fetch"),
    Scenario("fetch_goblet_cached", "fetch 1 new commit via goblet, delta already cached",
             "goblet", "wan", group="fetch"),
    Scenario("fetch_direct", "fetch 1 new commit direct over the WAN", "direct-wan", "wan",
             group="fetch"),
)
LARGE_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("large_cold", "large: goblet cold (streamed over loopback while it fills the "
             "cache)", "goblet", "floor", group="large"),
    Scenario("large_warm", "large: goblet warm (upstream on loopback)", "goblet", "floor",
             group="large"),
    Scenario("large_floor", "large: local floor, no proxy", "direct-floor", "floor",
             group="large"),
)
ALL_SCENARIOS = {s.key: s for s in (*MEDIUM_SCENARIOS, *FETCH_SCENARIOS, *LARGE_SCENARIOS)}
# The A/B phases' proxies (``BenchEnv.start_proxy``): name -> --set options. Pack cache on
# (the default budget) vs. off; maintenance off, pack cache off (every clone runs upload-pack).
# The refs-TTL proxy (``via="ttl"``): refs and grants good for the whole session, so every
# timed clone through it is one within the TTL.
TTL_PROXY = ("ttl", {"goblet_refs_ttl": "1d", "goblet_verdict_ttl": "1h"})
# The same with mitmproxy's own hook dispatch (the load rows only: what goblet's saves).
OWN_DISPATCH_PROXY = ("ttl-own-dispatch", {**TTL_PROXY[1], "goblet_fast_dispatch": "off"})
PACK_CACHE_PROXIES = {"packcache-on": {}, "packcache-off": {"goblet_pack_cache_max_bytes": "0"}}
MAINT_PROXY = ("maint", {"goblet_maintenance": "off", "goblet_pack_cache_max_bytes": "0"})
MAINT_SCENARIOS = {
    "before": Scenario("maint_before", "full clone, cache repo as the fills left it "
                       "(maintenance off)", "maint", "floor", group="maintenance"),
    "after": Scenario("maint_after", "full clone after the full repack", "maint", "floor",
                      group="maintenance"),
}

# The machine may be shared with other jobs. Before each timed step we wait (up to
# QUIET_LIMIT_S) until processes that are not ours use less than QUIET_CORES; a timed step
# during which they used more than DISTURBED_CORES on average is kept in the raw records,
# flagged, left out of the statistics and repeated (at most MAX_REPEATS times).
QUIET_CORES = 0.3
QUIET_WINDOW_S = 0.3
QUIET_LIMIT_S = 120.0
QUIET_BUDGET_S = 600.0  # in all, per session: past it, steps no longer wait (still repeated)
DISTURBED_CORES = 0.5
# The load rows compared as shares of each other: run in interleaved rounds, each round
# starting one row later than the one before (no row always follows the same one), the
# round with the median rate kept.
RPS_COMPARED = ("goblet_canned", "plain_mitmdump_canned", "goblet_ttl",
                "goblet_ttl_own_dispatch")
MAX_REPEATS = 2


@dataclass(frozen=True)
class Config:
    """Everything that shapes a session."""

    quick: bool
    runs: int
    large_runs: int
    latency_ms: float
    rate_mbit: float
    concurrency: int
    concurrent_runs: int
    rps_clients: int
    rps_seconds: float
    profile: bool
    seed: int
    medium: RepoSpec
    large: RepoSpec
    quiet: bool = True  # wait for other jobs to calm down; repeat disturbed steps
    warmup: bool = True  # round 0: one untimed run of every scenario
    maint_fills: int = 50  # incremental fills (one pack each) before the maintenance A/B
    rps_rounds: int = 5  # interleaved rounds of the rows whose rates are compared (RPS_COMPARED)
    fleet_instances: int = 4  # goblet instances of the fleet phase (alone vs. shared tier)

    @property
    def first_round(self) -> int:
        """0 with a warm-up round, else 1."""
        return 0 if self.warmup else 1


@dataclass
class Record:
    """One timed (or warm-up) step."""

    scenario: str
    round: int
    warmup: bool
    seconds: float
    error: str | None
    traffic: dict[str, Traffic]
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "scenario": self.scenario, "round": self.round, "warmup": self.warmup,
            "seconds": round(self.seconds, 4), "error": self.error,
            "traffic": {k: v.as_dict() for k, v in self.traffic.items()}, **self.extra,
        }


def summary(values: list[float]) -> dict[str, Any]:
    """n, median, min, max, quartiles and mean of ``values`` (seconds)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    q1, q3 = (statistics.quantiles(ordered, n=4, method="inclusive")[i] for i in (0, 2)) \
        if len(ordered) > 1 else (ordered[0], ordered[0])
    return {
        "n": len(ordered), "median": statistics.median(ordered), "min": ordered[0],
        "max": ordered[-1], "q1": q1, "q3": q3, "mean": statistics.fmean(ordered),
    }


class Session:
    """Runs every phase against one :class:`BenchEnv` and collects the results."""

    def __init__(self, env: BenchEnv, config: Config, medium: RepoInfo, large: RepoInfo,
                 sampler: RssSampler, out: Path, log: Callable[[str], None]) -> None:
        self.env = env
        self.config = config
        self.medium = medium
        self.large = large
        self.sampler = sampler
        self.out = out
        self.log = log
        self.records: list[Record] = []
        self.results: dict[str, Any] = {}
        self.quiet_waits: list[float] = []
        self.fsck_done: set[str] = set()

    # -- helpers -------------------------------------------------------------------------

    def _head(self, repo: str) -> str:
        return git("rev-parse", "refs/heads/main", cwd=self.env.repos_dir / repo)

    def wait_quiet(self) -> None:
        """Wait until other jobs on the machine use less than QUIET_CORES (bounded)."""
        if not self.config.quiet or sum(self.quiet_waits) >= QUIET_BUDGET_S:
            return
        started = time.monotonic()
        limit = min(QUIET_LIMIT_S, QUIET_BUDGET_S - sum(self.quiet_waits))
        while True:
            cpu0 = self.sampler.cpu.read()
            time.sleep(QUIET_WINDOW_S)
            if self._others(cpu0, QUIET_WINDOW_S) < QUIET_CORES:
                break
            if time.monotonic() - started > limit:
                self.log(f"  (machine still busy after {limit:.0f} s; going on)")
                break
        waited = time.monotonic() - started - QUIET_WINDOW_S
        if waited > 0.05:
            self.quiet_waits.append(round(waited, 2))

    def timed_clone(self, scenario: Scenario, repo_for: Callable[[int], str], rnd: int, *,
                    warmup: bool, timeout: float = 600,
                    server: GobletProxy | None = None) -> Record:
        """:meth:`clone` after :meth:`wait_quiet`, repeated while other jobs disturbed it.

        ``repo_for(attempt)`` names the repo of each attempt (a cold clone needs a fresh one).
        """
        for attempt in range(MAX_REPEATS + 1):
            self.wait_quiet()
            record = self.clone(scenario, repo_for(attempt), rnd, warmup=warmup,
                                timeout=timeout, server=server)
            if attempt == MAX_REPEATS or not self._disturbed(record):
                return record
        return record

    def _disturbed(self, record: Record) -> bool:
        """Flag (and log) a timed step that other jobs disturbed; warm-ups are never
        repeated."""
        others = record.extra.get("others_cores") or 0.0
        if not self.config.quiet or record.warmup or others <= DISTURBED_CORES:
            return False
        record.extra["disturbed"] = True
        self.log(f"    disturbed: other jobs used {others:.2f} cores; repeating")
        return True

    def _others(self, cpu0: tuple[float, float], seconds: float) -> float:
        """Average cores used by processes that are not ours since ``cpu0`` was read (other
        jobs on a shared machine; /proc/stat has 10 ms resolution, so short steps are coarse)."""
        busy, ours = self.sampler.cpu.read()
        return round(max(0.0, (busy - cpu0[0]) - (ours - cpu0[1])) / max(seconds, 0.01), 2)

    def _url(self, scenario: Scenario, repo: str) -> str:
        return self.env.upstreams[scenario.upstream].url(repo)

    def _verify(self, scenario: Scenario, client: Any, dest: Path, ref: str, expected: str,
                warmup: bool) -> str | None:
        res = client.run("rev-parse", ref, cwd=dest, check=False)
        if res.returncode != 0 or res.stdout.strip() != expected:
            return f"{ref} is {res.stdout.strip() or res.stderr.strip()!r}, expected {expected}"
        if not warmup and scenario.key not in self.fsck_done:
            fsck = client.run("fsck", "--full", "--no-dangling", cwd=dest, check=False,
                              timeout=900)
            if fsck.returncode != 0:
                return f"git fsck failed: {fsck.stderr.strip()[-300:]}"
            self.fsck_done.add(scenario.key)
        return None

    def clone(self, scenario: Scenario, repo: str, rnd: int, *, warmup: bool,
              timeout: float = 600, keep: bool = False,
              server: GobletProxy | None = None) -> Record:
        """Time one ``git clone``, check it, remove it (unless ``keep``). With ``server`` (a
        goblet proxy of ``scenario.via``), also its CPU seconds (``server_cpu_s``)."""
        client = self.env.client(scenario.key, scenario.via)
        dest = self.env.fresh_dir(f"{scenario.key}-{rnd}")
        expected = self._head(repo)
        meter = Meter(self.env, server).start()
        pid = server.proc.pid if server is not None and server.proc is not None else None
        server0 = server_cpu(pid)
        cpu0 = self.sampler.cpu.read()
        started = time.perf_counter()
        res = client.run("clone", "--quiet", *scenario.flags, self._url(scenario, repo),
                         str(dest), check=False, timeout=timeout)
        seconds = time.perf_counter() - started
        others = self._others(cpu0, seconds)
        server1 = server_cpu(pid)
        traffic = meter.collect()
        error = None
        if res.returncode != 0:
            error = f"git clone exited {res.returncode}: {res.stderr.strip()[-300:]}"
        else:
            error = self._verify(scenario, client, dest, "HEAD", expected, warmup)
        if not keep:
            shutil.rmtree(dest, ignore_errors=True)
        record = Record(scenario.key, rnd, warmup, seconds, error, traffic,
                        {"others_cores": others})
        if server0 is not None and server1 is not None:
            record.extra["server_cpu_s"] = round(server1 - server0, 3)
        self.records.append(record)
        cpu = (f", server CPU {record.extra['server_cpu_s']:.2f} s"
               if "server_cpu_s" in record.extra else "")
        self.log(f"  {scenario.key:<20} round {rnd}{' (warm-up)' if warmup else ''}: "
                 f"{seconds:7.3f} s{cpu}{'  ERROR ' + error if error else ''}")
        return record

    # -- phases --------------------------------------------------------------------------

    def prepare(self) -> None:
        """Repos on the upstream; prime the caches the warm scenarios need."""
        env, rounds = self.env, self.config.runs + 1
        env.add_repo("medium.git", self.medium.path)
        for rnd in range(rounds):
            env.add_repo(f"medium-cold-{rnd}.git", self.medium.path)
        env.add_repo("medium-inc.git", self.medium.path, link=False)
        env.add_repo("large.git", self.large.path)
        phase = self.sampler.begin("prime caches")
        prime = Scenario("prime", "prime", "goblet", "wan")
        self.clone(prime, "medium.git", 0, warmup=True)
        self.clone(Scenario("prime_lo", "prime", "goblet", "floor"), "medium.git", 0,
                   warmup=True)
        ttl = env.start_proxy(*TTL_PROXY)
        if ttl.proc is not None:  # its CPU is the bench's own load, not other jobs'
            self.sampler.account(ttl.proc.pid)
        for upstream in ("wan", "floor"):  # the TTL proxy caches it for both
            self.clone(Scenario(f"prime_ttl_{upstream}", "prime", "ttl", upstream),
                       "medium.git", 0, warmup=True)
        if not self.config.quick:  # (a load row only: its cache needs the floor's repo)
            own = env.start_proxy(*OWN_DISPATCH_PROXY)
            if own.proc is not None:
                self.sampler.account(own.proc.pid)
            self.clone(Scenario("prime_own_dispatch", "prime", OWN_DISPATCH_PROXY[0], "floor"),
                       "medium.git", 0, warmup=True)
        self.inc = {
            "fetch_goblet": env.clones / "inc-goblet-a",
            "fetch_goblet_cached": env.clones / "inc-goblet-b",
            "fetch_direct": env.clones / "inc-direct",
        }
        for key, dest in self.inc.items():
            s = ALL_SCENARIOS[key]
            client = env.client(key, s.via)
            shutil.rmtree(dest, ignore_errors=True)
            client.run("clone", "--quiet", self._url(s, "medium-inc.git"), str(dest))
        self.sampler.end(phase)

    def medium_rounds(self) -> None:
        """Warm-up round 0, then ``runs`` interleaved rounds of every medium scenario."""
        phase = self.sampler.begin("medium scenarios")
        for rnd in range(self.config.first_round, self.config.runs + 1):
            warmup = rnd == 0
            steps: list[Callable[[], None]] = []
            for s in MEDIUM_SCENARIOS:
                repo_for = self._cold_repo if s.key == "cold" else self._medium_repo
                steps.append(partial(self.timed_clone, s, partial(repo_for, rnd), rnd,
                                     warmup=warmup))
            steps.append(partial(self.fetch_round, rnd, warmup))
            random.Random(self.config.seed * 1000 + rnd).shuffle(steps)
            self.log(f"round {rnd}{' (warm-up)' if warmup else ''}")
            for step in steps:
                step()
        self.sampler.end(phase)

    @staticmethod
    def _medium_repo(rnd: int, attempt: int) -> str:
        return "medium.git"

    def _cold_repo(self, rnd: int, attempt: int) -> str:
        """A repo goblet has never seen: one per round, and one more per repeated attempt."""
        name = f"medium-cold-{rnd}.git" if attempt == 0 else f"medium-cold-{rnd}-{attempt}.git"
        if not (self.env.repos_dir / name).exists():
            self.env.add_repo(name, self.medium.path)
        return name

    def fetch_round(self, rnd: int, warmup: bool) -> None:
        """One upstream commit, then a timed ``git fetch`` in each incremental clone; the
        whole group is repeated (with another commit) if other jobs disturbed it."""
        for attempt in range(MAX_REPEATS + 1):
            self.wait_quiet()
            records = self._fetch_group(rnd, attempt, warmup)
            if attempt == MAX_REPEATS:
                return
            disturbed = [r for r in records if self._disturbed(r)]
            if not disturbed:
                return
            for r in records:
                r.extra["disturbed"] = True

    def _fetch_group(self, rnd: int, attempt: int, warmup: bool) -> list[Record]:
        path = self.env.repos_dir / "medium-inc.git"
        rng = random.Random(f"{self.config.seed}/fetch/{rnd}/{attempt}")
        new = add_commit(path, message=f"bench round {rnd}.{attempt}", files={
            "src/d00/f0000.txt": b"".join(rng.randbytes(48).hex().encode() + b"\n"
                                          for _ in range(40)),
            f"notes/round-{rnd:03d}-{attempt}.txt": rng.randbytes(1024).hex().encode(),
        })
        records = []
        for s in FETCH_SCENARIOS:
            client = self.env.client(s.key, s.via)
            dest = self.inc[s.key]
            meter = Meter(self.env).start()
            cpu0 = self.sampler.cpu.read()
            started = time.perf_counter()
            res = client.run("fetch", "--quiet", "origin", cwd=dest, check=False, timeout=300)
            seconds = time.perf_counter() - started
            others = self._others(cpu0, seconds)
            traffic = meter.collect()
            error = None
            if res.returncode != 0:
                error = f"git fetch exited {res.returncode}: {res.stderr.strip()[-300:]}"
            else:
                error = self._verify(s, client, dest, "refs/remotes/origin/main", new, warmup)
            record = Record(s.key, rnd, warmup, seconds, error, traffic,
                            {"others_cores": others})
            self.records.append(record)
            records.append(record)
            self.log(f"  {s.key:<20} round {rnd}{' (warm-up)' if warmup else ''}: "
                     f"{seconds:7.3f} s{'  ERROR ' + error if error else ''}")
        return records

    def concurrent(self) -> None:
        """N identical warm clones at once, through goblet and (for reference) the floor."""
        phase = self.sampler.begin(f"{self.config.concurrency} concurrent clones")
        results: dict[str, list[dict[str, Any]]] = {"goblet": [], "floor": []}
        for rnd in range(self.config.first_round, self.config.concurrent_runs + 1):
            for key, scenario in (("goblet", ALL_SCENARIOS["warm"]),
                                  ("floor", ALL_SCENARIOS["floor"])):
                for attempt in range(MAX_REPEATS + 1):
                    result = self._burst(scenario.via, scenario.upstream, "medium.git", rnd,
                                         tag=scenario.key)
                    result["warmup"] = rnd == 0
                    results[key].append(result)
                    self.log(f"  {self.config.concurrency} concurrent via {key:<6} round {rnd}: "
                             f"wall {result['wall_s']:.2f} s, failures {result['failures']}, "
                             f"server CPU/clone {_fmt(result['server_cpu_per_clone_s'])} s, "
                             f"other jobs {result['others_cores']:.2f} cores")
                    if (rnd == 0 or attempt == MAX_REPEATS or not self.config.quiet
                            or result["others_cores"] <= DISTURBED_CORES):
                        break
                    result["disturbed"] = True
                    self.log("    disturbed; repeating")
        self.sampler.end(phase)
        self.results["concurrent"] = {"clients": self.config.concurrency, **results}

    def _proxy(self, via: str) -> GobletProxy | None:
        """The goblet proxy clients ``via`` go through (None for plain mitmdump or direct)."""
        if via == "goblet":
            return self.env.goblet
        return self.env.extras.get(via)

    def _burst(self, via: str, upstream: str, repo: str, rnd: int, *,
               tag: str) -> dict[str, Any]:
        """``concurrency`` identical ``git clone``s of ``repo`` started at once (threads, one
        git process each) through ``via``: wall time, failures, what they caused upstream and
        in the proxy, and the CPU seconds of the server that made their packs (the goblet
        proxy, or the upstream for a direct clone) with its reaped children."""
        env, n = self.env, self.config.concurrency
        expected = self._head(repo)
        url = env.upstreams[upstream].url(repo)
        proxy = self._proxy(via)
        server_pid = (proxy.proc.pid if proxy is not None and proxy.proc is not None
                      else env.upstreams[upstream].pid if via.startswith("direct") else None)
        clients = [env.client(f"conc-{tag}-{i}", via) for i in range(n)]
        dests = [env.fresh_dir(f"conc-{tag}-{rnd}-{i}") for i in range(n)]

        def one(i: int) -> tuple[float, float, int, str]:
            started = time.perf_counter()
            res = clients[i].run("clone", "--quiet", url, str(dests[i]), check=False,
                                 timeout=900)
            return started, time.perf_counter(), res.returncode, res.stderr[-300:]

        self.wait_quiet()
        meter = Meter(env, proxy).start()
        server0 = server_cpu(server_pid)
        cpu0 = self.sampler.cpu.read()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            outcomes = list(pool.map(one, range(n)))
        others = self._others(cpu0, time.perf_counter() - t0)
        server1 = server_cpu(server_pid)
        traffic = meter.collect()
        failures, errors = 0, []
        for i, (_, _, rc, err) in enumerate(outcomes):
            head = clients[i].run("rev-parse", "HEAD", cwd=dests[i], check=False).stdout.strip() \
                if rc == 0 else ""
            if rc != 0 or head != expected:
                failures += 1
                errors.append(err.strip() or f"HEAD {head!r}")
            shutil.rmtree(dests[i], ignore_errors=True)
        wall = max(o[1] for o in outcomes) - min(o[0] for o in outcomes)
        t = traffic[upstream]
        server = None if server0 is None or server1 is None else server1 - server0
        return {
            "round": rnd, "wall_s": round(wall, 3), "others_cores": others,
            "clone_s": sorted(round(o[1] - o[0], 3) for o in outcomes),
            "failures": failures, "errors": errors[:3],
            "upstream_requests": t.upstream.get("requests", 0),
            "upstream_fetches": t.upstream.get("fetch", 0),
            "upstream_pack_bytes": t.upstream.get("pack_bytes", 0),
            "proxy_cache_serves": t.proxy_cache_serves,
            "proxy_upload_pack_runs": t.upload_pack_runs,
            "pack_cache_hits": t.pack_cache("hit"),
            "pack_cache_follows": t.pack_cache("follow"),
            "pack_cache_produces": t.pack_cache("produce"),
            "pack_cache_bypasses": t.pack_cache("bypass"),
            "proxy_fetches_upstream": t.proxy_upstream_fetches,
            "fills": t.fills,
            "server_cpu_s": None if server is None else round(server, 3),
            "server_cpu_per_clone_s": None if server is None else round(server / n, 4),
        }

    def _prime_proxy(self, via: str, upstream: str, repo: str) -> dict[str, Any]:
        """One clone of ``repo`` through the fresh proxy ``via`` (its fill); then wait (at
        most 180 s) for the full repack goblet's maintenance runs after a first fill, so that
        it does not run during the timed steps."""
        proxy = self._proxy(via)
        assert proxy is not None
        scenario = Scenario(f"prime-{via}", "prime", via, upstream)
        record = self.clone(scenario, repo, 0, warmup=True)
        out: dict[str, Any] = {"fill_clone_s": round(record.seconds, 3), "errors": []}
        if record.error:
            out["errors"].append(f"priming clone: {record.error}")
        if proxy.sets.get("goblet_maintenance", "on") == "on":
            started = time.monotonic()
            repacks: dict[str, float] = {}
            while time.monotonic() - started < 180:
                repacks = {k: v for k, v in scrape_metrics(proxy.port).items()
                           if k.startswith("goblet_repacks_total") and v}
                if any('kind="full"' in k for k in repacks):
                    break
                time.sleep(0.2)
            out["repack_wait_s"] = round(time.monotonic() - started, 2)
            out["repacks"] = repacks
        out["cache_repo"] = {"pack_files": pack_files(
            cache_repo_path(proxy.cache_dir, self.env.upstreams[upstream].url(repo)))}
        return out

    def pack_cache_ab(self) -> None:
        """``concurrency`` identical warm clones at once through a goblet with its
        pack cache (default budget) and through one without (``goblet_pack_cache_max_bytes
        =0``). Both proxies are fresh, cache the WAN upstream and are primed by one clone
        (their fill; for the pack cache the request's first sighting). Round 0 is the first
        burst after that (pack cache on: one production, the rest follow it), rounds 1.. the
        steady state (pack cache on: stored-answer hits); the proxies alternate in each round.
        """
        env, cfg = self.env, self.config
        repo = "medium.git"
        phase = self.sampler.begin("pack cache on/off")
        out: dict[str, Any] = {"clients": cfg.concurrency, "repo": repo, "upstream": "wan",
                               "modes": {}}
        try:
            for name, sets in PACK_CACHE_PROXIES.items():
                proxy = env.start_proxy(name, sets)
                assert proxy.proc is not None
                self.sampler.account(proxy.proc.pid)
                mode = name.rsplit("-", 1)[1]
                out["modes"][mode] = {"proxy": name, "options": sets,
                                      **self._prime_proxy(name, "wan", repo), "bursts": []}
            modes = list(out["modes"])
            for rnd in range(cfg.concurrent_runs + 1):
                for mode in (modes if rnd % 2 == 0 else modes[::-1]):
                    m = out["modes"][mode]
                    for attempt in range(MAX_REPEATS + 1):
                        r = self._burst(m["proxy"], "wan", repo, rnd, tag=m["proxy"])
                        r["first_burst"] = rnd == 0
                        m["bursts"].append(r)
                        self.log(f"  pack cache {mode:<3} round {rnd}: wall {r['wall_s']:.2f} s, "
                                 f"failures {r['failures']}, upload-packs "
                                 f"{r['proxy_upload_pack_runs']}, server CPU/clone "
                                 f"{_fmt(r['server_cpu_per_clone_s'])} s, other jobs "
                                 f"{r['others_cores']:.2f} cores")
                        # Round 0 cannot be repeated: the pack cache would then hit.
                        if (rnd == 0 or attempt == MAX_REPEATS or not cfg.quiet
                                or r["others_cores"] <= DISTURBED_CORES):
                            break
                        r["disturbed"] = True
                        self.log("    disturbed; repeating")
        finally:
            for name in PACK_CACHE_PROXIES:
                env.stop_proxy(name)
            self.sampler.end(phase)
        out["summary"] = pack_cache_summary(out)
        self.results["pack_cache"] = out

    def maintenance_ab(self) -> None:
        """A full clone's serve cost from a cache repo as its fills leave it without
        maintenance (``goblet_maintenance=off``: the first fill's pack plus one pack per
        incremental fill, no bitmap, no commit-graph), then after the full repack goblet's
        maintenance runs; the pack cache is off so every clone runs upload-pack."""
        env, cfg = self.env, self.config
        name, sets = MAINT_PROXY
        repo = "medium-maint.git"
        phase = self.sampler.begin("maintenance before/after")
        out: dict[str, Any] = {"repo": repo, "upstream": "floor", "proxy": name,
                               "options": sets, "fills": cfg.maint_fills, "errors": []}
        try:
            upstream_path = env.add_repo(repo, self.medium.path, link=False)
            proxy = env.start_proxy(name, sets)
            assert proxy.proc is not None
            self.sampler.account(proxy.proc.pid)
            self._maintenance(out, proxy, repo, upstream_path)
        finally:
            env.stop_proxy(name)
            self.sampler.end(phase)
        out["summary"] = maintenance_summary(out)
        self.results["maintenance"] = out

    def _maintenance(self, out: dict[str, Any], proxy: GobletProxy, repo: str,
                     upstream_path: Path) -> None:
        env, cfg = self.env, self.config
        url = env.floor.url(repo)
        cache = cache_repo_path(proxy.cache_dir, url)
        client = env.client("maint-inc", out["proxy"])
        inc = env.fresh_dir("maint-inc")
        started = time.perf_counter()
        res = client.run("clone", "--quiet", url, str(inc), check=False, timeout=900)
        out["first_fill_clone_s"] = round(time.perf_counter() - started, 3)
        # a cold clone streams while it fills: the cache repo appears just after it ends
        deadline = time.monotonic() + 120
        while res.returncode == 0 and not cache.is_dir() and time.monotonic() < deadline:
            time.sleep(0.1)
        if res.returncode != 0 or not cache.is_dir():
            out["errors"].append(f"first clone exited {res.returncode}: "
                                 f"{res.stderr.strip()[-300:]}")
            return
        out["after_first_fill"] = {"count_objects": count_objects(cache),
                                   "pack_files": pack_files(cache)}
        started = time.perf_counter()
        names = [f"src/d{i % 20:02d}/f{i:04d}.txt" for i in range(self.medium.spec.text_files)]
        for i in range(cfg.maint_fills):
            rng = random.Random(f"{cfg.seed}/maint/{i}")
            files = {path: b"".join(rng.randbytes(24).hex().encode() + b"\n"
                                    for _ in range(30))
                     for path in rng.sample(names, 3)}
            new = add_commit(upstream_path, message=f"bench maintenance {i}", files=files)
            res = client.run("fetch", "--quiet", "origin", cwd=inc, check=False, timeout=300)
            got = client.run("rev-parse", "refs/remotes/origin/main", cwd=inc,
                             check=False).stdout.strip()
            if res.returncode != 0 or got != new:
                out["errors"].append(f"fetch {i} exited {res.returncode}, origin/main {got!r} "
                                     f"(expected {new}): {res.stderr.strip()[-300:]}")
                return
        out["fills_s"] = round(time.perf_counter() - started, 2)
        shutil.rmtree(inc, ignore_errors=True)
        out["before"] = self._maint_state(cache)
        packs = out["before"]["count_objects"].get("packs", 0)
        self.log(f"  cache repo after {cfg.maint_fills} incremental fills: {packs} packs "
                 f"({', '.join(sorted(set(out['before']['pack_files'])))}); "
                 f"fills took {out['fills_s']:.1f} s")
        out["before"]["clones"] = self._maint_clones("before", repo, proxy)
        self.wait_quiet()
        out["repack"] = product_repack(proxy.cache_dir, url)
        self.log(f"  full repack (goblet.cache.maintenance.Maintainer.repack): "
                 f"{out['repack'].get('result')} in {out['repack'].get('seconds', 0):.2f} s")
        if out["repack"].get("result") != "ok":
            out["errors"].append(f"full repack: {out['repack']}")
        out["after"] = self._maint_state(cache)
        out["after"]["clones"] = self._maint_clones("after", repo, proxy)

    def _maint_state(self, cache: Path) -> dict[str, Any]:
        """Packs, files and ``pack-objects`` time of a full clone of ``cache`` now."""
        graph = cache / "objects" / "info"
        return {
            "count_objects": count_objects(cache),
            "pack_files": pack_files(cache),
            "commit_graph": (graph / "commit-graph").exists()
            or (graph / "commit-graphs").is_dir(),
            "pack_objects": summary(pack_objects_times(cache, 3 if self.config.quick else 5)),
        }

    def _maint_clones(self, label: str, repo: str, proxy: GobletProxy) -> list[dict[str, Any]]:
        """A warm-up (full runs only) and ``runs`` timed full clones through the proxy."""
        scenario = MAINT_SCENARIOS[label]
        first = len(self.records)
        for rnd in range(self.config.first_round, self.config.runs + 1):
            self.timed_clone(scenario, lambda attempt: repo, rnd, warmup=rnd == 0,
                             server=proxy)
        rows = []
        for r in self.records[first:]:
            t = r.traffic["floor"]
            rows.append({
                "round": r.round, "warmup": r.warmup, "seconds": round(r.seconds, 4),
                "server_cpu_s": r.extra.get("server_cpu_s"),
                "serve_s": round(sum(t.proxy_serve_s), 3) if t.proxy_serve_s else None,
                "upload_pack_runs": t.upload_pack_runs, "error": r.error,
                "others_cores": r.extra.get("others_cores"),
                "disturbed": bool(r.extra.get("disturbed")),
            })
        return rows

    def requests_per_second(self) -> None:
        """info/refs + ls-refs load through goblet, through plain mitmdump and without a
        proxy; against the tests' upstream (one CGI process per request) and against the
        memoizing ``canned`` front of it (which isolates the proxy's own cost)."""
        env, cfg = self.env, self.config
        head = self._head("medium.git")
        assert env.goblet.proc and env.plain.proc and env.floor.pid
        # goblet must have the repo cached under the canned host too (else every ls-refs
        # would start a fill): one clone through it, untimed.
        prime = Scenario("prime_canned", "prime", "goblet", "floor")
        client = env.client(prime.key, prime.via)
        dest = env.fresh_dir("prime-canned")
        client.run("clone", "--quiet", env.canned.url("medium.git"), str(dest), timeout=300)
        shutil.rmtree(dest, ignore_errors=True)
        out: dict[str, Any] = {"clients": cfg.rps_clients, "duration": cfg.rps_seconds,
                               "repo": "medium.git"}
        goblet = (env.goblet.port, env.goblet.ca_cert, env.goblet.proc.pid)
        plain = (env.plain.port, env.plain.ca_cert, env.plain.proc.pid)
        ttl_proxy = env.extras[TTL_PROXY[0]]
        assert ttl_proxy.proc
        ttl = (ttl_proxy.port, ttl_proxy.ca_cert, ttl_proxy.proc.pid)
        own = env.extras.get(OWN_DISPATCH_PROXY[0])  # (not started in a quick run)
        own_rows = (("goblet_ttl_own_dispatch", (own.port, own.ca_cert, own.proc.pid),
                     env.floor.port, None),) if own and own.proc else ()
        runs: tuple[tuple[str, tuple[int | None, Path, int | None], int, Path | None], ...] = (
            ("goblet", goblet, env.floor.port, None),
            ("goblet_ttl", ttl, env.floor.port, None),
            *own_rows,
            ("plain_mitmdump", plain, env.floor.port, None),
            ("upstream_alone", (None, env.floor.cert_path, None), env.floor.port, None),
            ("goblet_canned", goblet, env.canned.port, None),
            ("plain_mitmdump_canned", plain, env.canned.port, None),
            ("canned_alone", (None, env.canned.cert_path, None), env.canned.port, None),
        )
        if cfg.quick:  # a smoke run: one row of each kind
            runs = tuple(r for r in runs if r[0] in ("goblet", "goblet_ttl", "goblet_canned",
                                                     "plain_mitmdump_canned", "canned_alone"))
        once = tuple(r for r in runs if r[0] not in RPS_COMPARED)
        compared = tuple(r for r in runs if r[0] in RPS_COMPARED)
        runs = once + tuple(row for r in range(max(1, cfg.rps_rounds))
                            for row in compared[r % len(compared):] + compared[:r % len(compared)])
        if cfg.profile:
            runs += (("goblet_canned_profiled", goblet, env.canned.port,
                      self.out / "profile-rps.txt"),)
        rounds: dict[str, list[dict[str, Any]]] = {}
        for name, (port, ca, pid), upstream_port, profile in runs:
            for attempt in range(MAX_REPEATS + 1):
                result = self._load_row(name, port, ca, pid, upstream_port, profile, head)
                others = result["others_cores"] or 0.0
                if (attempt == MAX_REPEATS or not cfg.quiet or profile
                        or others <= DISTURBED_CORES):
                    break
                self.log(f"    disturbed: other jobs used {others:.2f} cores; repeating")
                out.setdefault("disturbed", []).append(
                    {"row": name, "requests_per_s": result["requests_per_s"],
                     "others_cores": others})
            rounds.setdefault(name, []).append(result)
        for name, results in rounds.items():
            ranked = sorted(results, key=lambda r: r["requests_per_s"])
            out[name] = ranked[(len(ranked) - 1) // 2] | {
                "rounds": [r["requests_per_s"] for r in results]}
        self.results["rps"] = out

    def _load_row(self, name: str, port: int | None, ca: Path, pid: int | None,
                  upstream_port: int, profile: Path | None, head: str) -> dict[str, Any]:
        """One row of the load test (optionally under py-spy)."""
        env, cfg = self.env, self.config
        assert env.floor.pid is not None
        self.wait_quiet()
        phase = self.sampler.begin(f"req/s: {name}")
        meter = Meter(env).start()
        canned0 = env.canned.counters()
        prof = Profiler(pid, profile) if profile and pid else None
        if prof is not None and prof.start():
            time.sleep(1.0)
        result = run_load(
            clients=cfg.rps_clients, duration=cfg.rps_seconds, proxy_port=port,
            ca_file=ca, host="127.0.0.1", port=upstream_port, repo="medium.git",
            head=head, watch={"mitmdump": pid} if pid else {},
            watch_children={"upstream+cgi": env.floor.pid})
        if prof is not None:
            prof.stop()
            self.results.setdefault("profiles", {})["rps"] = (
                summarize(prof.output) if prof.output.exists() else {"error": prof.error})
        traffic = meter.collect()
        self.sampler.end(phase)
        canned1 = env.canned.counters()
        result["upstream"] = "canned" if upstream_port == env.canned.port else "test"
        result["test_upstream_requests"] = traffic["floor"].upstream.get("requests", 0)
        result["canned_hits"] = canned1["hits"] - canned0["hits"]
        result["proxy_fills"] = sum(t.fills for t in traffic.values())
        result["others_cores"] = (phase.load() or {}).get("others")
        self.log(f"  req/s {name:<22} {result['requests_per_s']:8.1f}/s "
                 f"({result['requests_ok']} ok, {result['failures']} failed, "
                 f"cpu {result['cpu_s']}, machine busy {result['machine_busy_cores']} cores, "
                 f"others {result['others_cores']}, fills {result['proxy_fills']})")
        return result

    def pack_generation(self) -> None:
        """Diagnostic: how long ``pack-objects`` takes for a full clone of the medium repo on
        the upstream (one pack with a bitmap) and in goblet's cache (as the fill left it)."""
        upstream = self.env.repos_dir / "medium.git"
        cache = cache_repo_path(self.env.goblet.cache_dir, self.env.wan.url("medium.git"))
        out: dict[str, Any] = {}
        for name, repo in (("upstream", upstream), ("goblet_cache", cache)):
            times = pack_objects_times(repo, 5)
            packs = pack_files(repo)
            out[name] = {"summary": summary(times), "pack_files": packs}
            self.log(f"  pack-objects, full medium clone, {name:<12}: "
                     f"median {statistics.median(times):.3f} s ({', '.join(sorted(set(packs)))})")
        self.results["pack_generation"] = out

    def profile_warm_clones(self, count: int = 5) -> None:
        """py-spy on mitmdump while ``count`` warm medium clones run one after another."""
        if not self.config.profile or self.env.goblet.proc is None:
            return
        self.wait_quiet()
        prof = Profiler(self.env.goblet.proc.pid, self.out / "profile-warm-clones.txt")
        phase = self.sampler.begin("warm clones under py-spy")
        if prof.start():
            time.sleep(1.0)
            for i in range(count):
                record = self.clone(ALL_SCENARIOS["warm_lo"], "medium.git", 100 + i,
                                    warmup=True)
                record.extra["profiled"] = True
            prof.stop()
        self.sampler.end(phase)
        self.results.setdefault("profiles", {})["warm_clones"] = (
            summarize(prof.output) if prof.output.exists() else {"error": prof.error})

    def large_repo(self) -> None:
        """RSS while serving the large repo; warm vs. floor pairs; one profiled warm clone."""
        cfg = self.config
        rss: list[dict[str, Any]] = []

        def measured(key: str, rnd: int, warmup: bool) -> Record:
            scenario = ALL_SCENARIOS[key]
            for attempt in range(MAX_REPEATS + 1):
                self.wait_quiet()
                self.sampler.settle(0.3 if cfg.quick else 1.0)
                phase = self.sampler.begin(f"{scenario.label} #{rnd}")
                record = self.clone(scenario, "large.git", rnd, warmup=warmup, timeout=1800)
                self.sampler.end(phase)
                if scenario.via == "goblet":
                    growth = self.sampler.growth("goblet", phase)
                    record.extra["rss"] = growth
                    rss.append({"scenario": key, "round": rnd, "warmup": warmup, **growth})
                    self.log(f"    RSS {growth}")
                # The cold clone fills the cache: repeating it would measure a warm one.
                if key == "large_cold" or attempt == MAX_REPEATS or not self._disturbed(record):
                    break
                if rss and rss[-1]["scenario"] == key:
                    rss[-1]["disturbed"] = True
            return record

        measured("large_cold", 1, warmup=False)
        for rnd in range(cfg.first_round, cfg.large_runs + 1):
            order = ["large_warm", "large_floor"] if rnd % 2 == 0 else \
                ["large_floor", "large_warm"]
            for key in order:
                measured(key, rnd, warmup=rnd == 0)
        self.results["rss_large"] = rss
        if cfg.profile and self.env.goblet.proc is not None:
            prof = Profiler(self.env.goblet.proc.pid, self.out / "profile-large-warm.txt")
            self.wait_quiet()
            if prof.start():
                time.sleep(1.0)
                phase = self.sampler.begin("large warm under py-spy")
                record = self.clone(ALL_SCENARIOS["large_warm"], "large.git", 99, warmup=True,
                                    timeout=1800)
                self.sampler.end(phase)
                prof.stop()
                record.extra["profiled"] = True
            self.results.setdefault("profiles", {})["large_warm"] = (
                summarize(prof.output) if prof.output.exists() else {"error": prof.error})

    # -- results -------------------------------------------------------------------------

    def scenario_results(self) -> dict[str, Any]:
        """Per scenario: label, timed samples, their summary, traffic and errors."""
        out: dict[str, Any] = {}
        for key, scenario in ALL_SCENARIOS.items():
            timed = [r for r in self.records if r.scenario == key and not r.warmup
                     and not r.extra.get("disturbed")]
            if not timed:
                continue
            traffic = [r.traffic[scenario.upstream] for r in timed]
            out[key] = {
                "label": scenario.label, "group": scenario.group, "via": scenario.via,
                "upstream": scenario.upstream, "flags": list(scenario.flags),
                "seconds": [round(r.seconds, 4) for r in timed],
                "summary": summary([r.seconds for r in timed]),
                "errors": [r.error for r in timed if r.error],
                "warmup_errors": [r.error for r in self.records
                                  if r.scenario == key and r.warmup and r.error],
                "upstream_requests": [t.upstream.get("requests", 0) for t in traffic],
                "upstream_fetches": [t.upstream.get("fetch", 0) for t in traffic],
                "upstream_pack_bytes": [t.upstream.get("pack_bytes", 0) for t in traffic],
                "upstream_bytes_out": [t.upstream_bytes_out for t in traffic],
                "upstream_kinds": _kind_totals(traffic, len(timed)),
                "proxy_cache_serves": [t.proxy_cache_serves for t in traffic],
                "proxy_upload_pack_runs": [t.upload_pack_runs for t in traffic],
                "pack_cache_hits": [t.pack_cache("hit") + t.pack_cache("follow")
                                    for t in traffic],
                "proxy_fetches_upstream": [t.proxy_upstream_fetches for t in traffic],
                "fills": [max(t.fills, _fills(t)) for t in traffic],
                "others_cores": [r.extra.get("others_cores") for r in timed],
                "disturbed_runs": sum(1 for r in self.records if r.scenario == key
                                      and not r.warmup and r.extra.get("disturbed")),
            }
        return out


def _fills(t: Traffic) -> int:
    """Fills in the step according to goblet's metrics (0 without them)."""
    return int(sum(v for k, v in t.proxy_metrics.items() if k.startswith("goblet_fills_total")))


def _kind_totals(traffic: list[Traffic], runs: int) -> dict[str, float]:
    kinds: dict[str, int] = {}
    for t in traffic:
        for k, v in t.upstream.items():
            if k not in ("requests", "pack_bytes"):
                kinds[k] = kinds.get(k, 0) + v
    return {k: round(v / runs, 2) for k, v in sorted(kinds.items())}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def pack_objects_times(repo: Path, times: int) -> list[float]:
    """Seconds of ``git pack-objects`` for a full clone (every head and tag) of ``repo``, run
    ``times`` times: the pack generation of one ``upload-pack``, without the client."""
    tips = git("for-each-ref", "--format=%(objectname)", "refs/heads", "refs/tags", cwd=repo)
    out = []
    for _ in range(times):
        started = time.perf_counter()
        subprocess.run(
            ["git", "pack-objects", "--revs", "--stdout", "--delta-base-offset"],
            cwd=repo, input=(tips + "\n").encode(), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env=clean_env(), check=True)
        out.append(time.perf_counter() - started)
    return out


def product_repack(cache_dir: Path, url: str) -> dict[str, Any]:
    """The full repack goblet's maintenance runs, by the addon under test itself:
    ``goblet.cache.maintenance.Maintainer.repack(repo, full=True)`` (``repack -a -d
    --write-midx --write-bitmap-index``, ``commit-graph write``, ``pack-refs``, under the
    repo's writer lock, with the default policy) on ``url``'s repo in ``cache_dir``, run in
    this process while the proxy keeps serving. Returns kind, result, seconds and the CPU
    seconds of its git processes."""
    addon = str(PROJECT_ROOT / "addon")
    if addon not in sys.path:
        sys.path.insert(0, addon)
    try:
        from goblet.cache.maintenance import Maintainer  # noqa: PLC0415 - the addon under test
        from goblet.cli.cache import Cache  # noqa: PLC0415
    except ImportError as e:
        return {"result": "error", "error": f"cannot import the addon: {e}"}
    cache = Cache.open(str(cache_dir))
    repo = cache.store.repo_for(url)
    done: list[tuple[str, str, float]] = []
    maintainer = Maintainer(cache.store, cache.locks, cache.git,
                            on_done=lambda kind, result, seconds: done.append(
                                (kind, result, seconds)))
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    kind = asyncio.run(maintainer.repack(repo, full=True))
    seconds = time.perf_counter() - started
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    return {"kind": kind, "result": done[-1][1] if done else "unknown",
            "seconds": round(seconds, 3), "cpu_s": round(cpu, 3)}


def _median_of(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def pack_cache_summary(pc: dict[str, Any]) -> dict[str, Any]:
    """Per mode: the first burst, and the medians of the undisturbed later rounds; ratios
    off ÷ on."""
    out: dict[str, Any] = {}
    for mode, m in pc["modes"].items():
        first = next((b for b in m["bursts"] if b["round"] == 0), None)
        steady = [b for b in m["bursts"] if b["round"] > 0 and not b.get("disturbed")]
        out[mode] = {
            "rounds": len(steady),
            "wall_s": _median_of([b["wall_s"] for b in steady]),
            "cpu_per_clone_s": _median_of([b["server_cpu_per_clone_s"] for b in steady]),
            "upload_pack_runs": _median_of([b["proxy_upload_pack_runs"] for b in steady]),
            "first_wall_s": first["wall_s"] if first else None,
            "first_cpu_per_clone_s": first["server_cpu_per_clone_s"] if first else None,
            "first_upload_pack_runs": first["proxy_upload_pack_runs"] if first else None,
            "failures": sum(b["failures"] for b in m["bursts"]) + len(m.get("errors", [])),
        }
    on, off = out.get("on", {}), out.get("off", {})
    out["ratios_off_over_on"] = {
        key: _ratio(off.get(key), on.get(key))
        for key in ("wall_s", "cpu_per_clone_s", "first_wall_s", "first_cpu_per_clone_s")
    }
    return out


def maintenance_summary(mt: dict[str, Any]) -> dict[str, Any]:
    """Medians of the timed clones before and after the repack; ratios before ÷ after."""
    out: dict[str, Any] = {}
    for state in ("before", "after"):
        st = mt.get(state)
        if not st:
            continue
        timed = [c for c in st["clones"] if not c["warmup"] and not c["disturbed"]]
        out[state] = {
            "runs": len(timed),
            "packs": st["count_objects"].get("packs"),
            "loose": st["count_objects"].get("count"),
            "bitmap": any("bitmap" in f for f in st["pack_files"]),
            "commit_graph": st["commit_graph"],
            "clone_s": _median_of([c["seconds"] for c in timed]),
            "serve_s": _median_of([c["serve_s"] for c in timed]),
            "server_cpu_s": _median_of([c["server_cpu_s"] for c in timed]),
            "pack_objects_s": st["pack_objects"].get("median"),
            "errors": [c["error"] for c in st["clones"] if c["error"]],
        }
    b, a = out.get("before", {}), out.get("after", {})
    out["ratios_before_over_after"] = {
        key: _ratio(b.get(key), a.get(key))
        for key in ("clone_s", "serve_s", "server_cpu_s", "pack_objects_s")
    }
    out["failures"] = (len(mt.get("errors", [])) + len(b.get("errors", []))
                       + len(a.get("errors", [])))
    return out
