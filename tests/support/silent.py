"""A server on loopback that accepts connections, reads what comes and never answers:
a hung Redis or object store, or a load balancer that black-holes its backend.

``SilentServer(answering=...)`` answers at once the HTTP requests whose request line
contains that text, as an S3 bucket that is empty and takes writes would (a GET of an
object: ``404 NoSuchKey``; a listing: empty; a PUT: ``200``), and stays silent for
every other request: the repo of that key works with the store, the rest hang.
"""

from __future__ import annotations

import socket
import threading

from tests.support.stopping import StopsOnExit

_NOT_FOUND = b"<Error><Code>NoSuchKey</Code></Error>"
_EMPTY_LIST = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
               b"<IsTruncated>false</IsTruncated><KeyCount>0</KeyCount></ListBucketResult>")


class SilentServer(StopsOnExit):
    """Counts ``connections`` and ``unanswered`` requests (for HTTP: whole requests; for
    anything else: each read that brought bytes)."""

    def __init__(self, *, answering: str | None = None) -> None:
        self.answering = answering.encode() if answering else None
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.unanswered = 0
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def redis_url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> SilentServer:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every connection held."""
        self.sock.close()
        with self._lock:
            for conn in self._held:
                conn.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._held.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        pending = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            if self.answering is None:
                with self._lock:
                    self.unanswered += 1
                continue
            pending += data
            while b"\r\n\r\n" in pending:
                head, _, rest = pending.partition(b"\r\n\r\n")
                length = _content_length(head)
                if len(rest) < length:
                    break
                pending = rest[length:]
                line = head.split(b"\r\n", 1)[0]
                if self.answering in line:
                    conn.sendall(_answer(line))
                else:
                    with self._lock:
                        self.unanswered += 1


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip() or b"0")
    return 0


def _answer(line: bytes) -> bytes:
    """What an empty bucket that takes writes answers the request ``line``."""
    method, _, target = line.partition(b" ")
    if method == b"GET" and b"list-type=" in target:
        status, body = b"200 OK", _EMPTY_LIST
    elif method in (b"GET", b"HEAD"):
        status, body = b"404 Not Found", _NOT_FOUND
    else:
        status, body = b"200 OK", b""
    return (b"HTTP/1.1 %s\r\nContent-Type: application/xml\r\nETag: \"e0\"\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (status, len(body),
                                                 b"" if method == b"HEAD" else body))
