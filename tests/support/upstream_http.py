"""HTTP/1.1 plumbing of the test upstream server: request bodies, streamed responses, pacing.

:class:`StreamingHandler` is a ``BaseHTTPRequestHandler`` base class that knows nothing about
git. Contract:

* :meth:`StreamingHandler.read_body` reads a ``Content-Length`` or ``Transfer-Encoding:
  chunked`` body completely into an anonymous temp file (never into memory) and returns it at
  position 0, or ``None`` when the request has no body;
* :meth:`StreamingHandler.send` writes status line, headers and a body produced by an
  iterable of byte chunks as it is produced: with ``Content-Length`` when the length is known,
  chunked otherwise; each chunk is written as it arrives (split into 16 KiB writes when a rate
  cap is active), so at most one chunk is in memory;
* subclasses tune behaviour through the hooks :meth:`response_delay`, :meth:`pacing_rate`,
  :meth:`on_status` and :meth:`on_body_bytes`.

:class:`TlsThreadingHTTPServer` accepts plain TCP connections and does the TLS handshake in
the connection's own daemon thread, so a slow or broken client never blocks ``accept``.
"""

from __future__ import annotations

import json
import socket
import socketserver
import ssl
import struct
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any, Self

READ_SIZE = 64 * 1024
PACE_PIECE = 16 * 1024


class BadRequest(Exception):
    """The request is malformed (body framing, parameters); answer 400."""


class Pacer:
    """Sleep-based throughput cap; a rate of 0 disables pacing."""

    def __init__(self, rate_bytes_per_s: float) -> None:
        self._rate = rate_bytes_per_s
        self._start = 0.0
        self._sent = 0

    def pieces(self, chunk: bytes) -> Iterator[bytes]:
        """Split ``chunk`` into pacing-sized writes (whole when pacing is off)."""
        if self._rate <= 0:
            yield chunk
            return
        for offset in range(0, len(chunk), PACE_PIECE):
            yield chunk[offset : offset + PACE_PIECE]

    def wrote(self, count: int) -> None:
        """Account ``count`` written bytes and sleep until the rate allows more."""
        if self._rate <= 0:
            return
        now = time.monotonic()
        if self._sent == 0:
            self._start = now
        self._sent += count
        delay = self._start + self._sent / self._rate - now
        if delay > 0:
            time.sleep(delay)


class StreamingHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 handler base with streaming responses (see module docstring)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 300.0
    server_version = "goblet-test-upstream"
    sys_version = ""

    response_status: int | None = None
    """Status of the current response once its status line is decided."""
    response_bytes = 0
    """Body bytes (excluding chunk framing) written for the current response."""

    # -- hooks -------------------------------------------------------------------------

    def response_delay(self) -> float:
        """Seconds to sleep before the first byte of the current response."""
        return 0.0

    def pacing_rate(self) -> float:
        """Body throughput cap in bytes/s for the current response (0 = none)."""
        return 0.0

    def on_status(self, status: int) -> None:
        """Called once per response just before its status line is written."""

    def on_body_bytes(self, count: int) -> None:
        """Called after each body write of ``count`` bytes."""

    # -- request body ------------------------------------------------------------------

    def _copy_exact(self, dest: IO[bytes], count: int) -> None:
        while count > 0:
            data = self.rfile.read(min(READ_SIZE, count))
            if not data:
                raise BadRequest("request body ended early")
            dest.write(data)
            count -= len(data)

    def _copy_chunked(self, dest: IO[bytes]) -> None:
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise BadRequest("bad chunk size line") from exc
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields are ignored
                return
            self._copy_exact(dest, size)
            if self.rfile.readline(8) not in (b"\r\n", b"\n"):
                raise BadRequest("missing CRLF after chunk data")

    def read_body(self) -> IO[bytes] | None:
        """Read the whole de-chunked request body into a temp file positioned at 0.

        Returns ``None`` for a request with neither ``Content-Length`` nor chunked framing.
        Raises :class:`BadRequest` on malformed framing or a body cut short.
        """
        encoding = self.headers.get("Transfer-Encoding", "").lower()
        length_header = self.headers.get("Content-Length")
        if "chunked" not in encoding and length_header is None:
            return None
        body = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller, who closes it
        try:
            if "chunked" in encoding:
                self._copy_chunked(body)
            else:
                assert length_header is not None
                if not length_header.strip().isdigit():
                    raise BadRequest("bad Content-Length")
                self._copy_exact(body, int(length_header))
        except BaseException:
            body.close()
            raise
        body.seek(0)
        return body

    # -- responses ---------------------------------------------------------------------

    def send_json(self, status: int, value: Any) -> None:
        """Send ``value`` as an ``application/json`` body."""
        self.send_bytes(status, json.dumps(value).encode(), "application/json")

    def send_bytes(
        self,
        status: int,
        data: bytes,
        content_type: str = "text/plain; charset=utf-8",
        *,
        extra: Sequence[tuple[str, str]] = (),
        truncate: bool = False,
    ) -> None:
        """Send a small in-memory body with ``Content-Length`` (see :meth:`send`)."""
        headers = [("Content-Type", content_type), *extra]
        self.send(status, headers, [data], length=len(data), truncate=truncate)

    def send(
        self,
        status: int,
        headers: Sequence[tuple[str, str]],
        chunks: Iterable[bytes],
        *,
        length: int | None,
        truncate: bool = False,
    ) -> None:
        """Write status, headers and the body from ``chunks`` (chunked if ``length`` is None).

        ``headers`` must not contain framing headers. With ``truncate``, the body is spooled
        to a temp file, only its first half is sent (chunked), and the connection is then
        closed without the terminating chunk.
        """
        if truncate:
            self._send_truncated(status, headers, chunks)
            return
        pacer = Pacer(self.pacing_rate())
        self._start_response(status, headers, length)
        for chunk in chunks:
            for piece in pacer.pieces(chunk):
                self._write_piece(piece, chunked=length is None)
                pacer.wrote(len(piece))
        if length is None:
            self.wfile.write(b"0\r\n\r\n")

    def _start_response(
        self, status: int, headers: Sequence[tuple[str, str]], length: int | None
    ) -> None:
        delay = self.response_delay()
        if delay > 0:
            time.sleep(delay)
        self.response_status = status
        self.on_status(status)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _write_piece(self, piece: bytes, chunked: bool) -> None:
        if not piece:
            return
        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        self.response_bytes += len(piece)
        self.on_body_bytes(len(piece))

    def _send_truncated(
        self, status: int, headers: Sequence[tuple[str, str]], chunks: Iterable[bytes]
    ) -> None:
        with tempfile.TemporaryFile() as spool:
            for chunk in chunks:
                spool.write(chunk)
            remaining = spool.tell() // 2
            spool.seek(0)
            self._start_response(status, headers, None)
            while remaining > 0:
                piece = spool.read(min(PACE_PIECE, remaining))
                self._write_piece(piece, chunked=True)
                remaining -= len(piece)
        self.abort_connection(rst=False)

    def abort_connection(self, *, rst: bool) -> None:
        """Close the connection after the current request, without answering further.

        With ``rst``, the close sends a TCP RST (``SO_LINGER`` 0) instead of a FIN.
        """
        self.close_connection = True
        if rst:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class TlsThreadingHTTPServer(ThreadingHTTPServer):
    """HTTPS server: daemon thread per connection, TLS handshake inside that thread."""

    daemon_threads = True
    block_on_close = False
    handshake_timeout = 10.0

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        ssl_context: ssl.SSLContext,
    ) -> None:
        self.ssl_context = ssl_context
        super().__init__(address, handler)

    def server_bind(self) -> None:
        """Bind without the reverse-DNS lookup ``HTTPServer.server_bind`` does."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def finish_request(self: Self, request: Any, client_address: Any) -> None:
        """Wrap the accepted socket in TLS, then run the handler on it; always close it."""
        request.settimeout(self.handshake_timeout)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except OSError as exc:
            sys.stderr.write(f"upstream: TLS handshake from {client_address[0]} failed: {exc}\n")
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line for socket errors; a traceback for anything else."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            sys.stderr.write(f"upstream: connection from {client_address[0]} failed: {exc!r}\n")
        else:
            super().handle_error(request, client_address)
