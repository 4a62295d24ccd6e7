"""Pytest-side handle on the test upstream server subprocess (``tests.support.upstream``).

Typical use in a fixture::

    with UpstreamServer(tmp_path / "upstream", CONFIG) as upstream:
        make_bare_repo(upstream.root / "public.git")
        git("clone", upstream.url("public.git"), ..., env=upstream.git_env(home))

Layout under ``workdir``: ``repos/`` (``root``, where tests create bare repos),
``certs/upstream-cert.pem`` (``cert_path``, regenerated at every start; with ``private_ca`` it is
``certs/upstream-ca.pem``, the CA that signed the server's certificate), ``config.json`` and
``upstream.log`` (the server's stderr, see :meth:`UpstreamServer.log_text`). With
``alt_name`` (a second virtual host on the same port, e.g. ``localhost``): ``alt-repos/``
(``alt_root``) and ``alt-config.json``.
Control calls go straight to the server over HTTPS (trusting only ``cert_path``), never
through a proxy.
"""

from __future__ import annotations

import http.client
import json
import os
import selectors
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from tests.support.stopping import StopsOnExit, terminate

PROJECT_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 20.0
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


def without_proxy_env(env: dict[str, str]) -> dict[str, str]:
    """Copy of ``env`` without proxy variables (either case)."""
    banned = {name.lower() for name in PROXY_VARIABLES}
    return {key: value for key, value in env.items() if key.lower() not in banned}


class UpstreamServer(StopsOnExit):
    """Starts, stops and controls one upstream server process.

    ``port`` is 0 until :meth:`start` returns; ``returncode`` is set by :meth:`stop`. Usable
    as a context manager (starts on enter unless already running, stops on exit). Not
    thread-safe; one instance per fixture.
    """

    def __init__(
        self, workdir: Path, config: dict[str, Any], *, latency_ms: int = 0,
        rate_mbit: float = 0, port: int = 0, private_ca: bool = False,
        alt_name: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.root = workdir / "repos"
        self.cert_dir = workdir / "certs"
        self.cert_path = self.cert_dir / "upstream-cert.pem"
        self.config_path = workdir / "config.json"
        self.log_path = workdir / "upstream.log"
        self.latency_ms = latency_ms
        self.rate_mbit = rate_mbit
        self.listen_port = port
        self.private_ca = private_ca
        self.port = 0
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        self.set_config(config)
        self.alt_name = alt_name
        self.alt_root = workdir / "alt-repos"
        self.alt_config_path = workdir / "alt-config.json"
        if alt_name:
            self.alt_root.mkdir(parents=True, exist_ok=True)
            self.set_alt_config({"users": config.get("users", {}), "repos": {}})

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> UpstreamServer:
        """Start the subprocess and wait (up to 20 s) for its READY line; returns self.

        Raises RuntimeError (with the server log) if it exits or is not ready in time.
        """
        if self._proc is not None:
            raise RuntimeError("upstream server already started")
        self._log_file = self.log_path.open("ab")
        command = [
            sys.executable,
            "-m",
            "tests.support.upstream",
            "--config",
            str(self.config_path),
            "--root",
            str(self.root),
            "--cert-dir",
            str(self.cert_dir),
            "--port",
            str(self.listen_port),
            "--latency-ms",
            str(self.latency_ms),
            "--rate-mbit",
            str(self.rate_mbit),
            *(["--private-ca"] if self.private_ca else []),
        ]
        if self.alt_name:
            command += ["--alt-name", self.alt_name, "--alt-root", str(self.alt_root),
                        "--alt-config", str(self.alt_config_path)]
        self._proc = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=without_proxy_env(dict(os.environ)),
        )
        try:
            line = self._read_ready_line()
        except BaseException:
            self.stop()
            raise
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        self.port = int(fields["port"])
        self.cert_path = Path(fields["cert"])
        return self

    def _read_ready_line(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self._proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"upstream not ready in time; log:\n{self.log_text()}")
                if not selector.select(left):
                    continue
                data = os.read(self._proc.stdout.fileno(), 4096)
                if not data:
                    raise RuntimeError(f"upstream exited early; log:\n{self.log_text()}")
                buffer += data
        line = buffer.split(b"\n", 1)[0].decode()
        if not line.startswith("READY "):
            raise RuntimeError(f"unexpected upstream output {line!r}")
        return line

    def stop(self) -> None:
        """SIGTERM the server (SIGKILL after 10 s), wait, and keep its exit status in
        ``returncode``; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc, reap=10)
            self.returncode = proc.returncode
            if proc.stdout is not None:
                proc.stdout.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @property
    def pid(self) -> int | None:
        """Process id of the running server, None when not started."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the subprocess has been started and is still alive."""
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> UpstreamServer:
        return self if self._proc is not None else self.start()

    # -- addresses ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def url(self, repo: str) -> str:
        """HTTPS URL of ``repo`` (a key of the config's ``repos``), e.g. for ``git clone``."""
        return f"https://{self.host}/{repo}"

    @property
    def alt_host(self) -> str:
        """``<alt_name>:<port>``, the second virtual host."""
        return f"{self.alt_name}:{self.port}"

    def alt_url(self, repo: str) -> str:
        """HTTPS URL of ``repo`` on the second virtual host."""
        return f"https://{self.alt_host}/{repo}"

    def git_env(self, home: Path) -> dict[str, str]:
        """Environment for a git client talking to this server directly (no proxy).

        Starts from ``os.environ`` minus proxy and ``GIT_*`` variables, then trusts
        ``cert_path`` and isolates git from system/global config with ``HOME=home``.
        """
        env = {k: v for k, v in without_proxy_env(dict(os.environ)).items() if k[:4] != "GIT_"}
        env.update(
            {
                "GIT_SSL_CAINFO": str(self.cert_path),
                "GIT_TERMINAL_PROMPT": "0",
                "GIT_CONFIG_NOSYSTEM": "1",
                "HOME": str(home),
                "XDG_CONFIG_HOME": str(home),
            }
        )
        return env

    # -- control -----------------------------------------------------------------------

    def _control(self, method: str, path: str, payload: Any = None) -> Any:
        context = ssl.create_default_context(cafile=str(self.cert_path))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=10)
        try:
            body = None if payload is None else json.dumps(payload).encode()
            headers = {"Content-Type": "application/json"} if body is not None else {}
            if method == "POST" and body is None:
                headers["Content-Length"] = "0"
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"{method} {path} -> {response.status}: {data!r}")
        return json.loads(data)

    def stats(self) -> dict[str, Any]:
        """Counters and recent requests (see ``GET /_upstream/stats``)."""
        result: dict[str, Any] = self._control("GET", "/_upstream/stats")
        return result

    def reset_stats(self) -> None:
        """Zero the counters and clear the request log."""
        self._control("POST", "/_upstream/reset")

    def fault(self, mode: str, kinds: list[str] | None = None, count: int | None = None) -> None:
        """Install a fault (``none`` clears it; see ``tests.support.upstream``)."""
        payload: dict[str, Any] = {"mode": mode, "kinds": kinds or []}
        if count is not None:
            payload["count"] = count
        self._control("POST", "/_upstream/fault", payload)

    def set_config(self, config: dict[str, Any]) -> None:
        """Atomically rewrite the config file; the server uses it from its next request."""
        self.config = json.loads(json.dumps(config))
        tmp = self.config_path.with_name(self.config_path.name + ".tmp")
        tmp.write_text(json.dumps(config, indent=2), encoding="utf-8")
        os.replace(tmp, self.config_path)

    def set_alt_config(self, config: dict[str, Any]) -> None:
        """Atomically rewrite the second virtual host's config (see :meth:`set_config`)."""
        self.alt_config = json.loads(json.dumps(config))
        tmp = self.alt_config_path.with_name(self.alt_config_path.name + ".tmp")
        tmp.write_text(json.dumps(config, indent=2), encoding="utf-8")
        os.replace(tmp, self.alt_config_path)

    def log_text(self) -> str:
        """Everything the server wrote to stderr so far ('' before the first start)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
