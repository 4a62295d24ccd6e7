"""A scriptable, hostile LFS host for tests, and a goblet scene in front of two of them.

:class:`ScriptedServer` listens on 127.0.0.1 (ephemeral port) with TLS. Every request is
recorded in ``requests`` as (method, path, lower-cased headers); its answer comes from
``app(handler, method, path, headers, body)``, which writes it itself (``send`` and
``send_json`` help). A test scripts one as an LFS API host that grants whatever it likes,
with any href, and the other as the media host the hrefs point at.

:class:`Scene` starts an API host (in ``goblet_hosts``), a media host (only relayed) and a
goblet proxy in front of them; its helpers send git-lfs's requests by hand through the
proxy's CONNECT tunnels.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support import rawhttp
from tests.support.proxy import GobletProxy, ensure_ca
from tests.support.upstream_tls import write_self_signed_cert

MEDIA_TYPE = "application/vnd.git-lfs+json"
ALICE = "Bearer tok-alice-SENTINEL"
BOB = "Bearer tok-bob"

App = Callable[[BaseHTTPRequestHandler, str, str, dict[str, str], bytes], None]


def oid_of(data: bytes) -> str:
    """The LFS oid (sha256 hex) of ``data``."""
    return hashlib.sha256(data).hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], handler: type, context: ssl.SSLContext) -> None:
        super().__init__(addr, handler)
        self.context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(30)
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        self.RequestHandlerClass(tls, client_address, self)


class ScriptedServer:
    """An HTTPS server whose answers a test scripts (see the module docstring)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.app: App = lambda h, m, p, hd, b: send(h, 404, b"nope\n")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append((self.command, self.path, headers))
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    outer.app(self, self.command, self.path, headers, body)

            do_GET = do_POST = do_HEAD = do_PUT = _any

        self.server = _Server(("127.0.0.1", 0), Handler, context)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ScriptedServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send(h: BaseHTTPRequestHandler, status: int, body: bytes,
         headers: list[tuple[str, str]] | None = None) -> None:
    """Answer ``status`` with ``body`` (and ``Content-Length``)."""
    h.send_response(status)
    for name, value in headers or []:
        h.send_header(name, value)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)
    h.wfile.flush()


def send_json(h: BaseHTTPRequestHandler, status: int, value: Any,
              headers: list[tuple[str, str]] | None = None) -> None:
    """Answer ``value`` as an LFS JSON body."""
    send(h, status, json.dumps(value).encode(), [("Content-Type", MEDIA_TYPE), *(headers or [])])


def answer(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``basic`` batch answer with ``objects``."""
    return {"transfer": "basic", "objects": objects}


def granted(oid: str, size: int, href: str, header: dict[str, str] | None = None
            ) -> dict[str, Any]:
    """One object of a batch answer, granted for download at ``href``."""
    action: dict[str, Any] = {"href": href}
    if header is not None:
        action["header"] = header
    return {"oid": oid, "size": size, "actions": {"download": action}}


def serving(data: bytes, href: str, header: dict[str, str] | None = None,
            extra: list[tuple[str, str]] | None = None) -> App:
    """An app granting ``data`` at ``href`` to every batch request and serving it to every
    other request."""
    oid = oid_of(data)

    def app(h: BaseHTTPRequestHandler, m: str, p: str, hd: dict[str, str], b: bytes) -> None:
        if p.endswith("/objects/batch"):
            send_json(h, 200, answer([granted(oid, len(data), href, header)]))
        else:
            send(h, 200, data, [("Content-Type", "application/octet-stream"), *(extra or [])])
    return app


class Scene:
    """An API host, a media host and goblet in front of them (see the module docstring)."""

    def __init__(self, tmp: Path, sets: dict[str, str] | None = None, *,
                 relay_internal: bool = True, extra_hosts: int = 0) -> None:
        self.cert, self.key = write_self_signed_cert(tmp / "certs")
        self.confdir = tmp / "confdir"
        ensure_ca(self.confdir)
        self.api = ScriptedServer(self.cert, self.key).start()
        self.media = ScriptedServer(self.cert, self.key).start()
        self.others = [ScriptedServer(self.cert, self.key).start() for _ in range(extra_hosts)]
        options = {"goblet_upstream_timeout": "5"}
        if relay_internal:
            options["goblet_relay_internal"] = "on"
        options.update(sets or {})
        self.px = GobletProxy(tmp / "px", hosts=[self.api.host, *(o.host for o in self.others)],
                              upstream_ca=self.cert, confdir=self.confdir, sets=options)
        self.px.start()

    def close(self) -> None:
        self.px.stop()
        for server in (self.api, self.media, *self.others):
            server.stop()

    def batch(self, repo: str, oids: list[tuple[str, int]], auth: str | None,
              extra: dict[str, str] | None = None, *, host: ScriptedServer | None = None,
              timeout: float = 30) -> rawhttp.RawResponse:
        """git-lfs's download batch request for ``oids`` through goblet."""
        body = json.dumps({"operation": "download", "transfers": ["basic"],
                           "objects": [{"oid": o, "size": s} for o, s in oids]}).encode()
        headers = {"Accept": MEDIA_TYPE, "Content-Type": MEDIA_TYPE, **(extra or {})}
        if auth:
            headers["Authorization"] = auth
        return rawhttp.request(proxy_port=self.px.port, ca_file=self.px.ca_cert,
                               host="127.0.0.1", port=(host or self.api).port, method="POST",
                               path=f"/{repo}/info/lfs/objects/batch", headers=headers,
                               body=body, timeout=timeout)

    def get(self, href: str, auth: str | None, method: str = "GET",
            extra: dict[str, str] | None = None, timeout: float = 30) -> rawhttp.RawResponse:
        """A request for ``href`` through goblet."""
        url = urlsplit(href)
        headers = {"Authorization": auth} if auth else {}
        headers.update(extra or {})
        return rawhttp.request(proxy_port=self.px.port, ca_file=self.px.ca_cert,
                               host=url.hostname or "", port=url.port or 443, method=method,
                               path=url.path, headers=headers, timeout=timeout)

    def lfs_dir(self) -> Path:
        return self.px.cache_dir / "lfs"

    def stored(self, oid: str, *, at_least: int = 1, wait: float = 5.0) -> list[Path]:
        """Every stored copy of ``oid``, once there are ``at_least`` or ``wait`` seconds
        passed (goblet keeps an object once mitmproxy has passed its last byte on, so the
        client may be a moment earlier)."""
        deadline = time.monotonic() + wait
        while True:
            found = [p for p in self.lfs_dir().rglob(oid)
                     if p.relative_to(self.lfs_dir()).parts[0] != "tmp"]
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def tmp_files(self) -> list[Path]:
        d = self.lfs_dir() / "tmp"
        return list(d.iterdir()) if d.exists() else []


def links(resp: rawhttp.RawResponse) -> list[str]:
    """The download hrefs of a batch answer, in order."""
    assert resp.status == 200, (resp.status, resp.body[:300])
    return [o["actions"]["download"]["href"] for o in json.loads(resp.body)["objects"]
            if "actions" in o]


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer closes ``sock`` within ``seconds`` (what it sent is read and
    dropped meanwhile)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True
