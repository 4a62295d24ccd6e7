"""A memoizing HTTPS upstream, to measure the proxy's own request rate.

The tests' upstream runs one ``git http-backend`` process per request, which costs more CPU
than the proxy's work on an info/refs or ls-refs request: on a 2-core machine, a load test
through it measures mostly the upstream. This server sits in front of that upstream (on
loopback, no WAN) and answers ``GET .../info/refs`` and ``POST .../git-upload-pack`` with a
``command=ls-refs`` body from memory once it has relayed the same request (method, target,
``Git-Protocol``, body bytes) once; every other request (fetches included) is relayed every
time. The answers are byte-for-byte the real upstream's, so the proxy and git cannot tell.
"""

from __future__ import annotations

import http.client
import ssl
import sys
import threading
from pathlib import Path
from typing import IO, Any

from tests.support.upstream_http import BadRequest, StreamingHandler, TlsThreadingHTTPServer
from tests.support.upstream_state import classify_upload_pack
from tests.support.upstream_tls import write_self_signed_cert

_KEPT_HEADERS = ("content-type", "cache-control", "expires", "pragma")


class _Handler(StreamingHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the load test sends thousands of requests."""

    def do_GET(self) -> None:
        self._handle(None)

    def do_POST(self) -> None:
        try:
            body = self.read_body()
        except BadRequest as e:
            self.close_connection = True
            self.send_bytes(400, f"{e}\n".encode())
            return
        try:
            self._handle(body)
        finally:
            if body is not None:
                body.close()

    def _handle(self, body: IO[bytes] | None) -> None:
        data = body.read() if body is not None else b""
        memo = self.command == "GET" and "/info/refs" in self.path
        if body is not None and self.path.endswith("/git-upload-pack"):
            body.seek(0)
            gzipped = self.headers.get("Content-Encoding", "").lower() == "gzip"
            memo = classify_upload_pack(body, gzipped) == "ls_refs"
        key = (self.command, self.path, self.headers.get("Git-Protocol"), data)
        answer = self.server.memo.get(key) if memo else None
        if answer is None:
            answer = self.server.relay(self.command, self.path, self.headers, data)
            if memo and answer[0] == 200:
                self.server.memo[key] = answer
                self.server.relayed += 1
        else:
            self.server.hits += 1
        status, headers, payload = answer
        self.send(status, headers, [payload], length=len(payload))


class _Server(TlsThreadingHTTPServer):
    def __init__(self, context: ssl.SSLContext, target_port: int, target_ca: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler, context)
        self.target_port = target_port
        self.target_context = ssl.create_default_context(cafile=str(target_ca))
        self.memo: dict[tuple[Any, ...], tuple[int, list[tuple[str, str]], bytes]] = {}
        self.hits = 0
        self.relayed = 0

    def relay(self, method: str, path: str, headers: Any,
              body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.target_port,
                                           context=self.target_context, timeout=120)
        try:
            forward = {k: v for k, v in headers.items()
                       if k.lower() not in ("host", "connection", "transfer-encoding",
                                            "content-length", "proxy-connection")}
            conn.request(method, path, body=body if method == "POST" else None, headers=forward)
            resp = conn.getresponse()
            payload = resp.read()
            kept = [(k, v) for k, v in resp.getheaders() if k.lower() in _KEPT_HEADERS]
            return resp.status, kept, payload
        finally:
            conn.close()


class CannedUpstream:
    """Starts the memoizing server in a thread of this process (see the module docstring)."""

    def __init__(self, cert_dir: Path, *, target_port: int, target_ca: Path) -> None:
        self.cert_path, key_path = write_self_signed_cert(cert_dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, key_path)
        context.set_alpn_protocols(["http/1.1"])
        self._server = _Server(context, target_port, target_ca)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.2,),
                                        name="canned-upstream", daemon=True)

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def url(self, repo: str) -> str:
        """HTTPS URL of ``repo``."""
        return f"https://{self.host}/{repo}"

    def counters(self) -> dict[str, int]:
        """Answers from memory (``hits``) and relayed requests that were memoized."""
        return {"hits": self._server.hits, "memoized": self._server.relayed}

    def start(self) -> CannedUpstream:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


if __name__ == "__main__":
    sys.exit("bench.canned is used by bench.run")
