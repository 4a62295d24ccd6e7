"""Sampling profiles of the running mitmdump with py-spy, summarised by function.

``py-spy record --pid PID --format raw`` writes collapsed stacks (``frame;frame;... count``,
one line per distinct stack, root first). :func:`summarize` turns them into the share of busy
samples per function: *self* (the function was on top of the stack) and *inclusive* (it was
anywhere on the stack). Idle time is not sampled (no ``--idle``), so shares are of the time the
process was running Python or native code on behalf of Python.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# Files whose frames sit on (nearly) every stack of an asyncio program: left out of the
# inclusive ranking, which would otherwise start with the event loop itself.
_GENERIC_FILES = ("asyncio/base_events.py", "asyncio/events.py", "asyncio/runners.py",
                  "tools/main.py", "threading.py", "<string>", "mitmdump")
# Where a sample's time goes, by the innermost frame that belongs to one of these groups.
_GROUPS = (
    ("goblet addon", ("goblet/",)),
    ("mitmproxy logging (termlog, log)", ("addons/termlog.py", "mitmproxy/log.py", "logging/")),
    ("mitmproxy addon/hook dispatch", ("mitmproxy/addonmanager.py", "proxy/server.py",
                                       "proxy/mode_servers.py", "utils/typecheck.py")),
    ("mitmproxy TLS (pyOpenSSL)", ("layers/tls.py", "OpenSSL/", "mitmproxy/tls.py",
                                   "mitmproxy/certs.py")),
    ("mitmproxy HTTP/1 layers", ("layers/http/", "mitmproxy/http.py", "net/http/")),
    ("mitmproxy other layers", ("mitmproxy/proxy/",)),
    ("mitmproxy other addons", ("mitmproxy/addons/",)),
    ("asyncio transports, sockets, pipes", ("asyncio/selector_events.py",
                                            "asyncio/unix_events.py", "asyncio/streams.py",
                                            "asyncio/sslproto.py", "selectors.py")),
)


def py_spy_binary() -> str | None:
    """py-spy next to the interpreter, or on PATH; None when it is not installed."""
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.exists():
        return str(candidate)
    return shutil.which("py-spy")


class Profiler:
    """A py-spy recording of one pid; ``start``, do the work, ``stop``."""

    def __init__(self, pid: int, output: Path, *, rate: int = 100, max_seconds: int = 300) -> None:
        self.pid = pid
        self.output = output
        self.rate = rate
        self.max_seconds = max_seconds
        self.proc: subprocess.Popen[bytes] | None = None
        self.error: str | None = None

    def start(self) -> bool:
        """Start recording; False (with ``error``) when py-spy is unavailable."""
        binary = py_spy_binary()
        if binary is None:
            self.error = "py-spy is not installed"
            return False
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "record", "--pid", str(self.pid), "--format", "raw", "--nolineno",
             "--nonblocking", "--rate", str(self.rate), "--duration", str(self.max_seconds),
             "--output", str(self.output)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        return True

    def stop(self) -> bool:
        """Stop recording (SIGINT makes py-spy write its output); True if output exists."""
        if self.proc is None:
            return False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        if not self.output.exists():
            self.error = f"py-spy wrote no profile: {out.decode(errors='replace')[-300:]}"
            return False
        return True


def _label(frame: str) -> str:
    """``func (path/to/file.py)`` → ``func (file.py)``; py-spy shortens paths already."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    parts = where.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else where
    return f"{name} ({short})"


def summarize(raw: Path, top: int = 10) -> dict[str, Any]:
    """Self and inclusive shares of the busiest functions in a raw py-spy profile."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        self_counts[_label(frames[-1])] += count
        for label in {_label(f) for f in frames}:
            incl_counts[label] += count
        groups[_group(frames)] += count
    if total == 0:
        return {"samples": 0, "self": [], "inclusive": []}

    def share(counter: Counter[str], skip_generic: bool) -> list[dict[str, Any]]:
        rows = []
        for label, count in counter.most_common():
            if skip_generic and any(f in label for f in _GENERIC_FILES):
                continue
            rows.append({"function": label, "share": round(count / total, 3)})
            if len(rows) == top:
                break
        return rows

    return {
        "samples": total,
        "self": share(self_counts, skip_generic=False),
        "inclusive": share(incl_counts, skip_generic=True),
        "groups": [{"group": g, "share": round(c / total, 3)} for g, c in groups.most_common()],
    }


def _group(frames: list[str]) -> str:
    """The group of the innermost frame that belongs to one (see ``_GROUPS``)."""
    for frame in reversed(frames):
        for name, needles in _GROUPS:
            if any(n in frame for n in needles):
                return name
    return "other (event loop, stdlib)"
