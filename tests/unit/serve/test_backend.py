"""The serving backend: real upload-pack on a real repo, over a real loopback socket."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from goblet.git.runner import GitRunner
from goblet.protocol import pktline
from goblet.serve.backend import ServeBackend
from goblet.serve.packcache import PackCache, Production, Role
from goblet.serve.plans import TOKEN_HEADER, PlanRegistry, ServePlan

LS_REFS = (pktline.encode_data(b"command=ls-refs\n") + pktline.DELIM
           + pktline.encode_data(b"symrefs\n") + pktline.FLUSH)


@pytest.fixture(scope="module")
def bare_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("repo") / "r.git"
    env = {"GIT_CONFIG_NOSYSTEM": "1", "HOME": str(path.parent), "PATH": "/usr/bin:/bin",
           "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@b"}
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True, env=env)
    tree = subprocess.run(["git", "--git-dir", str(path), "mktree"], input=b"", check=True,
                          env=env, capture_output=True).stdout.decode().strip()
    commit = subprocess.run(["git", "--git-dir", str(path), "commit-tree", tree, "-m", "x"],
                            check=True, env=env, capture_output=True).stdout.decode().strip()
    subprocess.run(["git", "--git-dir", str(path), "update-ref", "refs/heads/main", commit],
                   check=True, env=env)
    return path


async def http_call(port: int, token: str, *, repeat: int = 1) -> list[tuple[bytes, bytes]]:
    """Send ``repeat`` requests on one keep-alive connection; return (head, body) pairs."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    try:
        for _ in range(repeat):
            writer.write(
                f"POST /x HTTP/1.1\r\nHost: x\r\n{TOKEN_HEADER}: {token}\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            body = b""
            if b"chunked" in head.lower():
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    chunk = await reader.readexactly(size + 2)
                    if size == 0:
                        break
                    body += chunk[:-2]
            else:
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
            out.append((head, body))
    finally:
        writer.close()
    return out


def with_backend(tmp_path: Path, test: object, runner: GitRunner | None = None) -> None:
    async def main() -> None:
        plans = PlanRegistry()
        backend = ServeBackend(runner or GitRunner(home=tmp_path), plans)
        await backend.start()
        try:
            await test(backend, plans)  # type: ignore[operator]
        finally:
            await backend.stop()

    asyncio.run(main())


def test_serves_upload_pack_output_with_chunked_encoding(bare_repo: Path, tmp_path: Path) -> None:
    async def test(backend: ServeBackend, plans: PlanRegistry) -> None:
        plan = ServePlan(bare_repo, LS_REFS, "version=2", "test")
        [(head, body)] = await http_call(backend.port, plans.register(plan))
        assert head.startswith(b"HTTP/1.1 200")
        assert b"application/x-git-upload-pack-result" in head
        pkts = pktline.decode(body, "upstream")
        assert pkts[-1].kind is pktline.PktKind.FLUSH
        assert any(b"refs/heads/main" in p.payload for p in pkts)
        assert plan.stats.complete and plan.stats.bytes_sent == len(body)

    with_backend(tmp_path, test)


@pytest.mark.parametrize(("spec", "served"), [(b"blob:none", True), (b"sparse:oid=main:", False)])
def test_the_cache_never_applies_a_sparse_filter(bare_repo: Path, tmp_path: Path, spec: bytes,
                                                 served: bool) -> None:
    # (the repo allows filters, as every cache repo does: the serve config still refuses this)
    runner = GitRunner(home=tmp_path, base_config=[("uploadpack.allowFilter", "true")])
    head = subprocess.run(["git", "--git-dir", str(bare_repo), "rev-parse", "main"],
                          check=True, capture_output=True).stdout.strip()
    body = (pktline.encode_data(b"command=fetch\n") + pktline.DELIM
            + pktline.encode_data(b"want " + head + b"\n")
            + pktline.encode_data(b"filter " + spec + b"\n")
            + pktline.encode_data(b"done\n") + pktline.FLUSH)

    async def test(backend: ServeBackend, plans: PlanRegistry) -> None:
        plan = ServePlan(bare_repo, body, "version=2", "test")
        try:
            [(_, answer)] = await http_call(backend.port, plans.register(plan))
        except asyncio.IncompleteReadError:  # (upload-pack died: the body is cut, not ended)
            answer = b""
        assert (b"PACK" in answer) is served, answer[:200]
        assert ("filter 'sparse:oid' not supported" in (plan.stats.error or "")) is not served

    with_backend(tmp_path, test, runner)


def test_tokens_are_single_use_and_unknown_ones_refused(bare_repo: Path, tmp_path: Path) -> None:
    async def test(backend: ServeBackend, plans: PlanRegistry) -> None:
        token = plans.register(ServePlan(bare_repo, LS_REFS, "version=2", "test"))
        results = await http_call(backend.port, token, repeat=2)
        assert results[0][0].startswith(b"HTTP/1.1 200")
        assert results[1][0].startswith(b"HTTP/1.1 403")  # same token, same connection
        [(head, _)] = await http_call(backend.port, "guessed")
        assert head.startswith(b"HTTP/1.1 403")

    with_backend(tmp_path, test)


def test_upload_pack_failing_before_output_gives_an_err_packet(tmp_path: Path) -> None:
    async def test(backend: ServeBackend, plans: PlanRegistry) -> None:
        plan = ServePlan(tmp_path / "missing.git", LS_REFS, "version=2", "test")
        [(head, body)] = await http_call(backend.port, plans.register(plan))
        assert head.startswith(b"HTTP/1.1 200")
        [pkt] = pktline.decode(body, "upstream")
        assert pkt.payload.startswith(b"ERR goblet:")
        assert plan.stats.returncode not in (None, 0) and not plan.stats.complete

    with_backend(tmp_path, test)


class ScriptedGit(GitRunner):
    """A GitRunner whose 'upload-pack' is a shell script (our own seam), run in ``cwd``
    (None: the test process's own directory)."""

    cwd: Path | None = None

    def __init__(self, home: Path, script: str) -> None:
        super().__init__(home=home)
        self.script = script

    async def spawn(self, args: Sequence[str], *, git_dir: Path | None = None,
                    config: Sequence[tuple[str, str]] = (),
                    extra_env: Mapping[str, str] | None = None) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            "sh", "-c", self.script, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, cwd=self.cwd)


def test_a_failure_mid_stream_never_ends_the_body_cleanly(tmp_path: Path) -> None:
    async def test(backend: ServeBackend, plans: PlanRegistry) -> None:
        plan = ServePlan(tmp_path, b"", None, "test")
        with pytest.raises(asyncio.IncompleteReadError):
            await http_call(backend.port, plans.register(plan))
        assert plan.stats.returncode == 3 and not plan.stats.complete
        assert plan.stats.bytes_sent == 8

    with_backend(tmp_path, test, ScriptedGit(tmp_path, "cat >/dev/null; printf 0008abcd; exit 3"))


def test_stop_kills_running_children(tmp_path: Path) -> None:
    async def test(backend: ServeBackend, plans: PlanRegistry) -> None:
        token = plans.register(ServePlan(tmp_path, b"", None, "test"))
        reader, writer = await asyncio.open_connection("127.0.0.1", backend.port)
        writer.write(f"POST / HTTP/1.1\r\nHost: x\r\n{TOKEN_HEADER}: {token}\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # headers sent: the child is running
        children = list(backend._children)
        assert len(children) == 1
        await backend.stop()
        assert children[0].returncode is not None
        writer.close()

    with_backend(tmp_path, test, ScriptedGit(tmp_path, "cat >/dev/null; printf 0008abcd; sleep 60"))


# ---------------------------------------------------------------------------- pack cache

ANSWER = b"0008abcd0000"
# upload-pack as a script that counts its runs in ./runs (its cwd is the test's tmp dir)
COUNTED = 'cat >/dev/null; n=$(( $(cat runs 2>/dev/null || echo 0) + 1 )); echo $n > runs; '


class RecordingPackCache(PackCache):
    """A PackCache (our seam) that records roles and can break its first production."""

    def __init__(self, root: Path, *, break_first: bool = False) -> None:
        super().__init__(root, max_bytes=1024 * 1024)
        self.roles: list[Role] = []
        self.break_first = break_first

    def begin(self, key: str | None) -> tuple[Role, Production | None]:
        role, production = super().begin(key)
        self.roles.append(role)
        if role is Role.PRODUCE and production is not None and self.break_first:
            self.break_first = False
            production.tmp.unlink()
            production.tmp.mkdir()  # no longer openable as a file, by producer or follower
        return role, production


def with_packcache(tmp_path: Path, test: object, script: str, packcache: PackCache, *,
                   follow_timeout: float = 30.0) -> None:
    async def main() -> None:
        plans = PlanRegistry()
        backend = ServeBackend(ScriptedGitIn(tmp_path, script), plans, packcache,
                               follow_timeout=follow_timeout)
        await backend.start()
        try:
            await asyncio.wait_for(test(backend, plans), 20)  # type: ignore[operator]
        finally:
            await backend.stop()

    asyncio.run(main())


class ScriptedGitIn(ScriptedGit):
    """ScriptedGit running its script in ``home`` (where it keeps its run count)."""

    def __init__(self, home: Path, script: str) -> None:
        super().__init__(home, script)
        self.cwd = home


def cached_plan(tmp_path: Path) -> ServePlan:
    return ServePlan(tmp_path, b"", None, "test", cache_key="k", repo_key="r")


async def call(backend: ServeBackend, plans: PlanRegistry, plan: ServePlan) -> bytes:
    [(head, body)] = await http_call(backend.port, plans.register(plan))
    assert head.startswith(b"HTTP/1.1 200")
    return body


async def production_under_way(backend: ServeBackend, plans: PlanRegistry, tmp_path: Path
                               ) -> tuple[ServePlan, asyncio.Future[bytes]]:
    """A first request for the cached plan (bypassed), a second one producing the answer
    (left running); returns the plan of a third request, to follow it, and the second."""
    first, producer, follower = (cached_plan(tmp_path) for _ in range(3))
    await call(backend, plans, first)
    producing = asyncio.ensure_future(call(backend, plans, producer))
    await asyncio.sleep(0.3)
    return follower, producing


def test_a_production_whose_file_cannot_be_opened_fails_and_nobody_waits(
        tmp_path: Path) -> None:
    packcache = RecordingPackCache(tmp_path / "pc", break_first=True)

    async def test(backend: ServeBackend, plans: PlanRegistry) -> None:
        plans_ = [cached_plan(tmp_path) for _ in range(4)]
        for plan in plans_:  # bypass, produce (unopenable), then whatever comes next
            assert await asyncio.wait_for(call(backend, plans, plan), 5) == ANSWER
            assert plan.stats.complete
        assert packcache.roles[:2] == [Role.BYPASS, Role.PRODUCE]
        assert Role.FOLLOW not in packcache.roles  # the failed production is gone
        assert packcache.roles[-1] is Role.HIT
        assert list((tmp_path / "pc").glob("*.lock")) == []

    (tmp_path / "pc").mkdir()
    with_packcache(tmp_path, test, f"cat >/dev/null; printf {ANSWER.decode()}", packcache)


def test_a_follower_of_a_failed_production_runs_its_own_upload_pack(tmp_path: Path) -> None:
    packcache = RecordingPackCache(tmp_path / "pc")
    # run 2 is the producer: it fails after 1 s without output; the others answer
    script = COUNTED + f'if [ $n = 2 ]; then sleep 1; exit 1; fi; printf {ANSWER.decode()}'

    async def test(backend: ServeBackend, plans: PlanRegistry) -> None:
        first, producer, follower = (cached_plan(tmp_path) for _ in range(3))
        assert await call(backend, plans, first) == ANSWER
        producing = asyncio.ensure_future(call(backend, plans, producer))
        await asyncio.sleep(0.3)
        assert await call(backend, plans, follower) == ANSWER
        assert packcache.roles == [Role.BYPASS, Role.PRODUCE, Role.FOLLOW]
        assert follower.stats.complete and follower.stats.cache_role == "bypass"
        assert (await producing).startswith(b"00")  # its ERR packet
        assert (tmp_path / "runs").read_text().strip() == "3"

    (tmp_path / "pc").mkdir()
    with_packcache(tmp_path, test, script, packcache)


def test_a_stalled_production_sends_its_followers_their_own_way_in_time(tmp_path: Path) -> None:
    packcache = RecordingPackCache(tmp_path / "pc")
    script = COUNTED + f'if [ $n = 2 ]; then sleep 60; fi; printf {ANSWER.decode()}'

    async def test(backend: ServeBackend, plans: PlanRegistry) -> None:
        follower, producing = await production_under_way(backend, plans, tmp_path)
        started = time.monotonic()
        assert await call(backend, plans, follower) == ANSWER
        assert time.monotonic() - started < 5
        assert packcache.roles == [Role.BYPASS, Role.PRODUCE, Role.FOLLOW]
        producing.cancel()

    (tmp_path / "pc").mkdir()
    with_packcache(tmp_path, test, script, packcache, follow_timeout=0.5)


def test_a_follower_that_sent_bytes_is_aborted_when_the_production_stalls(
        tmp_path: Path) -> None:
    packcache = RecordingPackCache(tmp_path / "pc")
    script = COUNTED + 'printf 0008abcd; if [ $n = 2 ]; then sleep 60; fi; printf 0000'

    async def test(backend: ServeBackend, plans: PlanRegistry) -> None:
        follower, producing = await production_under_way(backend, plans, tmp_path)
        started = time.monotonic()
        with pytest.raises(asyncio.IncompleteReadError):
            await call(backend, plans, follower)
        assert time.monotonic() - started < 5
        assert follower.stats.bytes_sent == 8 and not follower.stats.complete
        assert follower.stats.error == "the answer being shared stalled"
        producing.cancel()

    (tmp_path / "pc").mkdir()
    with_packcache(tmp_path, test, script, packcache, follow_timeout=0.5)


def test_a_request_h11_cannot_parse_ends_its_connection_and_nothing_else(
        bare_repo: Path, tmp_path: Path) -> None:
    """Only goblet reaches the backend, but what h11 cannot parse (a Content-Length of
    more digits than int() takes) must end that connection quietly, escaping nothing,
    and leave the backend serving."""
    escaped: list[dict[str, object]] = []

    def record(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        if not isinstance(context.get("exception"), asyncio.CancelledError):  # (at the end)
            escaped.append(context)

    async def test(backend: ServeBackend, plans: PlanRegistry) -> None:
        asyncio.get_running_loop().set_exception_handler(record)
        reader, writer = await asyncio.open_connection("127.0.0.1", backend.port)
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000
                     + b"\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing sent
        writer.close()
        token = plans.register(ServePlan(bare_repo, LS_REFS, "version=2", "test"))
        [(head, _)] = await http_call(backend.port, token)
        assert head.startswith(b"HTTP/1.1 200")

    with_backend(tmp_path, test)
    assert escaped == []
