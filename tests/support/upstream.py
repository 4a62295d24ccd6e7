"""HTTPS git smart-HTTP server for tests, run as a subprocess.

Usage (cwd = project root)::

    python -m tests.support.upstream --config CFG.json --root REPOS_DIR --cert-dir DIR \
        [--port 0] [--latency-ms 0] [--rate-mbit 0] [--private-ca] \
        [--alt-name NAME --alt-root REPOS_DIR --alt-config CFG.json]

Contract:

* listens on 127.0.0.1 with a fresh self-signed certificate (see ``upstream_tls``; with
  ``--private-ca`` a leaf signed by a fresh private CA), speaks HTTP/1.1 with keep-alive, and
  prints exactly one line ``READY port=<port> cert=<path>`` to stdout once listening (``cert``
  is the file clients trust: the self-signed certificate, or the CA certificate alone); one
  log line per request goes to stderr (credentials never logged);
  SIGTERM/SIGINT stop it cleanly and kill running ``git http-backend`` children;
* ``/<repo>/info/refs``, ``/<repo>/git-upload-pack`` and ``/<repo>/git-receive-pack`` are
  served by ``git http-backend`` for bare repos under ``--root``, after the access rules of
  ``upstream_auth`` (config re-read on every request); a request without ``Authorization``
  may carry a token in the query string instead (``?access_token=<token>``, taken as
  ``Bearer <token>``), as some forges accept;
* with ``--alt-name``, requests addressed to that host name are a second site served from
  ``--alt-root`` under ``--alt-config``, like one server hosting two virtual hosts. The name
  a request is addressed to is, in this order: the authority of an absolute-form request
  target (RFC 9112 says a server must prefer it to ``Host``), else the TLS server name
  (SNI) of the connection (like a front end that routes by SNI), else the ``Host`` header;
* ``GET /api/hello``, ``GET /api/bytes?n=N`` (byte ``i`` is ``i % 251``) and ``POST /api/echo``
  are pass-through endpoints; ``/_upstream/{stats,reset,fault}`` are control endpoints (never
  counted, delayed, paced or faulted); anything else is 404;
* ``--latency-ms`` delays the first byte of every git response; ``--rate-mbit`` paces every
  non-control response body in writes of at most 16 KiB;
* faults (``POST /_upstream/fault``): ``stall`` holds a request until the fault is
  reconfigured (then serves it normally) or 600 s pass (then closes without answering);
  ``error500`` answers 500 ``upstream broken``; ``truncate`` sends the status line, headers
  and the first half of the body (chunked) and closes without the final chunk; ``reset``
  closes the connection with a TCP RST before answering; ``err200`` answers ``200`` with the
  git content type of the request's kind (advertisement for ``info_refs``, result otherwise)
  and a body that is one protocol ``ERR go away`` pkt-line, whoever asks.

Response bodies are streamed (chunked when no length is known) and never held in memory,
except that a ``truncate`` fault spools the body to a temporary file to know its half.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support import upstream_auth as auth
from tests.support.upstream_cgi import READ_SIZE, CgiError, CgiRequest, ChildRegistry, HttpBackend
from tests.support.upstream_client import UpstreamServer
from tests.support.upstream_http import BadRequest, StreamingHandler, TlsThreadingHTTPServer
from tests.support.upstream_state import (
    GIT_KINDS,
    PACK_KINDS,
    FaultState,
    Stats,
    classify_upload_pack,
)
from tests.support.upstream_tls import write_ca_signed_cert, write_self_signed_cert

__all__ = ["UpstreamServer", "deterministic_bytes", "main"]

STALL_SECONDS = 600.0
MAX_API_BYTES = 1 << 34
_GIT_PATH = re.compile(r"^/(?P<repo>.+?)/(?P<endpoint>info/refs|git-upload-pack|git-receive-pack)$")
_PATTERN = bytes(i % 251 for i in range(READ_SIZE + 251))
ADVERTISEMENT_TYPE = "application/x-git-upload-pack-advertisement"
RESULT_TYPE = "application/x-git-upload-pack-result"
ERR_PACKET = b"%04xERR go away\n" % (4 + len(b"ERR go away\n"))


def deterministic_bytes(count: int) -> Iterator[bytes]:
    """Yield ``count`` bytes, byte ``i`` being ``i % 251``, in pieces of at most 64 KiB."""
    offset = 0
    while offset < count:
        size = min(READ_SIZE, count - offset)
        start = offset % 251
        yield _PATTERN[start : start + size]
        offset += size


@dataclass
class Settings:
    """Server-wide state shared by all handler threads."""

    root: Path
    config_path: Path
    home: Path
    latency_s: float = 0.0
    rate_bytes_per_s: float = 0.0
    stats: Stats = field(default_factory=Stats)
    faults: FaultState = field(default_factory=FaultState)
    children: ChildRegistry = field(default_factory=ChildRegistry)
    alt_name: str | None = None
    alt_root: Path | None = None
    alt_config_path: Path | None = None

    def site(self, host: str | None) -> tuple[Path, Path]:
        """(repo root, config file) of the site a request addressed to ``host`` reaches."""
        if self.alt_name and host and host.lower() == self.alt_name:
            assert self.alt_root is not None and self.alt_config_path is not None
            return self.alt_root, self.alt_config_path
        return self.root, self.config_path


@dataclass(frozen=True)
class Route:
    """Where a request goes: its kind, and for git kinds the repo and access class."""

    kind: str
    repo: str = ""
    write: bool = False


class UpstreamHandler(StreamingHandler):
    """One client connection; requests are served one after another (keep-alive)."""

    server: UpstreamHTTPServer

    # -- per-request bookkeeping -------------------------------------------------------

    def _begin_exchange(self) -> None:
        self._kind = "-"
        self._entry: dict[str, Any] | None = None
        self.response_status = None
        self.response_bytes = 0
        self._body_size = 0
        self._fault = "none"
        self._user: str | None = None
        self._notes: list[str] = []
        self._root, self._config_path = self.server.settings.root, self.server.settings.config_path

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Suppressed: :meth:`_log_exchange` writes one richer line per request."""

    def log_message(self, format: str, *args: Any) -> None:
        """Log protocol errors reported by ``http.server`` itself."""
        sys.stderr.write(f"upstream: {self.address_string()} {format % args}\n")

    def _log_exchange(self, started: float) -> None:
        status = "-" if self.response_status is None else str(self.response_status)
        line = (
            f'{self.address_string()} "{self.command} {self.path}" {status} kind={self._kind} '
            f"user={self._user or '-'} proto={self.headers.get('Git-Protocol') or '-'} "
            f"fault={self._fault} in={self._body_size} out={self.response_bytes} "
            f"ms={(time.monotonic() - started) * 1000:.0f}"
        )
        encoding = self.headers.get("Content-Encoding")
        if encoding:
            line += f" enc={encoding}"
        if self._notes:
            line += " " + " ".join(self._notes)
        sys.stderr.write(line + "\n")

    # -- entry points -----------------------------------------------------------------

    def do_GET(self) -> None:
        """Serve a GET request."""
        self._handle()

    def do_POST(self) -> None:
        """Serve a POST request."""
        self._handle()

    def _handle(self) -> None:
        started = time.monotonic()
        self._begin_exchange()
        split = urlsplit(self.path)
        self._root, self._config_path = self.server.settings.site(self._addressed_to(split))
        body: IO[bytes] | None = None
        try:
            try:
                body = self.read_body()
            except BadRequest as exc:
                self.close_connection = True
                self.send_bytes(400, f"{exc}\n".encode())
                return
            if body is not None:
                body.seek(0, 2)
                self._body_size = body.tell()
                body.seek(0)
            if split.path.startswith("/_upstream/"):
                self._kind = "control"
                self._control(split.path, body)
            else:
                self._serve(split.path, split.query, body)
        except OSError as exc:
            # The client went away (or the socket broke) mid-response.
            self.close_connection = True
            self._notes.append(f"error={exc.__class__.__name__}")
        finally:
            if self._entry is not None and self.response_status is None:
                self.server.settings.stats.update(self._entry, status=0)
            if body is not None:
                body.close()
            self._log_exchange(started)

    # -- routing -----------------------------------------------------------------------

    def _addressed_to(self, split: Any) -> str | None:
        """The host name the request is for: absolute-form authority, else SNI, else Host."""
        if split.netloc:
            return str(split.hostname or "")
        sni = getattr(self.connection, "sni", None)
        if sni:
            return str(sni)
        host = self.headers.get("Host") or ""
        return urlsplit(f"//{host}").hostname

    def _route(self, path: str, query: str, body: IO[bytes] | None) -> Route:
        match = _GIT_PATH.match(unquote(path))
        if match is None:
            return Route("api" if path.startswith("/api/") else "not_found")
        repo, endpoint = match["repo"], match["endpoint"]
        if endpoint == "info/refs" and self.command == "GET":
            service = parse_qs(query).get("service", [""])[0]
            if service in ("git-upload-pack", "git-receive-pack"):
                return Route("info_refs", repo, service == "git-receive-pack")
        elif endpoint == "git-upload-pack" and self.command == "POST":
            gzipped = self.headers.get("Content-Encoding", "").lower() in ("gzip", "x-gzip")
            kind = "other" if body is None else classify_upload_pack(body, gzipped)
            return Route(kind, repo, False)
        elif endpoint == "git-receive-pack" and self.command == "POST":
            return Route("receive_pack", repo, True)
        return Route("not_found")

    def _serve(self, path: str, query: str, body: IO[bytes] | None) -> None:
        settings = self.server.settings
        route = self._route(path, query, body)
        self._kind = route.kind
        try:
            config = auth.load_config(self._config_path)
        except (OSError, ValueError) as exc:
            self._notes.append(f"config_error={exc!s:.200}")
            self.send_bytes(500, b"upstream config unreadable\n")
            return
        authorization = self.headers.get("Authorization")
        query_token = parse_qs(query).get("access_token")
        if authorization is None and query_token:
            authorization = f"Bearer {query_token[0]}"  # a token in the URL, as some forges take
        decision: auth.Decision | None = None
        if route.kind in GIT_KINDS:
            decision = auth.authorize(
                config, route.repo, write=route.write, authorization=authorization
            )
            self._user = decision.user
        else:
            self._user = auth.optional_user(config, authorization)
        self._entry = settings.stats.record(
            self.command, self.path, route.kind, self._user, self.headers.get("Git-Protocol")
        )
        mode, generation = settings.faults.take(route.kind)
        if mode != "none":
            self._fault = mode
            settings.stats.update(self._entry, fault=mode)
        if mode == "stall" and not settings.faults.wait_cleared(generation, STALL_SECONDS):
            self.abort_connection(rst=False)
            return
        if mode == "reset":
            self.abort_connection(rst=True)
            return
        if mode == "error500":
            self.send_bytes(500, b"upstream broken\n")
            return
        if mode == "err200":
            ctype = ADVERTISEMENT_TYPE if route.kind == "info_refs" else RESULT_TYPE
            self.send_bytes(200, ERR_PACKET, ctype)
            return
        truncate = mode == "truncate"
        if decision is not None:
            self._serve_git(route, decision, path, query, body, truncate)
        elif route.kind == "api":
            self._serve_api(path, query, body, truncate)
        else:
            self.send_bytes(404, b"Not found.\n", truncate=truncate)

    # -- git ---------------------------------------------------------------------------

    def _serve_git(
        self,
        route: Route,
        decision: auth.Decision,
        path: str,
        query: str,
        body: IO[bytes] | None,
        truncate: bool,
    ) -> None:
        settings = self.server.settings
        if decision.status == 401:
            extra = [("WWW-Authenticate", auth.REALM_HEADER)]
            self.send_bytes(401, b"Authentication required.\n", extra=extra, truncate=truncate)
            return
        if decision.status == 403:
            self.send_bytes(403, b"Permission denied.\n", truncate=truncate)
            return
        repo_dir = (self._root / route.repo).resolve()
        inside = repo_dir.is_relative_to(self._root.resolve())
        if decision.status != 200 or not inside or not (repo_dir / "HEAD").is_file():
            self.send_bytes(404, b"Repository not found.\n", truncate=truncate)
            return
        request = CgiRequest(
            method=self.command,
            path_info=unquote(path),
            query_string=query,
            remote_addr=self.client_address[0],
            content_type=self.headers.get("Content-Type"),
            content_length=None if body is None else self._body_size,
            content_encoding=self.headers.get("Content-Encoding"),
            git_protocol=self.headers.get("Git-Protocol"),
            remote_user=decision.user,
        )
        backend = HttpBackend(self._root, settings.home, request, body, settings.children)
        try:
            try:
                status, headers = backend.read_headers()
            except CgiError as exc:
                self._notes.append(f"cgi={exc!s:.200}")
                self.send_bytes(502, b"git http-backend failed\n")
                return
            length: int | None = None
            for name, value in headers:
                if name.lower() == "content-length" and value.isdigit():
                    length = int(value)
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
            self.send(status, headers, backend.body(), length=length, truncate=truncate)
        finally:
            code, errors = backend.close()
            if code:
                self._notes.append(f"cgi_exit={code}")
            if errors.strip():
                self._notes.append("cgi_stderr=" + " | ".join(errors.strip().splitlines())[:500])

    # -- pass-through API ----------------------------------------------------------------

    def _serve_api(self, path: str, query: str, body: IO[bytes] | None, truncate: bool) -> None:
        if path == "/api/hello" and self.command == "GET":
            data = json.dumps({"hello": "world", "auth": self._user}).encode()
            self.send_bytes(200, data, "application/json", truncate=truncate)
        elif path == "/api/bytes" and self.command == "GET":
            raw = parse_qs(query).get("n", ["0"])[0]
            if not raw.isdigit() or int(raw) > MAX_API_BYTES:
                self.send_bytes(400, b"n must be a non-negative integer\n", truncate=truncate)
                return
            headers = [("Content-Type", "application/octet-stream")]
            self.send(200, headers, deterministic_bytes(int(raw)), length=None, truncate=truncate)
        elif path == "/api/echo" and self.command == "POST":
            content_type = self.headers.get("Content-Type", "application/octet-stream")
            chunks: Iterable[bytes] = []
            if body is not None:
                chunks = iter(lambda: body.read(READ_SIZE), b"")
            self.send(
                200,
                [("Content-Type", content_type)],
                chunks,
                length=self._body_size,
                truncate=truncate,
            )
        else:
            self.send_bytes(404, b"Not found.\n", truncate=truncate)

    # -- control endpoints ---------------------------------------------------------------

    def _control(self, path: str, body: IO[bytes] | None) -> None:
        settings = self.server.settings
        if path == "/_upstream/stats" and self.command == "GET":
            self.send_json(200, settings.stats.snapshot())
        elif path == "/_upstream/reset" and self.command == "POST":
            settings.stats.reset()
            self.send_json(200, {"ok": True})
        elif path == "/_upstream/fault" and self.command == "POST":
            try:
                spec = json.loads((body.read() if body is not None else b"") or b"{}")
                mode = spec.get("mode", "none")
                kinds = spec.get("kinds") or []
                count = spec.get("count")
                if not isinstance(mode, str) or not isinstance(kinds, list):
                    raise ValueError("mode must be a string and kinds a list")
                if count is not None and not isinstance(count, int):
                    raise ValueError("count must be an integer")
                settings.faults.configure(mode, [str(k) for k in kinds], count)
            except (ValueError, AttributeError) as exc:
                self.send_bytes(400, f"{exc}\n".encode())
                return
            self.send_json(200, {"ok": True})
        else:
            self.send_bytes(404, b"Not found.\n")

    # -- hooks of StreamingHandler -------------------------------------------------------

    def response_delay(self) -> float:
        """The emulated WAN latency, for git requests only."""
        return self.server.settings.latency_s if self._kind in GIT_KINDS else 0.0

    def pacing_rate(self) -> float:
        """The emulated WAN rate, for every response but control endpoints."""
        return self.server.settings.rate_bytes_per_s if self._kind != "control" else 0.0

    def on_status(self, status: int) -> None:
        """Publish the status in the stats entry as soon as it is decided."""
        if self._entry is not None:
            self.server.settings.stats.update(self._entry, status=status)

    def on_body_bytes(self, count: int) -> None:
        """Count pack bytes for fetch and v0 upload-pack responses."""
        if self._kind in PACK_KINDS:
            self.server.settings.stats.add_pack_bytes(count)


class UpstreamHTTPServer(TlsThreadingHTTPServer):
    """The TLS server with the upstream's shared :class:`Settings`."""

    def __init__(
        self, address: tuple[str, int], ssl_context: ssl.SSLContext, settings: Settings
    ) -> None:
        self.settings = settings
        super().__init__(address, UpstreamHandler, ssl_context)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="HTTPS git smart-HTTP server for tests")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--cert-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--rate-mbit", type=float, default=0.0)
    parser.add_argument("--alt-name", default=None)
    parser.add_argument("--alt-root", type=Path, default=None)
    parser.add_argument("--alt-config", type=Path, default=None)
    parser.add_argument("--private-ca", action="store_true",
                        help="present a leaf signed by a fresh private CA; READY names the CA")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    args = _parse_args(argv)
    if args.private_ca:
        cert_path, leaf_path, key_path = write_ca_signed_cert(args.cert_dir)
    else:
        cert_path, key_path = write_self_signed_cert(args.cert_dir)
        leaf_path = cert_path
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(leaf_path, key_path)
    context.set_alpn_protocols(["http/1.1"])

    def remember_sni(sock: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
        sock.sni = server_name  # read by the handler to pick the site

    context.sni_callback = remember_sni
    home = Path(tempfile.mkdtemp(prefix="upstream-home-"))
    settings = Settings(
        root=args.root.resolve(),
        config_path=args.config.resolve(),
        home=home,
        latency_s=args.latency_ms / 1000.0,
        rate_bytes_per_s=args.rate_mbit * 1_000_000 / 8,
        alt_name=args.alt_name.lower() if args.alt_name else None,
        alt_root=args.alt_root.resolve() if args.alt_root else None,
        alt_config_path=args.alt_config.resolve() if args.alt_config else None,
    )
    server = UpstreamHTTPServer(("127.0.0.1", args.port), context, settings)

    def request_shutdown(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, request_shutdown)
    signal.signal(signal.SIGINT, request_shutdown)
    print(f"READY port={server.server_port} cert={cert_path}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        settings.children.kill_all()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
