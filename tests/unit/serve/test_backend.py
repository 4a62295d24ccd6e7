"""The serving backend: real upload-pack on a real repo, over a real loopback socket."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from goblet.cache.gitrun import GitRunner
from goblet.protocol import pktline
from goblet.serve.backend import ServeBackend
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
    """A GitRunner whose 'upload-pack' is a shell script (our own seam)."""

    def __init__(self, home: Path, script: str) -> None:
        super().__init__(home=home)
        self.script = script

    async def spawn(self, args: Sequence[str], *, git_dir: Path | None = None,
                    config: Sequence[tuple[str, str]] = (),
                    extra_env: Mapping[str, str] | None = None) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            "sh", "-c", self.script, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)


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
