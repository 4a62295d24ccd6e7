"""Fuzz the addon's request path: random targets, headers and bodies through the real hooks.

Invariants, for every generated request:
- the hooks raise nothing (a bad request is answered, not crashed on);
- every answer goblet makes itself is 4xx with a one-line reason, or a git
  ERR packet; nothing else;
- nothing is written outside the cache dir, and inside it only goblet's own
  layout appears (traversal in paths never reaches the filesystem).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from goblet.addon import Goblet
from goblet.protocol import pktline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

pytestmark = pytest.mark.slow

HOST = "git.example.test"
EXAMPLES = 10_000

segments = st.one_of(
    st.sampled_from(["org", "repo.git", "..", ".", "", "%2e%2e", "%2F", "%5c", "%00", "a b",
                     "info", "refs", "git-upload-pack", "x" * 300, "%c0%ae", "é", "\\"]),
    st.text(min_size=0, max_size=12),
)
suffixes = st.sampled_from(["/info/refs?service=git-upload-pack", "/git-upload-pack",
                            "/info/refs?service=git-receive-pack", "/git-receive-pack", "",
                            "/info/refs", "/info/refs?service=other"])
pkt_lines = st.one_of(
    st.sampled_from([b"command=fetch", b"command=ls-refs\n", b"want " + b"a" * 40 + b"\n",
                     b"have " + b"b" * 40 + b"\n", b"done\n", b"want-ref refs/heads/x\n",
                     b"deepen 1\n", b"deepen x\n", b"filter blob:none\n", b"object-format=sha256\n",
                     b"want " + b"c" * 64 + b"\n", b"shallow zz\n", b"agent=x\n"]),
    st.binary(max_size=40),
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    parts = []
    for line in draw(st.lists(pkt_lines, max_size=8)):
        parts.append(draw(st.sampled_from([pktline.encode_data(line), b"0000", b"0001",
                                           b"0002", b"000"])))
    return b"".join(parts)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    path = "/" + "/".join(draw(st.lists(segments, min_size=0, max_size=5))) + draw(suffixes)
    method = draw(st.sampled_from(["GET", "POST", "PUT"]))
    headers = {"Host": HOST}
    if draw(st.booleans()):
        headers["Git-Protocol"] = draw(st.sampled_from(["version=2", "version=1", "version=0",
                                                        "version=9:x=y", "garbage"]))
    if draw(st.booleans()):
        headers["Authorization"] = draw(st.sampled_from(["Basic YTpi", "Bearer t", "Basic !!"]))
    if draw(st.booleans()):
        headers["Content-Encoding"] = "gzip"  # usually a lie: must give 400, not a crash
    return method, path, headers, draw(bodies())


def test_request_path_never_crashes_and_answers_bad_input_with_4xx(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    outside = tmp_path / "outside"
    outside.mkdir()
    before_cwd = sorted(os.listdir(tmp_path))

    async def main() -> None:
        addon = Goblet()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, goblet_cache_dir=str(cache), goblet_hosts=[HOST])
            await addon.running()
            try:
                await run_cases(addon)
            finally:
                await addon.done()

    async def run_cases(addon: Goblet) -> None:
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(requests())
        def case(req: tuple[str, str, dict[str, str], bytes]) -> None:
            method, path, headers, body = req
            flow = tflow.tflow(req=tutils.treq(
                method=method.encode(), scheme=b"https", host=HOST, port=443, authority=b"",
                path=path.encode("utf-8", "surrogateescape"), content=body,
                headers=http.Headers(**{k.lower().replace("-", "_"): v
                                        for k, v in headers.items()}),
            ))
            addon.requestheaders(flow)
            pending.append(flow)

        pending: list[Any] = []
        # Hypothesis drives synchronously: requestheaders runs per case, the async
        # request hook for every generated flow right after.
        case()
        for flow in pending:
            await addon.request(flow)
            check_answer(flow)

    asyncio.run(main())
    assert sorted(os.listdir(tmp_path)) == sorted({*before_cwd, "cache"})
    assert list(outside.iterdir()) == []
    layout = {p.name for p in cache.iterdir()}
    assert layout <= {"repos", "tmp", "trash", "quarantine", "packcache", "locks", "home",
                      "tenant-secret", "lfs"}
    assert list((cache / "repos").iterdir()) == []  # nothing was ever filled or created
    assert [p for p in cache.glob("lfs/**/*") if not p.is_dir()] == []  # no LFS object either


def check_answer(flow: http.HTTPFlow) -> None:
    resp = flow.response
    if resp is None:
        return  # passed on (upstream or stream): the upstream answers
    body = resp.content or b""
    if resp.status_code == 200:
        assert body.startswith(b"00") and b"ERR " in body[:8], body[:80]
        return
    assert 400 <= resp.status_code < 500, (resp.status_code, flow.request.path)
    assert body.count(b"\n") == 1 and body.endswith(b"\n"), body
    assert b"Traceback" not in body
