"""`make bench-quick` end to end, so the benchmark harness never rots.

Runs ``python -m bench.run --quick`` in a temporary directory (small generated repos, one run
per scenario) and checks only that it completes and produces a sane table and JSON: no
assertion on any time, ratio or target verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.scenarios import ALL_SCENARIOS

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    docs_before = _docs_stamp()
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    res = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--no-plots", "--out", str(tmp_path)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert res.returncode == 0, f"bench failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    runs = list(tmp_path.glob("run-*-quick"))
    assert len(runs) == 1
    results = json.loads((runs[0] / "results.json").read_text())

    assert results["failures"] == 0
    assert set(results["scenarios"]) == set(ALL_SCENARIOS)
    for key, scenario in results["scenarios"].items():
        assert scenario["summary"]["n"] >= 1, key
        assert all(s > 0 for s in scenario["seconds"]), key
        assert not scenario["errors"], (key, scenario["errors"])

    warm = results["scenarios"]["warm"]
    assert warm["upstream_fetches"] == [0] * len(warm["upstream_fetches"])
    assert results["scenarios"]["direct"]["upstream_pack_bytes"][0] > 0
    assert len(results["concurrent"]["goblet"]) == 1  # one timed round, no warm-up
    for row in ("goblet", "goblet_canned", "canned_alone"):
        assert results["rps"][row]["requests_ok"] > 0, row
        assert results["rps"][row]["failures"] == 0, row
    assert results["rps"]["goblet_canned"]["proxy_fills"] == 0
    assert results["rss_large"] and results["rss_large"][0]["peak_mib"] > 0
    for run in results["concurrent"]["goblet"] + results["concurrent"]["floor"]:
        assert run["server_cpu_per_clone_s"] is not None

    # A fleet alone vs. with the shared tier: the tier fetches the pack from upstream once,
    # and a later instance restores it (no upstream pack at all).
    fleet = results["fleet"]["modes"]
    n = results["fleet"]["instances"]
    assert fleet["alone"]["failures"] == 0 and fleet["tier"]["failures"] == 0, fleet
    assert fleet["alone"]["upstream_fetches"] == n and fleet["tier"]["upstream_fetches"] == 1
    assert fleet["alone"]["late_upstream_pack_bytes"] > 0
    assert fleet["tier"]["late_upstream_pack_bytes"] == 0

    # Pack cache on vs. off (fresh proxies, first burst + steady rounds).
    pack_cache = results["pack_cache"]
    assert set(pack_cache["modes"]) == {"on", "off"}
    for mode in pack_cache["modes"].values():
        assert not mode["errors"], mode["errors"]
        assert [b["round"] for b in mode["bursts"]] == [0, 1]
        for burst in mode["bursts"]:
            assert burst["failures"] == 0, burst["errors"]
            assert burst["server_cpu_s"] is not None
    off_runs = [b["proxy_upload_pack_runs"] for b in pack_cache["modes"]["off"]["bursts"]]
    assert off_runs == [pack_cache["clients"]] * 2  # no pack cache: one upload-pack per clone
    assert pack_cache["modes"]["on"]["bursts"][1]["pack_cache_hits"] == pack_cache["clients"]
    assert set(pack_cache["summary"]["ratios_off_over_on"]) >= {"wall_s", "cpu_per_clone_s"}

    # Full-clone serving before and after maintenance.
    maint = results["maintenance"]
    assert not maint["errors"], maint["errors"]
    assert maint["before"]["count_objects"]["packs"] == maint["fills"] + 1
    assert not any("bitmap" in f for f in maint["before"]["pack_files"])
    assert maint["repack"]["result"] == "ok"
    assert maint["after"]["count_objects"]["packs"] == 1
    assert any("bitmap" in f for f in maint["after"]["pack_files"])
    for state in ("before", "after"):
        clones = maint[state]["clones"]
        assert clones and all(c["error"] is None and c["upload_pack_runs"] == 1
                              for c in clones), clones
    assert set(maint["summary"]["ratios_before_over_after"]) >= {"clone_s", "server_cpu_s"}
    assert {t["key"] for t in results["targets"]} == {
        "warm_vs_floor", "large_warm_vs_floor", "warm_vs_direct", "cold_vs_direct",
        "large_cold_vs_direct", "cold_pack_bytes", "large_cold_pack_bytes", "rss_growth",
        "warm_pack_bytes", "warm_requests", "refs_rps", "refs_rps_canned",
        "warm_ttl_vs_floor", "refs_rps_ttl", "refs_rps_share_ttl", "refs_rps_share_canned",
    }
    # within the refs TTL a warm clone asks the upstream nothing at all
    assert max(results["scenarios"]["warm_ttl"]["upstream_requests"]) == 0
    assert results["rps"]["goblet_ttl"]["test_upstream_requests"] == 0

    table = res.stdout
    assert "| target | this run | verdict |" in table
    for scenario in results["scenarios"].values():
        assert scenario["label"] in table
    report = (runs[0] / "report.md").read_text()
    assert "### Targets" in report and "### Settings, machine, repositories" in report
    assert "### Pack cache on vs. off" in report and "off ÷ on" in report
    assert "### Serving a full clone before and after maintenance" in report
    assert "before ÷ after" in table
    assert _docs_stamp() == docs_before, "a quick run must not rewrite docs/benchmarks.md"


def _docs_stamp() -> int | None:
    page = PROJECT_ROOT / "docs" / "benchmarks.md"
    return page.stat().st_mtime_ns if page.exists() else None


def test_lfs_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    """``python -m bench.lfs`` with one small round: warm clones bring 0 LFS bytes."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    out = tmp_path / "lfs.json"
    res = subprocess.run(
        [sys.executable, "-m", "bench.lfs", "--rounds", "1", "--files", "2", "--file-mib",
         "0.5", "--rate-mbit", "0", "--json", str(out)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert res.returncode == 0, f"bench failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    runs = json.loads(out.read_text())["runs"]
    assert [r["upstream_lfs_bytes"] for r in runs["warm"]] == [0]
    assert runs["direct"][0]["upstream_lfs_bytes"] == runs["cold"][0]["upstream_lfs_bytes"] > 0
    assert "warm" in res.stdout
