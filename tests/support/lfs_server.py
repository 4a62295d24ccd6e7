"""A small Git LFS server for tests: a batch API and a separate media host, both HTTPS.

Contract:

* The **API host** answers ``POST /<repo>/info/lfs/objects/batch`` (``download`` and
  ``upload``), deciding access with the same users and rules as the git upstream
  (``upstream_auth.authorize``, given the same config mapping, read at every request): 401
  with a challenge for bad or missing credentials where needed, 404 for a repo the user may
  not read. Each granted download's ``href`` points at the media host with a per-answer
  secret in its query string and its own ``Authorization`` header; both contain
  ``HREF_SENTINEL`` so a test can search logs for them. Other LFS paths (locks, verify)
  answer 404 JSON; every request is recorded in ``requests`` (method, path).
* The **media host** serves ``GET /objects/<oid>?sig=<secret>`` only with the header the
  batch answer named, and counts what it sends in ``media_bytes`` / ``media_requests``.
  ``corrupt`` holds oids whose bytes it changes (same size) before sending; with
  ``chunked_batch`` (``chunked_media``) set, batch answers (objects) are sent chunked,
  without ``Content-Length``; ``media_rate`` (bytes/s, 0: none) caps the media host's
  throughput per answer, as a WAN would. With ``same_host_objects`` set, downloads point
  at the API host itself instead (``GET /<repo>/lfs-objects/<oid>``), with no header of
  their own: that host wants the client's own credential (as the batch API does) and
  counts what it sends like the media host.
* Objects are added with :meth:`LfsServer.add` (content → oid) and kept in memory.

Both hosts listen on 127.0.0.1 with ephemeral ports and use the certificate and key given
(the git upstream's, so one CA file covers every test server); ``stop`` (or leaving the
``with`` block) shuts both down.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.upstream_auth import REALM_HEADER, authorize
from tests.support.upstream_http import StreamingHandler, TlsThreadingHTTPServer

HREF_SENTINEL = "hrefsecret"
MEDIA_TYPE = "application/vnd.git-lfs+json"
CHUNK = 64 * 1024


class LfsServer:
    """The API host and the media host (see the module docstring)."""

    def __init__(self, cert: Path, key: Path, config: Callable[[], dict[str, Any]]) -> None:
        self.config = config
        self.objects: dict[str, bytes] = {}
        self.corrupt: set[str] = set()
        self.chunked_batch = False
        self.chunked_media = False
        self.media_rate = 0.0
        self.same_host_objects = False
        self.requests: list[tuple[str, str]] = []
        self.media_bytes = 0
        self.media_requests = 0
        self._grants: dict[str, str] = {}  # secret -> oid
        self._lock = threading.Lock()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.api = TlsThreadingHTTPServer(("127.0.0.1", 0), _api_handler(self), context)
        self.media = TlsThreadingHTTPServer(("127.0.0.1", 0), _media_handler(self), context)
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True)
                         for s in (self.api, self.media)]

    @property
    def api_host(self) -> str:
        """``127.0.0.1:<port>`` of the batch API."""
        return f"127.0.0.1:{self.api.server_port}"

    @property
    def media_host(self) -> str:
        """``127.0.0.1:<port>`` of the media host."""
        return f"127.0.0.1:{self.media.server_port}"

    def lfs_url(self, repo: str) -> str:
        """The LFS endpoint of ``repo`` (for ``lfs.url``)."""
        return f"https://{self.api_host}/{repo}/info/lfs"

    def add(self, content: bytes) -> str:
        """Store an object; return its oid."""
        oid = hashlib.sha256(content).hexdigest()
        self.objects[oid] = content
        return oid

    def reset_counters(self) -> None:
        """Forget what was counted so far."""
        with self._lock:
            self.media_bytes = self.media_requests = 0
            self.requests.clear()

    def grant(self, oid: str) -> str:
        """A fresh media-host secret for ``oid``."""
        secret = f"{HREF_SENTINEL}-{secrets.token_hex(16)}"
        with self._lock:
            self._grants[secret] = oid
        return secret

    def granted(self, secret: str) -> str | None:
        """The oid a media-host secret was issued for."""
        with self._lock:
            return self._grants.get(secret)

    def count(self, sent: int) -> None:
        """Count one media answer of ``sent`` bytes."""
        with self._lock:
            self.media_bytes += sent
            self.media_requests += 1

    def start(self) -> LfsServer:
        """Serve both hosts in daemon threads."""
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop both hosts."""
        for s in (self.api, self.media):
            s.shutdown()
            s.server_close()

    def __enter__(self) -> LfsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _api_handler(server: LfsServer) -> type[StreamingHandler]:
    class Api(StreamingHandler):
        server_version = "goblet-test-lfs"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            server.requests.append(("POST", self.path))
            body = self.read_body()
            repo, sep, rest = self.path.partition("/info/lfs/")
            if not sep or rest != "objects/batch":
                self.send_json(404, {"message": "not found"})
                return
            request = json.loads(body.read() if body else b"{}")
            write = request.get("operation") == "upload"
            decision = authorize(server.config(), repo.lstrip("/"), write=write,
                                 authorization=self.headers.get("Authorization"))
            if decision.status != 200:
                extra = [("WWW-Authenticate", REALM_HEADER)] if decision.status == 401 else []
                data = json.dumps({"message": "access denied"}).encode()
                self.send_bytes(decision.status, data, MEDIA_TYPE, extra=extra)
                return
            objects = [self._object(o, write) for o in request.get("objects", [])]
            data = json.dumps({"transfer": "basic", "objects": objects}).encode()
            if server.chunked_batch:
                self.send(200, [("Content-Type", MEDIA_TYPE)], [data[:50], data[50:]],
                          length=None)
            else:
                self.send_bytes(200, data, MEDIA_TYPE)

        def _object(self, obj: dict[str, Any], write: bool) -> dict[str, Any]:
            oid, size = obj.get("oid", ""), obj.get("size", 0)
            if write:
                return {"oid": oid, "size": size}  # already there: nothing to upload
            if oid not in server.objects:
                return {"oid": oid, "size": size,
                        "error": {"code": 404, "message": "object does not exist"}}
            if server.same_host_objects:
                return {"oid": oid, "size": len(server.objects[oid]), "actions": {"download": {
                    "href": f"https://{server.api_host}/{self._repo()}/lfs-objects/{oid}"}}}
            secret = server.grant(oid)
            return {"oid": oid, "size": len(server.objects[oid]), "authenticated": True,
                    "actions": {"download": {
                        "href": f"https://{server.media_host}/objects/{oid}?sig={secret}",
                        "header": {"Authorization": f"RemoteAuth {secret}"},
                        "expires_in": 3600}}}

        def _repo(self) -> str:
            return self.path.lstrip("/").partition("/info/lfs/")[0]

        def do_GET(self) -> None:
            server.requests.append(("GET", self.path))
            repo, sep, oid = self.path.lstrip("/").partition("/lfs-objects/")
            if not sep or oid not in server.objects:
                self.send_json(404, {"message": "not found"})
                return
            decision = authorize(server.config(), repo, write=False,
                                 authorization=self.headers.get("Authorization"))
            if decision.status != 200:
                self.send_json(decision.status, {"message": "access denied"})
                return
            data = server.objects[oid]
            server.count(len(data))
            self.send_bytes(200, data, "application/octet-stream")

    return Api


def _media_handler(server: LfsServer) -> type[StreamingHandler]:
    class Media(StreamingHandler):
        server_version = "goblet-test-lfs-media"

        def pacing_rate(self) -> float:
            return server.media_rate

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            oid = path.removeprefix("/objects/")
            secret = query.removeprefix("sig=")
            if server.granted(secret) != oid or \
                    self.headers.get("Authorization") != f"RemoteAuth {secret}":
                self.send_bytes(403, b"bad signature\n")
                return
            data = server.objects[oid]
            if oid in server.corrupt:
                data = bytes([data[0] ^ 1]) + data[1:]
            server.count(len(data))
            self.send(200, [("Content-Type", "application/octet-stream")],
                      (data[i:i + CHUNK] for i in range(0, len(data), CHUNK)),
                      length=None if server.chunked_media else len(data))

    return Media
