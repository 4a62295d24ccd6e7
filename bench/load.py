"""info/refs + ls-refs requests per second, from several client processes.

Each client process opens one connection (through the proxy: one CONNECT tunnel, TLS to the
proxy's certificate for the upstream host; without a proxy: TLS straight to the upstream) and
keeps it alive, alternating ``GET info/refs`` (protocol v2) and ``POST git-upload-pack``
``command=ls-refs``. Every status and body is checked. All clients start at the same
wall-clock instant (after their connection and one untimed request pair) and stop after a
fixed duration or a fixed request count, whichever comes first.

Clients, proxy and upstream share the machine's cores: the result is a property of the whole
loop on this machine, so :func:`run_load` also reports the CPU used by the processes involved.
"""

from __future__ import annotations

import http.client
import multiprocessing
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.rss import cpu_seconds, machine_busy_seconds
from tests.support.rawhttp import v2_ls_refs_body

ADVERTISEMENT = "application/x-git-upload-pack-advertisement"
RESULT = "application/x-git-upload-pack-result"
MAX_REQUESTS_PER_CLIENT = 200_000


@dataclass(frozen=True)
class LoadJob:
    """What one client process does (picklable)."""

    proxy_port: int | None
    ca_file: str
    host: str
    port: int
    repo: str
    head: str
    start_at: float
    duration: float
    max_requests: int = MAX_REQUESTS_PER_CLIENT


def _connect(job: LoadJob) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=job.ca_file)
    if job.proxy_port is None:
        return http.client.HTTPSConnection(job.host, job.port, context=context, timeout=30)
    conn = http.client.HTTPSConnection("127.0.0.1", job.proxy_port, context=context, timeout=30)
    conn.set_tunnel(job.host, job.port)
    return conn


def _check(kind: str, status: int, ctype: str, body: bytes, head: str) -> str | None:
    """None if the answer is right, else a short description of what is wrong."""
    if status != 200:
        return f"{kind}: status {status}"
    if kind == "info_refs":
        # A v2 server answers with its capabilities (no "# service=" line, no refs).
        if ctype != ADVERTISEMENT or not body.startswith(b"000eversion 2\n"):
            return f"info_refs: unexpected answer {ctype} {body[:40]!r}"
        if b"ls-refs" not in body or not body.endswith(b"0000"):
            return "info_refs: not a complete v2 capability advertisement"
        return None
    if ctype != RESULT or not body.endswith(b"0000"):
        return f"ls_refs: unexpected answer {ctype} {body[-20:]!r}"
    if f"{head} refs/heads/main".encode() not in body:
        return "ls_refs: refs/heads/main missing or wrong"
    return None


def client(job: LoadJob) -> dict[str, Any]:
    """Run one client process's loop; return its counts and latencies (module-level so that
    ``multiprocessing`` can start it in a fresh interpreter)."""
    requests = [
        ("info_refs", "GET", f"/{job.repo}/info/refs?service=git-upload-pack", None,
         {"Git-Protocol": "version=2"}),
        ("ls_refs", "POST", f"/{job.repo}/git-upload-pack", v2_ls_refs_body(),
         {"Git-Protocol": "version=2", "Content-Type": "application/x-git-upload-pack-request",
          "Accept": RESULT}),
    ]
    conn = _connect(job)
    ok = {"info_refs": 0, "ls_refs": 0}
    failures: list[str] = []
    latencies: list[float] = []
    reconnects = 0

    def one(i: int) -> tuple[str, float]:
        kind, method, path, body, headers = requests[i % 2]
        started = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        elapsed = time.perf_counter() - started
        problem = _check(kind, resp.status, resp.getheader("Content-Type", ""), data, job.head)
        if problem:
            raise ValueError(problem)
        return kind, elapsed

    try:
        one(0)
        one(1)  # connection, tunnel and TLS set up before the clock starts
    except (OSError, ValueError, http.client.HTTPException) as e:
        failures.append(f"before the start: {e.__class__.__name__}: {e}"[:200])
        conn.close()
        conn = _connect(job)
    time.sleep(max(0.0, job.start_at - time.time()))
    started = time.perf_counter()
    deadline = started + job.duration
    i = 0
    while i < job.max_requests and time.perf_counter() < deadline:
        try:
            kind, elapsed = one(i)
            ok[kind] += 1
            latencies.append(elapsed)
        except (OSError, ValueError, http.client.HTTPException) as e:
            failures.append(f"{e.__class__.__name__}: {e}"[:200])
            conn.close()
            conn = _connect(job)
            reconnects += 1
        i += 1
    ended = time.perf_counter()
    conn.close()
    latencies.sort()
    return {
        "ok": ok, "failures": len(failures), "failure_samples": failures[:5],
        "reconnects": reconnects, "seconds": ended - started,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
    }


def run_load(
    *,
    clients: int,
    duration: float,
    proxy_port: int | None,
    ca_file: Path,
    host: str,
    port: int,
    repo: str,
    head: str,
    watch: dict[str, int] | None = None,
    watch_children: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Run ``clients`` processes for ``duration`` seconds; aggregate their results.

    ``watch`` names pids whose CPU time over the timed window is reported (``watch_children``:
    including their reaped children, e.g. the upstream's CGI processes).
    """
    watch = watch or {}
    watch_children = watch_children or {}
    start_at = time.time() + 1.0 + 0.3 * clients
    jobs = [
        LoadJob(proxy_port, str(ca_file), host, port, repo, head, start_at, duration)
        for _ in range(clients)
    ]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(clients) as pool:
        pending = pool.map_async(client, jobs)
        time.sleep(max(0.0, start_at - time.time()))
        cpu0 = {n: cpu_seconds(p) for n, p in watch.items()}
        cpu0 |= {n: cpu_seconds(p, children=True) for n, p in watch_children.items()}
        busy0, total0 = machine_busy_seconds()
        t0 = time.monotonic()
        time.sleep(duration)
        cpu1 = {n: cpu_seconds(p) for n, p in watch.items()}
        cpu1 |= {n: cpu_seconds(p, children=True) for n, p in watch_children.items()}
        busy1, total1 = machine_busy_seconds()
        window = time.monotonic() - t0
        results = pending.get(timeout=duration + 120)
    ok = sum(sum(r["ok"].values()) for r in results)
    failures = sum(r["failures"] for r in results)
    seconds = max(r["seconds"] for r in results)
    cpu = {
        name: None if cpu0[name] is None or cpu1[name] is None
        else round(cpu1[name] - cpu0[name], 2)  # type: ignore[operator]
        for name in cpu0
    }
    return {
        "clients": clients,
        "duration_s": round(seconds, 2),
        "requests_ok": ok,
        "info_refs_ok": sum(r["ok"]["info_refs"] for r in results),
        "ls_refs_ok": sum(r["ok"]["ls_refs"] for r in results),
        "failures": failures,
        "failure_samples": [s for r in results for s in r["failure_samples"]][:5],
        "requests_per_s": round(ok / seconds, 1) if seconds else 0.0,
        "p50_ms": _median([r["p50_ms"] for r in results if r["p50_ms"] is not None]),
        "p99_ms": max((r["p99_ms"] for r in results if r["p99_ms"] is not None), default=None),
        "cpu_s": cpu,
        "window_s": round(window, 2),
        "machine_busy_cores": round((busy1 - busy0) / window, 2),
        "machine_cores": round((total1 - total0) / window, 2),
    }


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[len(values) // 2], 2)
