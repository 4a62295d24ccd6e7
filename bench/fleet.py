"""The fleet phase: N goblet instances with empty caches cloning one repository at once,
alone (every instance an island) and with the shared tier (moto's S3-compatible server and
redis-server on loopback), then one more instance started later. Reports what the upstream
sent and how long the cold clones took, side by side."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from bench.env import BenchEnv
from tests.support.fleetservers import AWS_ENV, RedisServer, S3Server
from tests.support.repos import git

REPO = "medium.git"


@contextmanager
def _aws_env() -> Iterator[None]:
    """The AWS chain's variables for the mitmdumps started meanwhile (they inherit them)."""
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _clone(env: BenchEnv, via: str, tag: str, url: str, expected: str) -> tuple[float, str]:
    client = env.client(f"fleet-{tag}", via)
    dest = env.fresh_dir(f"fleet-{tag}")
    started = time.perf_counter()
    res = client.run("clone", "--quiet", url, str(dest), check=False, timeout=900)
    seconds = time.perf_counter() - started
    head = client.run("rev-parse", "HEAD", cwd=dest, check=False).stdout.strip() \
        if res.returncode == 0 else ""
    error = "" if head == expected else (res.stderr.strip()[-300:] or f"HEAD {head!r}")
    return seconds, error


def _upstream(env: BenchEnv) -> tuple[int, int]:
    stats = env.wan.stats()
    return int(stats.get("fetch", 0)), int(stats["pack_bytes"])


def _wait_published(s3: S3Server, prefix: str, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(k.startswith(prefix) and k.endswith("manifest.json") for k in s3.objects()):
            return True
        time.sleep(0.2)
    return False


def run(env: BenchEnv, instances: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Both modes; every instance caches the WAN upstream (so the store, on loopback, is
    the nearer source, as in a cluster next to its object store)."""
    expected = git("rev-parse", "refs/heads/main", cwd=env.repos_dir / REPO)
    url = env.wan.url(REPO)
    out: dict[str, Any] = {"instances": instances, "repo": REPO, "modes": {}}
    with S3Server("goblet-bench") as s3, RedisServer(env.workdir / "fleet-redis") as redis, \
            _aws_env():
        for mode in ("alone", "tier"):
            sets: dict[str, str] = {"goblet_maintenance": "off"}
            if mode == "tier":
                sets |= {"goblet_store": f"s3://{s3.bucket}/bench",
                         "goblet_store_endpoint": s3.endpoint, "goblet_redis": redis.url}
            names = [f"fleet-{mode}-{i}" for i in range(instances + 1)]
            try:
                for name in names[:-1]:
                    env.start_proxy(name, sets)
                fetches0, bytes0 = _upstream(env)
                t0 = time.perf_counter()
                with ThreadPoolExecutor(instances) as pool:
                    outcomes = list(pool.map(
                        lambda nm: _clone(env, nm, nm, url, expected), names[:-1]))
                wall = time.perf_counter() - t0
                fetches1, bytes1 = _upstream(env)
                if mode == "tier":
                    _wait_published(s3, "bench/")
                env.start_proxy(names[-1], sets)
                late_s, late_error = _clone(env, names[-1], names[-1], url, expected)
                warm_s, warm_error = _clone(env, names[-1], names[-1] + "-warm", url, expected)
                fetches2, bytes2 = _upstream(env)
            finally:
                for name in names:
                    env.stop_proxy(name)
            errors = [e for _, e in outcomes if e] + [e for e in (late_error, warm_error) if e]
            result = {
                "wall_s": round(wall, 3),
                "clone_s": sorted(round(s, 3) for s, _ in outcomes),
                "upstream_fetches": fetches1 - fetches0,
                "upstream_pack_bytes": bytes1 - bytes0,
                "late_cold_clone_s": round(late_s, 3),
                "late_warm_clone_s": round(warm_s, 3),
                "late_upstream_fetches": fetches2 - fetches1,
                "late_upstream_pack_bytes": bytes2 - bytes1,
                "failures": len(errors), "errors": errors[:3],
            }
            out["modes"][mode] = result
            log(f"  fleet {mode:<5}: {instances} cold clones at once, wall {wall:.2f} s, "
                f"upstream {result['upstream_fetches']} fetches / "
                f"{result['upstream_pack_bytes']} pack bytes; a later instance: cold "
                f"{late_s:.2f} s, upstream {result['late_upstream_pack_bytes']} pack bytes; "
                f"failures {len(errors)}")
    return out


def _b(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return str(n)


def table(results: dict[str, Any]) -> str:
    """The two modes side by side."""
    fl = results.get("fleet")
    if not fl or "modes" not in fl:
        return "_not run_"
    alone, tier = fl["modes"].get("alone", {}), fl["modes"].get("tier", {})
    n = fl["instances"]
    rows = [
        (f"upstream pack bytes, {n} instances cloning at once", "upstream_pack_bytes", _b),
        (f"upstream fetches, {n} instances cloning at once", "upstream_fetches", str),
        (f"wall time of the {n} cold clones, s", "wall_s", lambda v: f"{v:.2f}"),
        ("slowest of them, s", "clone_s", lambda v: f"{max(v):.2f}" if v else "-"),
        ("a later instance (empty cache): cold clone, s", "late_cold_clone_s",
         lambda v: f"{v:.2f}"),
        ("the same instance: warm clone, s", "late_warm_clone_s", lambda v: f"{v:.2f}"),
        ("a later instance: upstream pack bytes", "late_upstream_pack_bytes", _b),
        ("failures", "failures", str),
    ]
    out = [f"{n} goblet instances with empty caches, each cloning `{fl['repo']}` over the WAN "
           "upstream at the same moment; then one more instance with an empty cache. *Alone*: "
           "every instance an island. *Shared tier*: the same with `goblet_store` (moto's "
           "S3-compatible server) and `goblet_redis` (redis-server), both on loopback.",
           "",
           "| | alone | shared tier |", "|---|---:|---:|"]
    for label, key, fmt in rows:
        a, t = alone.get(key), tier.get(key)
        out.append(f"| {label} | {fmt(a) if a is not None else '-'} "
                   f"| {fmt(t) if t is not None else '-'} |")
    errors = [e for m in fl["modes"].values() for e in m.get("errors", [])]
    if errors:
        out += ["", "**Errors**: " + "; ".join(errors)]
    return "\n".join(out)
