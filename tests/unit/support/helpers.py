"""Shared constants and helpers for the upstream fixture's own tests (real git, no proxy)."""

from __future__ import annotations

import gzip
import http.client
import ssl
import subprocess
from pathlib import Path
from typing import Any

from tests.support.upstream import UpstreamServer

CONFIG: dict[str, Any] = {
    "users": {
        "alice": {"password": "alice-pw", "tokens": ["tok-alice"]},
        "bob": {"password": "bob-pw", "tokens": []},
    },
    "repos": {
        "public.git": {"public": True, "readers": [], "writers": ["alice"]},
        "private.git": {"public": False, "readers": ["alice"], "writers": ["alice"]},
        "scratch.git": {"public": True, "readers": [], "writers": ["alice"]},
        "many.git": {"public": True, "readers": [], "writers": []},
        "empty.git": {"public": True, "readers": [], "writers": ["alice"]},
        "big.git": {"public": True, "readers": [], "writers": []},
    },
}


def run_git(
    server: UpstreamServer, home: Path, *args: str, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a git client against ``server`` directly; never raises on failure."""
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=server.git_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def creds(user: str, password: str) -> list[str]:
    """``-c`` options installing an inline credential helper that answers ``get``."""
    helper = (
        f"!f() {{ if test \"$1\" = get; then printf 'username=%s\\npassword=%s\\n' "
        f"'{user}' '{password}'; fi; }}; f"
    )
    return ["-c", "credential.helper=", "-c", f"credential.helper={helper}"]


def clone(
    server: UpstreamServer, home: Path, repo: str, dest: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    """``git [options] clone <url> dest``."""
    return run_git(server, home, *options, "clone", server.url(repo), str(dest), cwd=home)


def statuses(stats: dict[str, Any]) -> list[int | None]:
    """Statuses of the logged requests, oldest first."""
    return [entry["status"] for entry in stats["requests"]]


def https(server: UpstreamServer) -> http.client.HTTPSConnection:
    """A keep-alive connection to ``server`` trusting only its certificate."""
    context = ssl.create_default_context(cafile=str(server.cert_path))
    return http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=30)


def pkt(text: str) -> bytes:
    """Encode one pkt-line."""
    data = text.encode()
    return b"%04x%s" % (len(data) + 4, data)


def upload_pack(
    server: UpstreamServer, repo: str, body: bytes, *, v2: bool = True, gzipped: bool = False
) -> tuple[int, bytes]:
    """POST ``body`` to ``repo``'s git-upload-pack; return (status, response body)."""
    headers = {"Content-Type": "application/x-git-upload-pack-request"}
    if v2:
        headers["Git-Protocol"] = "version=2"
    if gzipped:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    conn = https(server)
    try:
        conn.request("POST", f"/{repo}/git-upload-pack", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
