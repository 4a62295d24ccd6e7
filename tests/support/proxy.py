"""A real ``mitmdump -s addon/goblet_addon.py`` subprocess for tests and benchmarks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from mitmproxy.certs import CertStore

from tests.support.stopping import StopsOnExit, terminate

REPO_ROOT = Path(__file__).resolve().parents[2]
ADDON = REPO_ROOT / "addon" / "goblet_addon.py"
_LISTEN = re.compile(r"proxy listening at \*?\[?[0-9a-f.:]*\]?:(\d+)")


def mitmdump_binary() -> str:
    """The mitmdump next to the running interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / "mitmdump"
    return str(candidate) if candidate.exists() else "mitmdump"


def ensure_ca(confdir: Path) -> Path:
    """Create mitmproxy's CA in ``confdir`` once; return the client-trust cert."""
    confdir.mkdir(parents=True, exist_ok=True)
    CertStore.from_store(confdir, "mitmproxy", 2048)
    return confdir / "mitmproxy-ca-cert.pem"


class GobletProxy(StopsOnExit):
    """Starts mitmdump with the goblet addon on 127.0.0.1 and an ephemeral port.

    ``sets`` are extra ``--set name=value`` options. The combined stdout and
    stderr of mitmdump is kept in ``log_path`` and available via ``log_text``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        hosts: list[str],
        upstream_ca: Path | None,
        confdir: Path,
        cache_dir: Path | None = None,
        sets: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        addon: bool = True,
    ) -> None:
        self.workdir = workdir
        self.hosts = hosts
        self.upstream_ca = upstream_ca
        self.confdir = confdir
        self.cache_dir = cache_dir or workdir / "cache"
        self.sets = dict(sets or {})
        self.extra_args = list(extra_args or [])
        self.addon = addon
        self.log_path = workdir / "mitmdump.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, for HTTPS_PROXY."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        """The CA certificate git must trust."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    def command(self) -> list[str]:
        """The full mitmdump command line."""
        cmd = [
            mitmdump_binary(),
            "--listen-host",
            "127.0.0.1",
            "-p",
            "0",
            "--set",
            f"confdir={self.confdir}",
            "--set",
            "http2=false",
            "--set",
            f"flow_detail={self.sets.get('flow_detail', '0')}",  # `sets` may choose another
        ]
        if self.addon:
            cmd += [
                "-s",
                str(ADDON),
                "--set",
                f"goblet_cache_dir={self.cache_dir}",
                "--set",
                f"goblet_hosts={','.join(self.hosts)}",
            ]
        if self.upstream_ca is not None:
            cmd += ["--set", f"ssl_verify_upstream_trusted_ca={self.upstream_ca}"]
        for name, value in self.sets.items():
            if name != "flow_detail":
                cmd += ["--set", f"{name}={value}"]
        return cmd + self.extra_args

    def start(self, timeout: float = 30.0) -> GobletProxy:
        """Start mitmdump and wait until it listens (and, with the addon, is ready)."""
        ensure_ca(self.confdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            k: v
            for k, v in os.environ.items()
            if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        }
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.workdir,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready.wait(0.05):
                return self
            if self.proc.poll() is not None:
                break
        self.stop()  # never leave a half-started mitmdump behind
        raise RuntimeError(f"mitmdump did not become ready:\n{self.log_text()[-4000:]}")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        listening = False
        ready = not self.addon
        with self.log_path.open("a", encoding="utf-8") as log:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace")
                self._lines.append(line)
                log.write(line)
                log.flush()
                m = _LISTEN.search(line)
                extra_port = self.sets.get("goblet_prefix_port")
                if m and not listening and m.group(1) != extra_port:  # the main proxy port
                    self.port = int(m.group(1))
                    listening = True
                if "goblet ready" in line:
                    ready = True
                if listening and ready:
                    self._ready.set()

    def log_text(self) -> str:
        """Everything mitmdump printed so far."""
        return "".join(self._lines)

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> bool:
        """Wait until ``needle`` appears in the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return True
            time.sleep(0.05)
        return False

    def children(self) -> list[tuple[int, str]]:
        """(pid, cmdline) of the live descendants of mitmdump."""
        if self.proc is None:
            return []
        parents = {self.proc.pid}
        found: list[tuple[int, str]] = []
        changed = True
        table: dict[int, tuple[int, str]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            state = stat.rsplit(")", 1)[1].split()[0]
            if state != "Z":
                table[int(entry.name)] = (ppid, cmd)
        while changed:
            changed = False
            for pid, (ppid, cmd) in table.items():
                if ppid in parents and pid not in parents:
                    parents.add(pid)
                    found.append((pid, cmd))
                    changed = True
        return found

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 10 s; return the exit status."""
        if self.proc is None:
            return None
        terminate(self.proc)
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode

    def __enter__(self) -> GobletProxy:
        return self.start()
