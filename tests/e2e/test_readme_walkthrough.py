"""README.md followed step by step: `make run`, "Use it from git", Ctrl-C.

A new user reads README.md's "Set up and run" and "Use it from git" and nothing
else. This test does what they say, with loopback servers standing in for the forges:

* "Set up and run": the real ``make run`` with the overrides that section names
  (``PORT``, ``HOSTS``, ``CACHE_DIR``; ``CERTS_DIR`` so the repository's own ``certs/``
  is left alone; ``MITMDUMP_ARGS``). It reuses the venv the tests run in (``make test``'s
  ``.venv``): ``-o $(VENV)/bin/.installed`` tells make the venv is installed, whatever
  the stamp's age against ``pyproject.toml``, so nothing is installed (the dry run
  proves it). The test waits for the ``goblet ready:`` line and stops it with Ctrl-C
  (SIGINT to its process group).
* The cached host is an internal forge whose certificate a private CA signed: goblet
  gets that CA as "An internal forge with a private CA" says, through ``make run``'s
  ``MITMDUMP_ARGS``. The other host is a second server on another loopback port, not in
  ``HOSTS``; relaying to loopback needs ``goblet_relay_internal=on`` (README "Options"),
  which a real forge elsewhere would not.
* "Use it from git": its code block is read from README.md and its lines before the
  clones are run in bash as written, but with the other host's CA in place of the
  system bundle, the temporary ``CERTS_DIR`` for ``certs/`` and the chosen port. git then
  gets only the ``HTTPS_PROXY`` and ``GIT_SSL_CAINFO`` those lines export (and the
  credential in the URL, as the other tests pass it).

If a step were missing or wrong (the bundle without goblet's CA or without the other
host's, no ``GIT_SSL_CAINFO``, the CA not where README says), a clone here fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos, count, started_upstream
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.net import free_port, wait_for
from tests.support.upstream_client import UpstreamServer

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # README's Debian bundle
README_PROXY = "127.0.0.1:8080"  # make run's default address, as README's export names it
MAKE_VARIABLES = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GNUMAKEFLAGS")
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def forge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamServer]:
    """The host goblet caches: a forge with a private CA."""
    with started_upstream(tmp_path_factory, "forge", private_ca=True) as server:
        yield server


@pytest.fixture
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamServer]:
    """Any other host: a second server, not in goblet_hosts."""
    with started_upstream(tmp_path_factory, "elsewhere") as server:
        yield server


def readme_block(heading: str) -> str:
    """The first ``sh`` code block of README.md's section ``## heading``."""
    section = README.read_text(encoding="utf-8").split(f"\n## {heading}\n", 1)[1]
    return section.split("\n## ", 1)[0].split("```sh\n", 1)[1].split("```", 1)[0]


def client_setup(port: int, certs: Path, system_bundle: Path, home: Path) -> tuple[str, Path]:
    """Run "Use it from git"'s lines up to the clones; return its HTTPS_PROXY and
    GIT_SSL_CAINFO."""
    lines = [line for line in readme_block("Use it from git").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    clones = [line for line in lines if line.startswith("git clone ")]
    assert len(clones) == 2, "README shows a clone of a cached host and of any other host"
    script = "\n".join(line for line in lines if line not in clones)
    for pattern, value in ((re.escape(SYSTEM_BUNDLE), str(system_bundle)),
                           (r"(?<![\w/.-])certs/", f"{certs}/"),
                           (re.escape(README_PROXY), f"127.0.0.1:{port}")):
        script, found = re.subn(pattern, value, script)
        assert found, f"README's client set-up no longer names {pattern!r}:\n{script}"
    out = subprocess.run(
        ["bash", "-euc", script + '\nprintf "%s\\n" "$HTTPS_PROXY" "$GIT_SSL_CAINFO"'],
        cwd=REPO_ROOT, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)},
        capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    proxy, cainfo = out.stdout.splitlines()
    return proxy, Path(cainfo)


def descendants(pid: int) -> set[int]:
    """``pid``'s live descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if not entry.name.isdigit():
            continue
        if stat[0] != "Z":
            parents[int(entry.name)] = int(stat[1])
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        kids = {child for child, ppid in parents.items() if ppid == parent} - found
        found |= kids
        todo += kids
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def using(path: Path) -> list[str]:
    """Live processes whose working directory or command line is under ``path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not alive(int(entry.name)):
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(path) in cmd or cwd.startswith(str(path)):
            found.append(f"{entry.name}: {cmd}")
    return found


def test_readme_walkthrough(forge: UpstreamServer, elsewhere: UpstreamServer,
                            tmp_path: Path) -> None:
    assert "make run" in readme_block("Set up and run")
    name = Repos(forge).create(public=False, readers=("alice",))
    other = Repos(elsewhere).create(public=False, readers=("alice",))

    # "Set up and run": make run, in the foreground, with the documented overrides.
    venv = Path(sys.prefix)
    assert (venv / "bin" / "mitmdump").exists(), f"no installed venv at {venv}: run make test"
    run_dir = tmp_path / "run"
    certs, port = run_dir / "certs", free_port()
    make = ["make", "-o", f"{venv}/bin/.installed", "run", f"VENV={venv}", f"PORT={port}",
            f"HOSTS={forge.host}", f"CACHE_DIR={run_dir / 'cache'}", f"CERTS_DIR={certs}",
            f"MITMDUMP_ARGS=--set ssl_verify_upstream_trusted_ca={forge.cert_path}"
            " --set goblet_relay_internal=on"]
    env = {k: v for k, v in os.environ.items()
           if k not in MAKE_VARIABLES and k.lower() not in PROXY_VARIABLES}
    dry = subprocess.run(["make", "-n", *make[1:]], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=30, check=True)
    assert dry.stdout.startswith(f"{venv}/bin/mitmdump "), f"make would run more:\n{dry.stdout}"

    proc = subprocess.Popen(make, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own group, as a terminal's job
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(raw.decode(errors="replace") for raw in proc.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def log() -> str:
        return "".join(lines)

    try:
        wait_for("the `goblet ready:` line",
                 lambda: True if "goblet ready: " in log() or proc.poll() is not None else None,
                 timeout=60)
        assert proc.poll() is None, f"make run exited ({proc.returncode}):\n{log()[-4000:]}"
        assert (certs / "mitmproxy-ca-cert.pem").is_file(), "the CA is made on the first start"

        # "Use it from git", in a second terminal.
        home = tmp_path / "home"
        home.mkdir()
        proxy, cainfo = client_setup(port, certs, elsewhere.cert_path, home)
        git = GitClient(home, ca_file=cainfo, proxy=proxy)

        # A goblet_hosts host: through goblet, then from its cache.
        url = with_userinfo(forge.url(name), "alice", "alice-pw")
        head = git.run("rev-parse", "HEAD", cwd=forge.root / name).stdout.strip()
        for dest in ("first", "second"):
            git.clone(url, tmp_path / dest)
            assert git.run("rev-parse", "HEAD", cwd=tmp_path / dest).stdout.strip() == head
        served = re.compile(rf"git fetch https://{re.escape(forge.host)}/{re.escape(name)} "
                            r".*outcome=cache ")
        wait_for("the second clone's outcome=cache line",
                 lambda: True if served.search(log()) else None, timeout=15)
        assert count(forge.stats(), "fetch", name) == 1, "the second clone's pack: the cache's"

        # Any other host: relayed untouched, through the same proxy.
        other_head = git.run("rev-parse", "HEAD", cwd=elsewhere.root / other).stdout.strip()
        git.clone(with_userinfo(elsewhere.url(other), "alice", "alice-pw"), tmp_path / "other")
        assert git.run("rev-parse", "HEAD", cwd=tmp_path / "other").stdout.strip() == other_head
        assert count(elsewhere.stats(), "fetch", other) == 1
        assert f"https://{elsewhere.host}/" not in log(), "goblet saw inside the tunnel"

        # Each half of the bundle is needed: README's `cat` step cannot be skipped.
        for ca, target in ((certs / "mitmproxy-ca-cert.pem", elsewhere.url(other)),
                           (elsewhere.cert_path, forge.url(name))):
            alone = GitClient(tmp_path / f"home-{ca.stem}", ca_file=ca, proxy=proxy)
            res = alone.run("ls-remote", target, check=False)
            assert res.returncode != 0 and "certificate" in res.stderr.lower(), res.stderr

        # Ctrl-C: make and mitmdump end, nothing they started is left.
        started = descendants(proc.pid) | {proc.pid}
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30) == -signal.SIGINT, log()[-4000:]
        reader.join(10)
        wait_for("make run's processes to end",
                 lambda: True if not any(alive(pid) for pid in started) else None, timeout=10)
        assert using(run_dir) == []
        assert "Traceback" not in log(), log()[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
