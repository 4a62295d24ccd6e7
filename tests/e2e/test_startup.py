"""Start-up: valid options log one ready line; bad ones stop mitmdump with a clear message."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.proxy import ADDON, GobletProxy, mitmdump_binary


def run_mitmdump(tmp_path: Path, confdir: Path, *sets: str) -> subprocess.CompletedProcess[str]:
    cmd = [mitmdump_binary(), "-s", str(ADDON), "--listen-host", "127.0.0.1", "-p", "0",
           "--set", f"confdir={confdir}"]
    for item in sets:
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=env, stdin=subprocess.DEVNULL, check=False)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("goblet_hosts=not a host!", "bad host name"),
        ("goblet_hosts=example.com:99999", "bad port"),
        ("goblet_verdict_ttl=-5", "goblet_verdict_ttl must be a duration"),
        ("goblet_verdict_ttl=3w", "goblet_verdict_ttl must be a duration"),
        ("goblet_verdict_ttl=2h", "goblet_verdict_ttl must be between 0 and 3600"),
        ("goblet_upstream_timeout=0", "goblet_upstream_timeout must be between"),
        ("goblet_instance=bad name", "goblet_instance"),
        ("goblet_verdict_ttl=soon", "goblet_verdict_ttl"),
        ("goblet_max_request_bytes=lots", "goblet_max_request_bytes must be a size"),
    ],
)
def test_bad_options_stop_start_up(
    setting: str, message: str, tmp_path: Path, confdir: Path
) -> None:
    res = run_mitmdump(tmp_path, confdir, f"goblet_cache_dir={tmp_path / 'cache'}", setting)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert message in out
    assert "goblet ready" not in out


def test_an_unusable_cache_dir_stops_start_up(tmp_path: Path, confdir: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for value in (blocker, blocker / "below"):
        res = run_mitmdump(tmp_path, confdir, f"goblet_cache_dir={value}")
        out = res.stdout + res.stderr
        assert res.returncode == 1, out
        assert "goblet" in out and "goblet ready" not in out


def test_documented_command_starts_and_logs_one_ready_line(tmp_path: Path, confdir: Path) -> None:
    px = GobletProxy(tmp_path, hosts=["127.0.0.1:1", "git.example.com"], upstream_ca=None,
                     confdir=confdir, sets={"goblet_verdict_ttl": "30s"})
    with px:
        ready = [ln for ln in px.log_text().splitlines() if "goblet ready" in ln]
        assert len(ready) == 1
        for part in ("verdict_ttl=30s", "hosts=127.0.0.1:1,git.example.com",
                     f"cache_dir={px.cache_dir}"):
            assert part in ready[0]
        assert (px.cache_dir / "tenant-secret").stat().st_mode & 0o777 == 0o600
    assert px.proc is not None and px.proc.returncode == 0
    assert (confdir / "mitmproxy-ca.pem").stat().st_mode & 0o077 == 0
