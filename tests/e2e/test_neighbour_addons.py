"""Another mitmproxy addon beside goblet gets every hook, and its errors are logged as
mitmproxy logs them, with goblet's hook dispatch (the default) and with mitmproxy's."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Repos
from tests.support import rawhttp
from tests.support.attack import git_through, proxy_for
from tests.support.upstream_client import UpstreamServer

NEIGHBOUR = Path(__file__).resolve().parents[1] / "support" / "neighbour_addon.py"
DISPATCH = {"on": "goblet.addon.dispatch.trigger_event",
            "off": "mitmproxy.addonmanager.AddonManager.trigger_event"}


def report(path: Path, responses: int) -> dict[str, Any]:
    """The neighbour's report once it has seen ``responses`` responses."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists():
            got: dict[str, Any] = json.loads(path.read_text())
            if got["seen"].get("response", 0) >= responses:
                return got
        time.sleep(0.05)
    raise AssertionError(f"the neighbour saw fewer than {responses} responses")


@pytest.mark.parametrize("fast", ["on", "off"])
def test_a_neighbour_addon_gets_its_hooks_and_its_errors_are_logged(
        fast: str, tmp_path: Path, upstream: UpstreamServer, repos: Repos, confdir: Path,
) -> None:
    out = tmp_path / "neighbour.json"
    name = repos.create()
    with proxy_for(tmp_path / "proxy", upstream, confdir,
                   {"goblet_fast_dispatch": fast, "neighbour_out": str(out)},
                   extra_args=["-s", str(NEIGHBOUR)]) as px:
        git = git_through(px, tmp_path / "home")
        git.clone(upstream.url(name), tmp_path / "clone")
        head = git.run("rev-parse", "HEAD", cwd=tmp_path / "clone").stdout.strip()
        assert head == git.run("rev-parse", "main", cwd=repos.path(name)).stdout.strip()
        got = report(out, 3)  # info/refs, ls-refs, fetch
        seen = got["seen"]
        assert seen["requestheaders"] == seen["request"] == seen["response"] >= 3
        assert got["dispatch"] == DISPATCH[fast]

        answer = rawhttp.request(
            proxy_port=px.port, ca_file=px.ca_cert, host="127.0.0.1", port=upstream.port,
            method="GET", path=f"/{name}/info/refs?service=git-upload-pack",
            headers={"X-Neighbour-Raise": "1"})
        assert answer.status == 200  # (an addon's error does not end the flow)
        assert px.wait_for_log("Addon error: the neighbour refuses this one")
        assert "Traceback" in px.log_text() and "neighbour_addon.py" in px.log_text()
        later = report(out, seen["response"] + 1)["seen"]
        assert later["request"] == seen["request"] + 1
