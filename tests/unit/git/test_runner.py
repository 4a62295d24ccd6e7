"""GitRunner with real git: results, git's own error line, progress lines as they come,
and a deadline that kills the child and its process group."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from goblet.git.runner import (
    ALIVE_CHECK,
    SH,
    GitResult,
    GitRunner,
    GitTimeout,
    launch_prefix,
    launcher,
)

from tests.support.repos import make_bare_repo

if TYPE_CHECKING:
    from tests.unit.conftest import GitWire


@pytest.fixture
def runner(tmp_path: Path) -> GitRunner:
    (tmp_path / "home").mkdir()
    return GitRunner(home=tmp_path / "home", base_config=[("protocol.http.allow", "always")])


def test_a_run_returns_status_and_output(runner: GitRunner, tmp_path: Path) -> None:
    make_bare_repo(tmp_path / "r.git", commits=2)
    res = asyncio.run(runner.run(["rev-parse", "--is-bare-repository"],
                                 git_dir=tmp_path / "r.git"))
    assert res.ok and res.stdout == b"true\n"
    oid = asyncio.run(runner.run(["hash-object", "--stdin"], stdin=b"x")).stdout.strip()
    assert oid == b"c1b0730e0133447badcfd47fd144e254807b06e1"


def test_a_failure_is_named_by_gits_last_error_line(runner: GitRunner, tmp_path: Path) -> None:
    make_bare_repo(tmp_path / "r.git", commits=1)
    res = asyncio.run(runner.run(["rev-parse", "--verify", "nope"], git_dir=tmp_path / "r.git"))
    assert not res.ok
    assert res.stderr_line() == "fatal: Needed a single revision"


@pytest.mark.parametrize(("stderr", "line"), [
    (b"warning: x\nerror: first\nhint: y\nfatal: last\nmore\n", "fatal: last"),
    (b"remote: counting\r\nsomething odd\n\n", "something odd"),
    (b"", "git exited with status 128"),
    (b"fatal: " + b"x" * 500, "fatal: " + "x" * 293),
])
def test_stderr_line(stderr: bytes, line: str) -> None:
    assert GitResult(128, b"", stderr).stderr_line() == line


def test_progress_lines_arrive_one_by_one(runner: GitRunner, git_wire: GitWire,
                                          tmp_path: Path) -> None:
    lines: list[str] = []
    res = asyncio.run(runner.run(["clone", "--bare", "--progress", git_wire.url("plain.git"),
                                  str(tmp_path / "c.git")], on_stderr=lines.append))
    assert res.ok, res.stderr
    receiving = [ln for ln in lines if ln.startswith("Receiving objects:")]
    assert receiving and receiving[-1].endswith("done.")
    assert all("\r" not in ln and "\n" not in ln and ln.strip() for ln in lines)
    assert b"Receiving objects" in res.stderr  # and kept for stderr_line


def test_a_child_past_its_deadline_is_killed(runner: GitRunner) -> None:
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/r.git"
        started = time.monotonic()
        with pytest.raises(GitTimeout, match="git ls-remote timed out"):
            asyncio.run(runner.run(["ls-remote", url], timeout=0.5))
        assert time.monotonic() - started < 10
        assert running_with(url) == []  # git and its git-remote-http: the group is gone


def running_with(text: str) -> list[int]:
    """The pids whose command line mentions ``text``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


_PARENT = """
import asyncio, sys, time
from pathlib import Path
import goblet.git.runner as r
if sys.argv[1] == "reader":
    r.READERS = r.READERS | {"300"}  # (sleep 300 reads nothing: start it as a reader)
elif sys.argv[1] == "hook":
    r.launcher = lambda: ()
async def main():
    proc = await r.GitRunner(home=Path(sys.argv[2]), git=sys.argv[3]).spawn(["300"], nice=7)
    print(proc.pid, flush=True)
    time.sleep(300)
asyncio.run(main())
"""


@pytest.mark.parametrize("way", ["reader", "writer", "hook"])
def test_a_child_dies_with_the_proxy_even_by_sigkill(way: str, tmp_path: Path) -> None:
    """Started through ``setpriv`` (a reader), ``setpriv`` and the alive check (a writer)
    or the pre-exec hook, a child runs niced in its own process group and gets SIGKILL
    when its parent dies, however it dies."""
    if way != "hook" and not launch_prefix(["cat-file"]):
        pytest.skip("no setpriv with --pdeathsig here")
    sleep = shutil.which("sleep")
    assert sleep is not None
    addon = Path(__file__).resolve().parents[3] / "addon"
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, way, str(tmp_path), sleep],
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(addon)})
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        started = time.monotonic()  # (through setpriv, sleep runs a few ms after the spawn)
        while Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[:2] != [
                sleep.encode(), b"300"]:
            assert time.monotonic() - started < 10, "the child never became sleep"
            time.sleep(0.01)
        fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        assert (int(fields[2]), int(fields[16])) == (child, 7)  # (pgrp, nice)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, os.WNOHANG)  # (not ours: reaped by init; this only waits)
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(
        f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_no_child_starts_through_the_hook_where_setpriv_is() -> None:
    """On Linux with util-linux (the image, CI) no git child forks the proxy whole; one
    that writes runs only once the proxy is known alive after the signal was set."""
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv here")
    signal_only = ("--pdeathsig", "KILL", "--")
    for reader in ("upload-pack", "cat-file", "rev-list", "for-each-ref", "ls-remote"):
        assert launch_prefix([reader, "x"])[1:] == signal_only
    for writer in ("fetch", "repack", "index-pack", "update-ref", "symbolic-ref", "init",
                   "bundle", "pack-refs", "commit-graph", "gc", ""):
        assert launch_prefix([writer, "x"])[1:] == (
            *signal_only, SH, "-c", ALIVE_CHECK, "goblet-git", str(os.getpid()))


@pytest.mark.parametrize(("parent", "runs"), [("mine", True), ("1", False), ("", False)])
def test_the_alive_check_runs_a_writer_only_under_its_proxy(
        parent: str, runs: bool, tmp_path: Path) -> None:
    """A writer whose proxy died before ``setpriv`` set the signal has another parent
    by then (init or a subreaper): the check ends it before it writes anything."""
    if not launcher():
        pytest.skip("no setpriv with --pdeathsig here")
    marker = tmp_path / "written"
    res = subprocess.run([*launcher(), SH, "-c", ALIVE_CHECK, "goblet-git",
                          str(os.getpid()) if parent == "mine" else parent,
                          "touch", str(marker)], capture_output=True, check=False)
    assert (res.returncode == 0, marker.exists()) == (runs, runs)
    if not runs:
        assert res.returncode == 125
