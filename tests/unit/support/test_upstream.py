"""Tests of the upstream server: cloning, counters, faults, API, WAN emulation."""

from __future__ import annotations

import base64
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.repos import add_commit, git, list_refs, make_bare_repo
from tests.support.upstream import UpstreamServer
from tests.unit.support.helpers import (
    CONFIG,
    clone,
    https,
    pkt,
    run_git,
    statuses,
    upload_pack,
)

LATENCY_MS = 400
RATE_MBIT = 8.0  # 1 MB/s


@pytest.fixture(scope="module")
def slow_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamServer]:
    """A server with WAN emulation (latency and rate cap) and one 2 MB repo."""
    server = UpstreamServer(
        tmp_path_factory.mktemp("slow-upstream"),
        CONFIG,
        latency_ms=LATENCY_MS,
        rate_mbit=RATE_MBIT,
    )
    make_bare_repo(server.root / "public.git")
    make_bare_repo(server.root / "big.git", commits=10, files_per_commit=4, blob_size=50_000)
    with server:
        yield server


# -- cloning and counters ---------------------------------------------------------------


def test_anonymous_clone_of_public_repo(upstream: UpstreamServer, home: Path) -> None:
    result = clone(upstream, home, "public.git", home / "c")
    assert result.returncode == 0, result.stderr
    expected = list_refs(upstream.root / "public.git")["refs/heads/main"]
    assert git("rev-parse", "HEAD", cwd=home / "c") == expected
    stats = upstream.stats()
    assert stats["info_refs"] == 1
    assert stats["ls_refs"] == 1
    assert stats["fetch"] >= 1
    assert stats["upload_pack_v0"] == 0
    assert stats["pack_bytes"] > 0
    assert set(statuses(stats)) == {200}
    assert {entry["git_protocol"] for entry in stats["requests"]} == {"version=2"}
    assert {entry["user"] for entry in stats["requests"]} == {None}


def test_protocol_v0_clone(upstream: UpstreamServer, home: Path) -> None:
    result = clone(upstream, home, "public.git", home / "c", "-c", "protocol.version=0")
    assert result.returncode == 0, result.stderr
    stats = upstream.stats()
    assert stats["info_refs"] == 1
    assert stats["upload_pack_v0"] == 1
    assert stats["ls_refs"] == stats["fetch"] == 0
    assert stats["pack_bytes"] > 0
    assert {entry["git_protocol"] for entry in stats["requests"]} == {None}


def test_protocol_v0_clone_with_gzipped_wants(upstream: UpstreamServer, home: Path) -> None:
    # 40 distinct wants make the request body > 1 KiB, which git sends gzip-compressed.
    result = clone(upstream, home, "many.git", home / "c", "-c", "protocol.version=0")
    assert result.returncode == 0, result.stderr
    assert len(git("tag", cwd=home / "c").split()) == 30
    assert upstream.stats()["upload_pack_v0"] == 1


def test_clone_of_empty_repo(upstream: UpstreamServer, home: Path) -> None:
    result = clone(upstream, home, "empty.git", home / "c")
    assert result.returncode == 0, result.stderr
    assert "empty repository" in result.stderr


def test_ls_remote_and_incremental_fetch_counters(upstream: UpstreamServer, home: Path) -> None:
    result = run_git(upstream, home, "ls-remote", upstream.url("public.git"), cwd=home)
    assert result.returncode == 0, result.stderr
    assert "refs/heads/dev" in result.stdout
    assert "refs/tags/r1^{}" in result.stdout
    stats = upstream.stats()
    assert (stats["info_refs"], stats["ls_refs"], stats["fetch"]) == (1, 1, 0)
    assert stats["pack_bytes"] == 0

    assert clone(upstream, home, "scratch.git", home / "c").returncode == 0
    oid = add_commit(upstream.root / "scratch.git", message="incremental")
    upstream.reset_stats()
    result = run_git(upstream, home, "fetch", "origin", cwd=home / "c")
    assert result.returncode == 0, result.stderr
    assert git("rev-parse", "origin/main", cwd=home / "c") == oid
    stats = upstream.stats()
    assert (stats["info_refs"], stats["ls_refs"]) == (1, 1)
    assert stats["fetch"] >= 1
    assert stats["pack_bytes"] > 0


def test_upload_pack_body_classification(upstream: UpstreamServer) -> None:
    main = list_refs(upstream.root / "public.git")["refs/heads/main"]
    ls_refs = pkt("command=ls-refs\n") + b"0001" + pkt("ref-prefix refs/heads/\n") + b"0000"
    status, body = upload_pack(upstream, "public.git", ls_refs, gzipped=True)
    assert status == 200
    assert f"{main} refs/heads/main".encode() in body
    fetch = pkt("command=fetch\n") + b"0001" + pkt(f"want {main}\n") + pkt("done\n") + b"0000"
    status, body = upload_pack(upstream, "public.git", fetch)
    assert status == 200
    assert b"PACK" in body
    v0 = pkt(f"want {main} ofs-delta\n") + b"0000" + pkt("done\n")
    status, body = upload_pack(upstream, "public.git", v0, v2=False, gzipped=True)
    assert status == 200
    assert b"PACK" in body
    assert upload_pack(upstream, "public.git", b"0000", v2=False)[0] == 200
    assert upload_pack(upstream, "public.git", pkt("command=object-info\n") + b"0000")[0] == 200
    stats = upstream.stats()
    kinds = [entry["kind"] for entry in stats["requests"]]
    assert kinds == ["ls_refs", "fetch", "upload_pack_v0", "probe", "other"]
    assert stats["pack_bytes"] > 0


# -- faults ----------------------------------------------------------------------------------


def test_stall_fault_trips_low_speed_limit(upstream: UpstreamServer, home: Path) -> None:
    upstream.fault("stall", ["info_refs"])
    low_speed = ["-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=2"]
    started = time.monotonic()
    result = run_git(
        upstream, home, *low_speed, "ls-remote", upstream.url("public.git"), cwd=home, timeout=30
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert 1.5 < elapsed < 10
    entry = upstream.stats()["requests"][0]
    assert (entry["kind"], entry["fault"], entry["status"]) == ("info_refs", "stall", None)
    upstream.fault("none")
    result = run_git(upstream, home, "ls-remote", upstream.url("public.git"), cwd=home)
    assert result.returncode == 0, result.stderr


def test_error500_fault_with_count(upstream: UpstreamServer, home: Path) -> None:
    upstream.fault("error500", ["ls_refs"], count=1)
    result = clone(upstream, home, "public.git", home / "c1")
    assert result.returncode != 0
    assert "500" in result.stderr
    assert clone(upstream, home, "public.git", home / "c2").returncode == 0
    faulted = [e for e in upstream.stats()["requests"] if e["fault"]]
    assert [(e["kind"], e["status"]) for e in faulted] == [("ls_refs", 500)]


def test_truncate_fault_breaks_clone(upstream: UpstreamServer, home: Path) -> None:
    upstream.fault("truncate", ["fetch"])
    result = clone(upstream, home, "public.git", home / "c")
    assert result.returncode != 0
    entry = upstream.stats()["requests"][-1]
    assert (entry["kind"], entry["fault"], entry["status"]) == ("fetch", "truncate", 200)


def test_reset_fault_breaks_ls_remote(upstream: UpstreamServer, home: Path) -> None:
    upstream.fault("reset")
    result = run_git(upstream, home, "ls-remote", upstream.url("public.git"), cwd=home)
    assert result.returncode != 0
    entry = upstream.stats()["requests"][-1]
    assert (entry["fault"], entry["status"]) == ("reset", 0)


def test_fault_rejects_unknown_mode_and_kind(upstream: UpstreamServer) -> None:
    with pytest.raises(RuntimeError, match="400"):
        upstream.fault("explode")
    with pytest.raises(RuntimeError, match="400"):
        upstream.fault("stall", ["nonsense"])


def test_reset_stats_zeroes_counters(upstream: UpstreamServer, home: Path) -> None:
    assert clone(upstream, home, "public.git", home / "c").returncode == 0
    assert upstream.stats()["pack_bytes"] > 0
    upstream.reset_stats()
    stats = upstream.stats()
    assert stats.pop("requests") == []
    assert set(stats.values()) == {0}


# -- non-git endpoints -------------------------------------------------------------------------


def test_api_endpoints_on_one_keep_alive_connection(upstream: UpstreamServer) -> None:
    conn = https(upstream)
    try:
        conn.request("GET", "/api/hello")
        response = conn.getresponse()
        assert response.getheader("Content-Type") == "application/json"
        assert json.loads(response.read()) == {"hello": "world", "auth": None}
        sock = conn.sock

        basic = base64.b64encode(b"alice:alice-pw").decode()
        conn.request("GET", "/api/hello", headers={"Authorization": f"Basic {basic}"})
        assert json.loads(conn.getresponse().read())["auth"] == "alice"

        conn.request("GET", "/api/bytes?n=200000")
        response = conn.getresponse()
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.read() == bytes(i % 251 for i in range(200_000))

        payload = random.Random(3).randbytes(300_000)
        conn.request(
            "POST",
            "/api/echo",
            body=iter([payload[:100_000], payload[100_000:]]),
            headers={"Content-Type": "application/x-test", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        assert response.getheader("Content-Type") == "application/x-test"
        assert response.read() == payload

        conn.request("GET", "/elsewhere")
        response = conn.getresponse()
        assert response.status == 404
        response.read()
        assert conn.sock is sock  # every request above used the same connection
    finally:
        conn.close()
    kinds = [entry["kind"] for entry in upstream.stats()["requests"]]
    assert kinds == ["api"] * 4 + ["not_found"]


# -- WAN emulation and process behaviour ---------------------------------------------------------


def test_latency_slows_git_requests_only(slow_upstream: UpstreamServer, home: Path) -> None:
    started = time.monotonic()
    result = run_git(slow_upstream, home, "ls-remote", slow_upstream.url("public.git"), cwd=home)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed >= 2 * LATENCY_MS / 1000  # info/refs + ls-refs
    started = time.monotonic()
    slow_upstream.stats()
    assert time.monotonic() - started < LATENCY_MS / 1000


def test_rate_caps_response_throughput(slow_upstream: UpstreamServer) -> None:
    size = 400_000
    conn = https(slow_upstream)
    try:
        started = time.monotonic()
        conn.request("GET", f"/api/bytes?n={size}")
        data = conn.getresponse().read()
        elapsed = time.monotonic() - started
    finally:
        conn.close()
    assert len(data) == size
    assert elapsed >= 0.9 * size / (RATE_MBIT * 1e6 / 8)


def _backend_pids(root: Path) -> list[int]:
    """Pids of live processes whose environment names ``root`` as GIT_PROJECT_ROOT."""
    marker = f"GIT_PROJECT_ROOT={root.resolve()}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            pids.append(int(entry))
    return pids


def test_client_disconnect_kills_backend(slow_upstream: UpstreamServer) -> None:
    main = list_refs(slow_upstream.root / "big.git")["refs/heads/main"]
    fetch = pkt("command=fetch\n") + b"0001" + pkt(f"want {main}\n") + pkt("done\n") + b"0000"
    conn = https(slow_upstream)
    headers = {"Git-Protocol": "version=2", "Content-Type": "application/x-git-upload-pack-request"}
    conn.request("POST", "/big.git/git-upload-pack", body=fetch, headers=headers)
    response = conn.getresponse()
    assert response.status == 200
    assert response.read(50_000)
    assert _backend_pids(slow_upstream.root)  # still streaming the 2 MB pack at 1 MB/s
    conn.close()
    deadline = time.monotonic() + 10
    while _backend_pids(slow_upstream.root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _backend_pids(slow_upstream.root) == []


def test_server_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    server = UpstreamServer(tmp_path / "u", CONFIG).start()
    ready = server.cert_path.read_text()
    assert ready.startswith("-----BEGIN CERTIFICATE-----")
    assert oct((server.cert_path.parent / "upstream-key.pem").stat().st_mode & 0o777) == "0o600"
    server.stop()
    assert server.returncode == 0
    assert "Traceback" not in server.log_text()
