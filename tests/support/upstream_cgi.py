"""Run ``git http-backend`` as a CGI child process for the test upstream server.

Contract: :class:`HttpBackend` starts one ``git http-backend`` per request with a clean
environment (no ambient git config, no proxy variables, ``HOME`` = the server's private temp
dir), feeds it the de-chunked request body from a seekable file, parses the CGI header block
(``Status:`` plus ordinary headers) and then yields the rest of stdout in reads of at most
64 KiB, so a pack is never held in memory. The child is killed by :meth:`HttpBackend.close` if
it is still running (e.g. because the HTTP client went away). Each child leads its own
process group, and killing means SIGKILL to the whole group, so ``upload-pack`` and
``pack-objects`` grandchildren die with it. Every live child is tracked in a
:class:`ChildRegistry` so the server can kill them all on shutdown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

READ_SIZE = 64 * 1024
_MAX_HEADER_BYTES = 64 * 1024


class CgiError(Exception):
    """The CGI child produced no valid header block."""


class ChildRegistry:
    """Thread-safe set of running child processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: set[subprocess.Popen[bytes]] = set()

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        """Track ``proc`` until :meth:`discard`."""
        with self._lock:
            self._children.add(proc)

    def discard(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop tracking ``proc``."""
        with self._lock:
            self._children.discard(proc)

    def kill_all(self) -> None:
        """Kill the process group of every tracked child that has not been reaped yet."""
        with self._lock:
            children = list(self._children)
        for proc in children:
            kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group led by ``proc`` unless ``proc`` was already reaped.

    An unreaped child (even a zombie) still owns its pid, so the group id cannot have been
    reused by an unrelated process.
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


@dataclass(frozen=True)
class CgiRequest:
    """The parts of an HTTP request that ``git http-backend`` sees as CGI variables."""

    method: str
    path_info: str
    query_string: str
    remote_addr: str
    content_type: str | None = None
    content_length: int | None = None
    content_encoding: str | None = None
    git_protocol: str | None = None
    remote_user: str | None = None


def cgi_environment(project_root: Path, home: Path, request: CgiRequest) -> dict[str, str]:
    """Build the complete environment of one ``git http-backend`` run (nothing inherited
    except ``PATH``)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home),
        "LANG": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_PROJECT_ROOT": str(project_root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": "goblet-test-upstream",
        "REQUEST_METHOD": request.method,
        "PATH_INFO": request.path_info,
        "QUERY_STRING": request.query_string,
        "REMOTE_ADDR": request.remote_addr,
    }
    optional = {
        "CONTENT_TYPE": request.content_type,
        "CONTENT_LENGTH": None if request.content_length is None else str(request.content_length),
        "HTTP_CONTENT_ENCODING": request.content_encoding,
        "HTTP_GIT_PROTOCOL": request.git_protocol,
        "REMOTE_USER": request.remote_user,
    }
    env.update({key: value for key, value in optional.items() if value is not None})
    return env


def _split_header_block(data: bytes) -> tuple[bytes, bytes] | None:
    """Split at the first blank line (CRLF or LF style); None if there is none yet."""
    ends = [(data.find(sep), len(sep)) for sep in (b"\r\n\r\n", b"\n\n")]
    found = [(pos, size) for pos, size in ends if pos >= 0]
    if not found:
        return None
    pos, size = min(found)
    return data[:pos], data[pos + size :]


def parse_cgi_headers(block: bytes) -> tuple[int, list[tuple[str, str]]]:
    """Parse a CGI header block into (status, headers without ``Status``)."""
    status = 200
    headers: list[tuple[str, str]] = []
    for raw_line in block.decode("latin-1").splitlines():
        if not raw_line.strip():
            continue
        name, sep, value = raw_line.partition(":")
        if not sep:
            raise CgiError(f"malformed CGI header line {raw_line!r}")
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            status = int(value.split(None, 1)[0])
        else:
            headers.append((name, value))
    return status, headers


class HttpBackend:
    """One running ``git http-backend``; use :meth:`start`, then :meth:`body`, then close."""

    def __init__(
        self,
        project_root: Path,
        home: Path,
        request: CgiRequest,
        body: IO[bytes] | None,
        registry: ChildRegistry,
    ) -> None:
        self._registry = registry
        # Closed in close(); it outlives this method by design.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self._leftover = b""
        self._eof = False
        if body is not None:
            body.seek(0)
        self._proc: subprocess.Popen[bytes] = subprocess.Popen(
            ["git", "http-backend"],
            stdin=body if body is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=cgi_environment(project_root, home, request),
            bufsize=0,
            start_new_session=True,
        )
        registry.add(self._proc)

    def read_headers(self) -> tuple[int, list[tuple[str, str]]]:
        """Read stdout up to the end of the CGI header block; raise :class:`CgiError` if the
        child exits or writes more than 64 KiB first."""
        assert self._proc.stdout is not None
        data = b""
        while True:
            split = _split_header_block(data)
            if split is not None:
                block, self._leftover = split
                return parse_cgi_headers(block)
            if len(data) > _MAX_HEADER_BYTES:
                raise CgiError("CGI header block too large")
            chunk = self._proc.stdout.read(READ_SIZE)
            if not chunk:
                raise CgiError(f"CGI exited without headers: {self.stderr_text()!r}")
            data += chunk

    def body(self) -> Iterator[bytes]:
        """Yield the response body after the header block, in pieces of at most 64 KiB."""
        assert self._proc.stdout is not None
        if self._leftover:
            data, self._leftover = self._leftover, b""
            yield data
        while True:
            chunk = self._proc.stdout.read(READ_SIZE)
            if not chunk:
                self._eof = True
                return
            yield chunk

    def stderr_text(self) -> str:
        """What the child wrote to stderr so far."""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def close(self) -> tuple[int | None, str]:
        """Reap the child and return (exit code, stderr text).

        A child whose stdout was read to the end gets 10 s to exit; otherwise (the client went
        away, or the response was cut short) its process group is killed at once.
        """
        try:
            if not self._eof:
                kill_group(self._proc)
            try:
                code: int | None = self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill_group(self._proc)
                code = self._proc.wait(timeout=10)
            errors = self.stderr_text()
        finally:
            self._registry.discard(self._proc)
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._stderr.close()
        return code, errors
