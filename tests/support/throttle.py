"""A TCP relay in front of the proxy that makes its client a slow reader.

``SlowReader`` listens on 127.0.0.1 and relays every connection to ``target_port``
(the proxy: point a client's ``HTTPS_PROXY`` at the relay). What the client sends goes
through at once; what comes back is read from the proxy at ``rate`` bytes/s once the
first ``head_start`` bytes passed at full speed (the TLS handshake and the ref answers
of a clone), with a small receive buffer, so the proxy sees a client that takes its
answer that slowly. ``rate`` may change at any time (None: full speed again).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType

TICK = 0.1  # seconds between the reads of a throttled connection


class SlowReader:
    """The relay (see the module docstring); ``down_bytes`` counts what came back."""

    def __init__(self, target_port: int, *, rate: int | None, head_start: int = 32_768,
                 recv_buffer: int = 4096) -> None:
        self.target_port = target_port
        self.rate = rate
        self.head_start = head_start
        self.recv_buffer = recv_buffer
        self.down_bytes = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = [self._server]
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, for HTTPS_PROXY."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SlowReader:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def close(self) -> None:
        """Stop relaying and close every connection."""
        self._closing.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            target = socket.socket()
            target.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.recv_buffer)
            try:
                target.connect(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                target.close()
                continue
            with self._lock:
                self._sockets += [client, target]
            threading.Thread(target=self._up, args=(client, target), daemon=True).start()
            threading.Thread(target=self._down, args=(target, client), daemon=True).start()

    @staticmethod
    def _up(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _shut(dst)

    def _down(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                rate = self.rate if self.down_bytes >= self.head_start else None
                data = src.recv(65536 if rate is None else max(1, int(rate * TICK)))
                if not data:
                    break
                self.down_bytes += len(data)
                dst.sendall(data)
                if rate is not None:
                    time.sleep(TICK)
        except OSError:
            pass
        finally:
            _shut(dst)

    def __enter__(self) -> SlowReader:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
