"""kill -9 of a real mitmdump in the middle of fills and answers, then a restart.

Each of 20 seeded rounds starts a clone through the proxy that makes it fill
(a new repo: a first fill in ``tmp/``; a new upstream commit: a fill in place)
or serve (refs unchanged: upload-pack, a pack-cache production), waits until
that work runs, lets 0-300 ms pass and SIGKILLs mitmdump together with every
process it started, at one instant, as a container or cgroup kill does.
Before the restart, what the dead process was writing in ``tmp/`` and
``packcache/`` is renamed to carry a live pid (the test's own), as when the
restarted proxy in a container gets its predecessor's pid: liveness must come
from the writer's ``flock``, not from the name. Then mitmdump restarts on the
same cache dir and the test asserts what the start-up recovery promises: every
cache repo is fsck-clean, no lock, temporary pack, ``.keep``, ``tmp/`` entry or
unfinished pack-cache answer of the dead process is left, and the next clone
through the proxy is whole with upstream's HEAD.

A second proxy started on the cache dir of a running one (a shared cache dir)
leaves that one's first fill in progress alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support.gitclient import GitClient
from tests.support.net import wait_for
from tests.support.proxy import GobletProxy
from tests.support.repos import add_commit, list_refs
from tests.support.upstream_client import UpstreamServer

SEED = 20240606
ROUNDS = 20


class CrashableProxy(GobletProxy):
    """A GobletProxy that can die like a killed container and come back."""

    def kill_tree(self) -> list[str]:
        """SIGKILL mitmdump and all its descendants at once; their command lines."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)  # it starts no new child from here on
        frozen: dict[int, str] = {}
        for _ in range(20):  # children of children (git fetch -> remote-https -> index-pack)
            fresh = {pid: cmd for pid, cmd in self.children() if pid not in frozen}
            if not fresh:
                break
            for pid in fresh:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            frozen |= fresh
        for pid in [self.proc.pid, *frozen]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        return list(frozen.values())

    def restarted(self) -> CrashableProxy:
        """A new mitmdump on the same cache dir (started; recovery has run when it is ready)."""
        return CrashableProxy(self.workdir, hosts=self.hosts, upstream_ca=self.upstream_ca,
                              confdir=self.confdir, cache_dir=self.cache_dir,
                              sets=self.sets).start()


def residue(cache: Path) -> list[str]:
    """Crash residue in the cache dir of an idle proxy: what recovery must have removed."""
    found = []
    for repo in (cache / "repos").iterdir():
        for p in repo.rglob("*"):
            if p.name.endswith(".lock") or p.name.startswith(("tmp_", ".tmp-")) \
                    or p.suffix == ".keep" or p.name.startswith(("incoming-", "tmp_objdir")):
                found.append(str(p.relative_to(cache)))
    for entry in (cache / "tmp").iterdir():
        if not entry.name.startswith(".ready-"):  # the live proxy's readiness probe
            found.append(str(entry.relative_to(cache)))
    return found


def packcache_residue(cache: Path) -> list[str]:
    """Unfinished pack-cache answers and their claims (the proxy is idle)."""
    return sorted(p.name for p in (cache / "packcache").iterdir() if p.suffix != ".answer")


def reuse_pid(cache: Path, pid: int) -> list[str]:
    """Rename a dead writer's ``<key>.<pid>.<ns>.<ext>`` work and claims to carry ``pid``."""
    renamed = []
    for entry in [*(cache / "tmp").iterdir(), *(cache / "packcache").iterdir()]:
        parts = entry.name.split(".")
        if len(parts) == 4 and parts[1].isdigit():
            target = entry.with_name(".".join([parts[0], str(pid), *parts[2:]]))
            entry.rename(target)
            renamed.append(str(target.relative_to(cache)))
    return renamed


def fsck_failures(cache: Path) -> list[str]:
    bad = []
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": str(cache.parent)}
    for repo in (cache / "repos").iterdir():
        res = subprocess.run(["git", "--git-dir", str(repo), "fsck", "--no-dangling"],
                             capture_output=True, text=True, check=False, env=env)
        if res.returncode != 0:
            bad.append(f"{repo.name[:12]}: {res.stderr.strip()[-300:]}")
    return bad


def wait_for_child(proxy: GobletProxy, needle: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(needle in cmd for _, cmd in proxy.children()):
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def crashable(
    tmp_path: Path, upstream: UpstreamServer, confdir: Path
) -> Iterator[list[CrashableProxy]]:
    """The running proxy is always the last of the list (each restart appends)."""
    px = CrashableProxy(tmp_path / "proxy", hosts=[upstream.host],
                        upstream_ca=upstream.cert_path, confdir=confdir,
                        sets={"goblet_upstream_timeout": "10", "goblet_cold_clones": "fill"})
    running = [px.start()]
    try:
        yield running
    finally:
        running[-1].stop()


def test_kill_9_at_random_points_of_fills_leaves_a_sound_cache(
    crashable: list[CrashableProxy], repos: Repos, upstream: UpstreamServer, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    names: list[str] = []
    seen: Counter[str] = Counter()
    for round_no in range(ROUNDS):
        proxy = crashable[-1]
        kind = "new-repo" if not names or rng.random() < 0.25 else rng.choice(
            ["new-commit", "new-commit", "same-refs"])
        if kind == "new-repo":
            names.append(repos.create(commits=3, blob_size=200_000, seed=round_no))
        name = rng.choice(names) if kind != "new-repo" else names[-1]
        if kind == "new-commit":
            add_commit(repos.path(name), message=f"round {round_no}",
                       files={f"r{round_no}.bin": rng.randbytes(3_000_000)})
        git = GitClient(tmp_path / "home", ca_file=proxy.ca_cert, proxy=proxy.url)
        if kind == "same-refs":
            git.clone(upstream.url(name), tmp_path / f"first-{round_no}")  # seen once
        client = subprocess.Popen(
            ["git", "clone", upstream.url(name), str(tmp_path / f"killed-{round_no}")],
            env=git.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for_child(proxy, "upload-pack" if kind == "same-refs" else " fetch ")
            time.sleep(rng.uniform(0.0, 0.3))
            running = proxy.kill_tree()
        finally:
            try:
                client.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(client.pid, signal.SIGKILL)
                client.wait(10)
        seen[kind] += 1
        if any(" fetch " in cmd for cmd in running):
            seen["killed during a fill"] += 1
        if any("pack-objects" in cmd for cmd in running):
            seen["killed during pack-objects"] += 1
        if reuse_pid(proxy.cache_dir, os.getpid()):
            seen["leftovers named by a live pid"] += 1

        proxy = proxy.restarted()
        crashable.append(proxy)
        cache = proxy.cache_dir
        assert residue(cache) == [], f"round {round_no} ({kind}): {residue(cache)}"
        assert packcache_residue(cache) == [], f"round {round_no} ({kind})"
        assert fsck_failures(cache) == [], f"round {round_no} ({kind})"

        git = GitClient(tmp_path / "home", ca_file=proxy.ca_cert, proxy=proxy.url)
        dest = tmp_path / f"after-{round_no}"
        git.clone(upstream.url(name), dest)
        head = git.run("rev-parse", "HEAD", cwd=dest).stdout.strip()
        assert head == list_refs(repos.path(name))["refs/heads/main"], f"round {round_no}"
        assert packcache_residue(cache) == [], f"round {round_no} ({kind})"
        for stale in tmp_path.glob("*-*"):
            if stale.name.startswith(("first-", "killed-", "after-")):
                shutil.rmtree(stale, ignore_errors=True)

    assert residue(crashable[-1].cache_dir) == []
    assert fsck_failures(crashable[-1].cache_dir) == []
    recovered = crashable[-1].log_path.read_text("utf-8").count("recovered cache:")
    print(f"kill points: {dict(seen)}; recoveries that removed residue: {recovered}")
    # The rounds really hit the writers they are meant to hit, and left work for recovery.
    assert seen["killed during a fill"] >= 5, seen
    assert seen["new-repo"] >= 2 and seen["same-refs"] >= 2, seen
    assert seen["leftovers named by a live pid"] >= 3, seen
    assert recovered >= 3, seen


def processes_using(cache: Path) -> dict[int, str]:
    """Live processes whose command line or working directory lies in ``cache``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (str(cache) in cmd or cwd.startswith(str(cache))):
            found[int(entry.name)] = cmd
    return found


def test_a_killed_mitmdump_leaves_no_git_writing_into_its_cache(
    crashable: list[CrashableProxy], repos: Repos, upstream: UpstreamServer, tmp_path: Path
) -> None:
    proxy = crashable[-1]
    name = repos.create(commits=2)
    git = GitClient(tmp_path / "home", ca_file=proxy.ca_cert, proxy=proxy.url)
    git.clone(upstream.url(name), tmp_path / "warm")
    add_commit(repos.path(name), files={"more.bin": os.urandom(100_000)})
    upstream.fault("stall", kinds=["fetch"])  # the fill's pack download hangs upstream
    client = subprocess.Popen(["git", "fetch", "origin"], cwd=tmp_path / "warm", env=git.env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    leftovers: dict[int, str] = {}
    try:
        assert wait_for_child(proxy, " fetch "), "the fill never started"
        assert proxy.proc is not None
        proxy.proc.kill()  # mitmdump alone, as the OOM killer does
        proxy.proc.wait(10)
        restarted = proxy.restarted()
        crashable.append(restarted)
        time.sleep(1.0)
        assert restarted.proc is not None
        leftovers = {pid: cmd for pid, cmd in processes_using(proxy.cache_dir).items()
                     if pid != restarted.proc.pid}
        assert leftovers == {}, "git of the dead instance still runs in the cache"
    finally:
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        upstream.fault("none")
        client.wait(30)


def held(lock: Path) -> bool:
    """Whether some process holds the ``flock`` of ``lock``."""
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_second_instance_spares_a_fill_in_progress_of_the_first(
    repos: Repos, upstream: UpstreamServer, confdir: Path, tmp_path: Path
) -> None:
    common = {"hosts": [upstream.host], "upstream_ca": upstream.cert_path, "confdir": confdir,
              "sets": {"goblet_upstream_timeout": "120", "goblet_cold_clones": "fill"}}
    first = GobletProxy(tmp_path / "first", **common).start()  # type: ignore[arg-type]
    name = repos.create(commits=2)
    git = GitClient(tmp_path / "home", ca_file=first.ca_cert, proxy=first.url)
    upstream.fault("stall", kinds=["fetch"])  # the first fill's pack download hangs upstream
    client = subprocess.Popen(["git", "clone", upstream.url(name), str(tmp_path / "c")],
                              env=git.env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        assert wait_for_child(first, " fetch "), "the first fill never started"
        building = sorted((first.cache_dir / "tmp").glob("*.git"))
        assert len(building) == 1
        claim = building[0].with_suffix(".lock")
        assert held(claim)
        second = GobletProxy(tmp_path / "second", cache_dir=first.cache_dir,
                             **common).start()  # type: ignore[arg-type]
        try:
            assert building[0].is_dir() and held(claim), "the second instance took it"
        finally:
            second.stop()
        upstream.fault("none")
        assert client.wait(120) == 0
        assert git.run("rev-parse", "HEAD", cwd=tmp_path / "c").stdout.strip() == \
            list_refs(repos.path(name))["refs/heads/main"]
        wait_for("the first fill to finish", lambda: residue(first.cache_dir) == [] or None)
        assert len(list((first.cache_dir / "repos").glob("*.git"))) == 1
    finally:
        upstream.fault("none")
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGKILL)
            client.wait(10)
        first.stop()
