"""A fake S3 endpoint on loopback that answers a manifest at once and trickles every
bundle (``chunk`` bytes every ``every`` seconds): a browned-out, saturated or hostile
store that never stays silent long enough for a per-read timeout."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.stopping import StopsOnExit

SHA = "ab" * 32


class SlowS3(StopsOnExit):
    """Serves one manifest (for any repo key) naming one bundle of ``size`` bytes."""

    def __init__(self, *, size: int = 4096, chunk: int = 1, every: float = 10.0) -> None:
        self.size, self.chunk, self.every = size, chunk, every
        self.manifest = json.dumps({
            "version": 1, "object_format": "sha1", "created_at": 1.0, "fence": 1,
            "head": "refs/heads/main", "digest": "cd" * 32,
            "refs": {"refs/heads/main": "0" * 40},
            "bundles": [{"name": f"{SHA}.bundle", "size": size, "sha256": SHA}]}).encode()
        self.requests: list[str] = []
        self.trickling = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def _head(self, status: int, length: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(length))
                self.send_header("ETag", '"0123"')
                self.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
                self.end_headers()

            def do_HEAD(self) -> None:
                outer.requests.append("HEAD " + self.path)
                self._head(200, outer.size if ".bundle" in self.path else len(outer.manifest))

            def do_GET(self) -> None:
                outer.requests.append("GET " + self.path)
                path = self.path.split("?")[0]
                if path.endswith("manifest.json"):
                    self._head(200, len(outer.manifest))
                    self.wfile.write(outer.manifest)
                elif path.endswith(".bundle"):
                    self._head(200, outer.size)
                    outer.trickling += 1
                    try:
                        for sent in range(0, outer.size, outer.chunk):
                            self.wfile.write(b"x" * min(outer.chunk, outer.size - sent))
                            self.wfile.flush()
                            time.sleep(outer.every)
                    except OSError:
                        pass
                    finally:
                        outer.trickling -= 1
                else:
                    self._error()

            def do_PUT(self) -> None:
                outer.requests.append("PUT " + self.path)
                self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
                self._error()

            def _error(self) -> None:
                body = b"<Error><Code>InternalError</Code></Error>"
                self._head(500, len(body))
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> SlowS3:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
