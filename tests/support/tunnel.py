"""Raw bytes through a CONNECT tunnel of the proxy, for requests no HTTP library will send.

:func:`open_tunnel` sends ``CONNECT host:port`` to the proxy on 127.0.0.1 and wraps the
socket in TLS (trusting ``ca_file``, with an optional SNI that differs from the CONNECT
target). :func:`read_response` reads one HTTP/1.1 response (``Content-Length``, chunked or
until close). :class:`RssSampler` watches a process's resident memory from a thread.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

from tests.support.rawhttp import RawResponse
from tests.support.stopping import StopsOnExit

MAX_RESPONSE = 64 * 1024 * 1024


class ResponseError(Exception):
    """The connection ended (or broke) before a whole response head arrived."""


def open_tunnel(
    proxy_port: int,
    host: str,
    port: int,
    *,
    ca_file: Path,
    sni: str | None = None,
    timeout: float = 30,
) -> ssl.SSLSocket:
    """A TLS socket inside ``CONNECT host:port`` through the proxy.

    ``sni`` (default: ``host``) is the server name of the TLS handshake and the name the
    certificate is checked against; an IP address sends no SNI at all.
    """
    raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    try:
        raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = raw.recv(4096)
            if not data:
                raise ResponseError(f"proxy closed the CONNECT: {head!r}")
            head += data
        if not head.split(b"\r\n", 1)[0].split(b" ")[1:2] == [b"200"]:
            raise ResponseError(f"CONNECT refused: {head!r}")
        context = ssl.create_default_context(cafile=str(ca_file))
        return context.wrap_socket(raw, server_hostname=sni or host)
    except BaseException:
        raw.close()
        raise


def _readline(sock: socket.socket, buf: bytearray) -> bytes:
    while b"\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ResponseError(f"connection closed mid-head: {bytes(buf[:200])!r}")
        buf += data
    line, _, _ = buf.partition(b"\r\n")
    del buf[: len(line) + 2]
    return bytes(line)


def _read_exact(sock: socket.socket, buf: bytearray, count: int) -> bytes:
    while len(buf) < count:
        data = sock.recv(65536)
        if not data:
            raise ResponseError("connection closed mid-body")
        buf += data
    out = bytes(buf[:count])
    del buf[:count]
    return out


def read_response(sock: socket.socket, *, head_only: bool = False) -> RawResponse:
    """Read one response from ``sock`` (at most 64 MiB of body)."""
    buf = bytearray()
    status_line = _readline(sock, buf)
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ResponseError(f"not an HTTP status line: {status_line!r}")
    headers: dict[str, str] = {}
    while line := _readline(sock, buf):
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    status = int(parts[1])
    if head_only or status in (204, 304) or 100 <= status < 200:
        return RawResponse(status, headers, b"")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size = int(_readline(sock, buf).split(b";")[0], 16)
            if size == 0:
                while _readline(sock, buf):
                    pass
                break
            body += _read_exact(sock, buf, size)
            _read_exact(sock, buf, 2)
            if len(body) > MAX_RESPONSE:
                raise ResponseError("response body too large")
        return RawResponse(status, headers, bytes(body))
    if "content-length" in headers:
        return RawResponse(status, headers, _read_exact(sock, buf, int(headers["content-length"])))
    while len(buf) <= MAX_RESPONSE:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    return RawResponse(status, headers, bytes(buf))


def exchange(
    proxy_port: int,
    host: str,
    port: int,
    request: bytes,
    *,
    ca_file: Path,
    sni: str | None = None,
    timeout: float = 30,
) -> RawResponse:
    """Send the raw ``request`` bytes through a fresh tunnel and read one response."""
    with open_tunnel(proxy_port, host, port, ca_file=ca_file, sni=sni, timeout=timeout) as sock:
        sock.sendall(request)
        return read_response(sock)


def http_request(
    method: str, target: str, host: str, headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> bytes:
    """The bytes of one HTTP/1.1 request with a ``Content-Length`` body (POST) or none."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if method != "GET" or body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (VmRSS), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    return 0


class RssSampler(StopsOnExit):
    """Samples a process's RSS every ``interval`` seconds from a thread; keeps the peak.

    ``kill_above`` (bytes of growth over the baseline taken at start) SIGKILLs the
    process, so a test of a memory bomb can never take the machine with it; ``killed``
    then says so.
    """

    def __init__(self, pid: int, *, interval: float = 0.05, kill_above: int | None = None) -> None:
        self.pid = pid
        self.interval = interval
        self.kill_above = kill_above
        self.baseline = rss_bytes(pid)
        self.peak = self.baseline
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def growth(self) -> int:
        """Peak RSS minus the baseline, in bytes."""
        return self.peak - self.baseline

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = rss_bytes(self.pid)
            self.peak = max(self.peak, rss)
            if self.kill_above is not None and rss - self.baseline > self.kill_above:
                self.killed = True
                os.kill(self.pid, signal.SIGKILL)
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (the thread ends within ``interval``)."""
        self._stop.set()
        self._thread.join(5)


def wait_closed(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closes ``sock`` (EOF or reset); None if still open."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(min(left, 1.0))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionError, ssl.SSLError, OSError):
            return time.monotonic() - started
        if not data:
            return time.monotonic() - started
