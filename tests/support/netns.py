"""Run a command in a network namespace of its own: only its own loopback exists there.

Lets a test start a server that binds every interface (``0.0.0.0``) without
listening beyond loopback on this machine. Needs ``unshare`` (util-linux) and
root (or unprivileged user namespaces).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path


def unshare_binary() -> str:
    """The unshare binary; RuntimeError when it is missing (tests fail, never skip)."""
    path = shutil.which("unshare")
    if path is None:
        raise RuntimeError("unshare (util-linux) is missing")
    return path


# Brings the namespace's loopback up (SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP), then
# execs the command: no iproute2 needed.
_LO_UP_AND_EXEC = """
import fcntl, os, socket, struct, sys
with socket.socket() as s:
    flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0))[:18])[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
os.execvp(sys.argv[1], sys.argv[1:])
"""


def in_own_network(argv: list[str]) -> list[str]:
    """``argv`` in a new network namespace whose loopback is up."""
    return [unshare_binary(), "-n", sys.executable, "-c", _LO_UP_AND_EXEC, *argv]


def run_until_ready(argv: list[str], cwd: Path, timeout: float = 60,
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` until it exits or logs ``goblet ready`` (then SIGTERM); status, output."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=cwd, env=env, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if any("goblet ready" in line for line in lines):
            proc.terminate()
            break
        time.sleep(0.05)
    else:
        if proc.poll() is None:
            proc.kill()
    proc.wait(10)
    reader.join(5)
    return subprocess.CompletedProcess(argv, proc.returncode, "".join(lines), "")
