"""``python -m bench.run``: run the benchmark session, print the tables, write the report.

    python -m bench.run [--quick] [--runs N] [--latency-ms 60] [--rate-mbit 20]
                        [--out bench/out] [--write-docs] [--no-profile]
    python -m bench.run --render bench/out/run-YYYYmmdd-HHMMSS [--write-docs]

Generated repositories are cached in ``<out>/repos`` (keyed by their generator parameters);
each run writes ``<out>/run-<timestamp>/`` (results.json, rss.json, report.md, plots, the
servers' logs). ``--write-docs`` also rewrites docs/benchmarks.md (below its marker) and
docs/img/bench-*.png. Exit status 1 if any clone, fetch or request failed its checks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import fleet, report
from bench.env import BenchEnv
from bench.genrepo import LARGE, LARGE_QUICK, MEDIUM, MEDIUM_QUICK, ensure_repo
from bench.profile import py_spy_binary
from bench.rss import RssSampler
from bench.scenarios import Config, Session

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: small repos, 1 run each, no warm-up, short load test, "
                   "no profiles")
    p.add_argument("--runs", type=int, help="timed runs per medium scenario (default 7; quick 1)")
    p.add_argument("--large-runs", type=int,
                   help="timed warm/floor pairs on the large repo (default 3; quick 1)")
    p.add_argument("--latency-ms", type=float, default=60.0,
                   help="emulated WAN: delay before each upstream git response (default 60)")
    p.add_argument("--rate-mbit", type=float, default=20.0,
                   help="emulated WAN: body pacing in Mbit/s (default 20)")
    p.add_argument("--concurrency", type=int, help="concurrent warm clones (default 16; quick 4)")
    p.add_argument("--rps-seconds", type=float, help="load test duration (default 10; quick 1)")
    p.add_argument("--rps-rounds", type=int, help="interleaved rounds of the compared load rows "
                   "(default 5; quick 1)")
    p.add_argument("--rps-clients", type=int, help="load test client processes (default 4; "
                   "quick 2)")
    p.add_argument("--maint-fills", type=int,
                   help="incremental fills (one pack each) of the cache repo before the "
                   "maintenance before/after comparison (default 50; quick 3)")
    p.add_argument("--fleet-instances", type=int,
                   help="instances of the fleet phase, alone vs. shared tier (default 4; "
                   "quick 2)")
    p.add_argument("--seed", type=int, default=1, help="order of the interleaved scenarios")
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "out",
                   help="where repos are cached and results written (default bench/out)")
    p.add_argument("--write-docs", action="store_true",
                   help="rewrite docs/benchmarks.md and docs/img/bench-*.png")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-quiet", action="store_true",
                   help="do not wait for other jobs on the machine to calm down, and do not "
                   "repeat timed steps they disturbed (always off with --quick)")
    p.add_argument("--render", type=Path, metavar="RUN_DIR",
                   help="do not run: rebuild RUN_DIR's report (and, with --write-docs, the "
                   "docs) from its results.json")
    p.add_argument("--keep-work", action="store_true",
                   help="keep the session's repos, caches and clones under the run directory")
    args = p.parse_args(argv)
    for name in ("runs", "large_runs", "concurrency", "rps_clients", "rps_rounds",
                 "maint_fills", "fleet_instances"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def make_config(args: argparse.Namespace) -> Config:
    """Defaults for the full run or the quick one, overridden by explicit options."""
    quick = args.quick
    cfg = Config(
        quick=quick,
        runs=1 if quick else 7,
        large_runs=1 if quick else 3,
        latency_ms=args.latency_ms,
        rate_mbit=args.rate_mbit,
        concurrency=4 if quick else 16,
        concurrent_runs=1 if quick else 3,
        rps_clients=2 if quick else 4,
        rps_seconds=1.0 if quick else 10.0,
        rps_rounds=1 if quick else 5,
        profile=not quick and not args.no_profile,
        seed=args.seed,
        medium=MEDIUM_QUICK if quick else MEDIUM,
        large=LARGE_QUICK if quick else LARGE,
        quiet=not quick and not args.no_quiet,
        warmup=not quick,
        maint_fills=3 if quick else 50,
        fleet_instances=2 if quick else 4,
    )
    overrides = {k: getattr(args, k) for k in
                 ("runs", "large_runs", "concurrency", "rps_seconds", "rps_clients",
                  "rps_rounds", "maint_fills", "fleet_instances")
                 if getattr(args, k) is not None}
    return replace(cfg, **overrides)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines()
                  if ln.startswith("model name")]
        info["cpu"] = models[0] if models else platform.machine()
    except OSError:
        info["cpu"] = platform.machine()
    info["cores"] = os.cpu_count()
    try:
        mem = Path("/proc/meminfo").read_text(encoding="utf-8").splitlines()[0].split()[1]
        info["memory"] = f"{int(mem) / 2**20:.1f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    try:
        for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    info["kernel"] = platform.release()
    info["python"] = platform.python_version()
    info["git"] = subprocess.run(["git", "--version"], capture_output=True, text=True,
                                 check=False).stdout.strip().removeprefix("git version ")
    info["mitmproxy"] = importlib.metadata.version("mitmproxy")
    return info


def project_version() -> dict[str, Any]:
    """The commit of the code under test, and whether the addon differs from it."""
    def git_out(*args: str) -> str:
        res = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             check=False)
        return res.stdout.strip()

    return {"commit": git_out("rev-parse", "--short=12", "HEAD") or "unknown",
            "addon_modified": bool(git_out("status", "--porcelain", "--", "addon"))}


def proxy_log_problems(text: str) -> dict[str, Any]:
    """Warnings, errors and tracebacks in a mitmdump log (the access log lines excluded)."""
    bad = [ln for ln in text.splitlines()
           if ("Traceback" in ln or "error" in ln.lower() or "warn" in ln.lower()
               or "fail" in ln.lower()) and " outcome=cache status=200 " not in ln]
    return {"count": len(bad), "samples": bad[:20]}


def publish(results: dict[str, Any], rss: dict[str, Any], run_dir: Path, *, write_docs: bool,
            no_plots: bool, log: Any = print) -> None:
    """Targets, results.json, plots, report.md, the printed tables and (optionally) docs."""
    results["targets"] = report.targets(results)
    (run_dir / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    images = {} if no_plots else report.plots(results, rss, run_dir)
    md = report.markdown(results, {name: name for name in images}, rss)
    (run_dir / "report.md").write_text(md, encoding="utf-8")
    print()
    print(report.targets_table(results["targets"]))
    print()
    print(report.scenario_table(results))
    print()
    print(report.pack_cache_summary_table(results))
    print()
    print(fleet.table(results))
    print()
    print(report.maintenance_summary_table(results))
    print()
    if not images and not no_plots:
        log("bench: matplotlib not installed; plots skipped")
    if write_docs:
        docs = PROJECT_ROOT / "docs"
        report.write_docs(
            docs, report.markdown(results, {n: f"img/{n}" for n in images}, rss), images)
        log(f"bench: wrote {docs / 'benchmarks.md'}")


def render(run_dir: Path, *, write_docs: bool, no_plots: bool) -> int:
    """Rebuild a finished run's report (and docs) from its results.json and rss.json."""
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    rss = json.loads((run_dir / "rss.json").read_text(encoding="utf-8"))
    publish(results, rss, run_dir, write_docs=write_docs, no_plots=no_plots)
    return 0


def _terminate(signum: int, frame: object) -> None:
    # Once: a second signal must not interrupt the clean-up that this one starts.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the whole session; see the module docstring."""
    args = parse_args(argv)
    # Stop cleanly (servers and proxies too) on SIGTERM, and on SIGINT even when started in
    # the background by a shell that ignores it.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    if args.render is not None:
        return render(args.render.resolve(), write_docs=args.write_docs, no_plots=args.no_plots)
    cfg = make_config(args)
    started = time.monotonic()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_root = args.out.resolve()
    run_dir = out_root / f"run-{stamp}{'-quick' if cfg.quick else ''}"
    run_dir.mkdir(parents=True, exist_ok=True)
    log_file = (run_dir / "bench.log").open("a", encoding="utf-8")

    def log(msg: str) -> None:
        print(msg, flush=True)
        if not log_file.closed:
            log_file.write(msg + "\n")
            log_file.flush()

    version = project_version()
    log(f"bench: {'quick' if cfg.quick else 'full'} run into {run_dir} "
        f"(code at {version['commit']}{', addon modified' if version['addon_modified'] else ''})")
    if cfg.profile and py_spy_binary() is None:
        log("bench: py-spy not installed; profiles are skipped")
        cfg = replace(cfg, profile=False)
    t = time.monotonic()
    medium = ensure_repo(cfg.medium, out_root / "repos")
    large = ensure_repo(cfg.large, out_root / "repos")
    log(f"bench: repos ready in {time.monotonic() - t:.1f} s: medium {medium.pack_bytes} B, "
        f"large {large.pack_bytes} B")

    env = BenchEnv(run_dir / "work", latency_ms=cfg.latency_ms, rate_mbit=cfg.rate_mbit)
    sampler = RssSampler()
    results: dict[str, Any] = {}
    try:
        env.start()
        assert env.goblet.proc is not None and env.plain.proc is not None
        sampler.watch("goblet", env.goblet.proc.pid)
        sampler.watch("plain", env.plain.proc.pid)
        for pid in (env.goblet.proc.pid, env.plain.proc.pid, env.wan.pid, env.floor.pid):
            if pid is not None:
                sampler.account(pid)
        sampler.start()
        session = Session(env, cfg, medium, large, sampler, run_dir, log)
        log("bench: preparing (repos on the upstreams, priming caches)")
        session.prepare()
        log("bench: medium-repo scenarios")
        session.medium_rounds()
        log("bench: pack generation on the upstream and in the cache")
        session.pack_generation()
        log("bench: concurrent clones")
        session.concurrent()
        log("bench: pack cache on vs. off (fresh proxies)")
        session.pack_cache_ab()
        log("bench: serving before vs. after maintenance")
        session.maintenance_ab()
        log("bench: a fleet alone vs. with the shared tier (fresh proxies)")
        session.results["fleet"] = fleet.run(env, cfg.fleet_instances, log)
        log("bench: requests per second")
        session.requests_per_second()
        session.profile_warm_clones()
        log("bench: large repo")
        session.large_repo()
        alive = env.goblet.proc.poll() is None
        results.update(session.results)
        results["scenarios"] = session.scenario_results()
        results["records"] = [r.as_dict() for r in session.records]
        results["proxy_log"] = proxy_log_problems(env.goblet.log_text())
        results["quiet_waits"] = {"count": len(session.quiet_waits),
                                  "total_s": round(sum(session.quiet_waits), 1),
                                  "max_s": max(session.quiet_waits, default=0.0)}
        results["proxy_alive_at_end"] = alive
    finally:
        sampler.stop()
        env.stop()
        logs = run_dir / "logs"
        logs.mkdir(exist_ok=True)
        for name, path in (("mitmdump-goblet.log", env.workdir / "goblet" / "mitmdump.log"),
                           ("mitmdump-plain.log", env.workdir / "plain" / "mitmdump.log"),
                           *((f"mitmdump-{extra}.log", proxy.log_path)
                             for extra, proxy in env.extras.items()),
                           ("upstream-wan.log", env.workdir / "wan" / "upstream.log"),
                           ("upstream-floor.log", env.workdir / "floor" / "upstream.log")):
            if path.exists():
                shutil.copyfile(path, logs / name)
        if not args.keep_work:
            shutil.rmtree(env.workdir, ignore_errors=True)
        log_file.close()

    scen = results["scenarios"]
    repos = {"medium": medium.as_dict(), "large": large.as_dict()}
    if "direct" in scen:
        repos["medium"]["clone_pack_bytes"] = scen["direct"]["upstream_pack_bytes"][0]
    if "large_floor" in scen:
        repos["large"]["clone_pack_bytes"] = scen["large_floor"]["upstream_pack_bytes"][0]
    failures = sum(len(s["errors"]) + len(s["warmup_errors"]) for s in scen.values())
    for runs in results.get("concurrent", {}).values():
        if isinstance(runs, list):
            failures += sum(r["failures"] for r in runs)
    failures += sum(r.get("failures", 0) for r in results.get("rps", {}).values()
                    if isinstance(r, dict))
    pack_cache = results.get("pack_cache", {}).get("summary", {})
    failures += sum(m.get("failures", 0) for m in pack_cache.values() if isinstance(m, dict))
    failures += results.get("maintenance", {}).get("summary", {}).get("failures", 0)
    failures += sum(m.get("failures", 0) for m in results.get("fleet", {}).get("modes", {})
                    .values())
    results.update({
        "started": stamp,
        "argv": " ".join(sys.argv[1:] if argv is None else argv),
        "duration_s": round(time.monotonic() - started, 1),
        "settings": {
            "mode": "quick" if cfg.quick else "full",
            "latency_ms": cfg.latency_ms, "rate_mbit": cfg.rate_mbit, "runs": cfg.runs,
            "large_runs": cfg.large_runs, "concurrency": cfg.concurrency,
            "concurrent_runs": cfg.concurrent_runs, "rps_clients": cfg.rps_clients,
            "rps_seconds": cfg.rps_seconds, "rps_rounds": cfg.rps_rounds,
            "maint_fills": cfg.maint_fills,
            "seed": cfg.seed, "profile": cfg.profile,
            "warm-up": "one untimed run per scenario (page cache cannot be dropped)"
                       if cfg.warmup else "none (quick run)",
            "shared machine": (
                "before each timed step, wait until other jobs use < 0.3 cores; repeat a step "
                "they disturbed (> 0.5 cores on average), at most twice" if cfg.quiet
                else "no waiting, no repeats"),
            "large-repo upstream": "loopback (no WAN), to keep the fill short",
        },
        "machine": machine(),
        "project": version,
        "repos": repos,
        "failures": failures,
    })
    rss = sampler.as_dict()
    (run_dir / "rss.json").write_text(json.dumps(rss), encoding="utf-8")
    publish(results, rss, run_dir, write_docs=args.write_docs, no_plots=args.no_plots, log=log)
    print(f"bench: done in {results['duration_s'] / 60:.1f} min; {failures} failed checks; "
          f"results in {run_dir}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
