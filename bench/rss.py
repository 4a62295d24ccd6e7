"""Resident memory of processes over time: VmRSS from /proc/<pid>/status at ~20 Hz.

One daemon thread samples every watched pid; phases are named intervals (``mark``) that the
report shades in the memory plot and that :meth:`RssSampler.summary` measures.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def vm_rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int, *, children: bool = False) -> float | None:
    """CPU time (user + system) used so far by ``pid``, in seconds; with ``children``, plus
    that of its children it has already waited for (e.g. finished CGI processes)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    first = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    values = [int(v) for v in first]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    hz = os.sysconf("SC_CLK_TCK")
    return (total - idle) / hz, total / hz


class CpuProbe:
    """CPU used by the whole machine and by our own processes (each with its reaped
    children: git clients, CGI processes, upload-packs), to tell our load from others'."""

    def __init__(self) -> None:
        self.pids: list[int] = [os.getpid()]

    def read(self) -> tuple[float, float]:
        """(machine busy CPU seconds, our CPU seconds) so far."""
        busy, _ = machine_busy_seconds()
        ours = sum(cpu_seconds(pid, children=True) or 0.0 for pid in self.pids)
        return busy, ours


@dataclass
class Phase:
    """A named interval of the session (seconds since the sampler started)."""

    name: str
    start: float
    end: float | None = None
    cpu_start: tuple[float, float] | None = None
    cpu_end: tuple[float, float] | None = None

    def load(self) -> dict[str, float] | None:
        """Average busy cores of the machine, of our processes and of everything else."""
        if self.end is None or not self.cpu_start or not self.cpu_end or self.end <= self.start:
            return None
        wall = self.end - self.start
        busy = (self.cpu_end[0] - self.cpu_start[0]) / wall
        ours = (self.cpu_end[1] - self.cpu_start[1]) / wall
        return {"machine": round(busy, 2), "ours": round(ours, 2),
                "others": round(max(0.0, busy - ours), 2)}


@dataclass
class RssSampler:
    """Samples VmRSS of named pids until :meth:`stop`."""

    interval: float = 0.05
    t0: float = field(default_factory=time.monotonic)
    samples: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    phases: list[Phase] = field(default_factory=list)
    cpu: CpuProbe = field(default_factory=CpuProbe)

    def __post_init__(self) -> None:
        self._pids: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def watch(self, name: str, pid: int) -> None:
        """Start sampling ``pid`` as ``name``."""
        with self._lock:
            self._pids[name] = pid
            self.samples.setdefault(name, [])

    def account(self, pid: int) -> None:
        """Count ``pid`` (and its reaped children) as ours in the phases' CPU load."""
        self.cpu.pids.append(pid)

    def start(self) -> RssSampler:
        """Start the sampling thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the sampling thread."""
        self._stop.set()
        self._thread.join(2)

    def now(self) -> float:
        """Seconds since the sampler was created."""
        return time.monotonic() - self.t0

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            t = self.now()
            with self._lock:
                pids = list(self._pids.items())
            for name, pid in pids:
                kib = vm_rss_kib(pid)
                if kib is not None:
                    self.samples[name].append((t, kib))
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def begin(self, name: str) -> Phase:
        """Open a phase now."""
        phase = Phase(name, self.now(), cpu_start=self.cpu.read())
        self.phases.append(phase)
        return phase

    def end(self, phase: Phase) -> None:
        """Close a phase now."""
        phase.end = self.now()
        phase.cpu_end = self.cpu.read()

    def window(self, name: str, start: float, end: float) -> list[int]:
        """KiB samples of ``name`` taken in [start, end]."""
        return [kib for t, kib in list(self.samples.get(name, [])) if start <= t <= end]

    def settle(self, seconds: float = 1.0) -> None:
        """Wait ``seconds`` so a baseline window has samples."""
        time.sleep(seconds)

    def growth(self, name: str, phase: Phase, baseline_s: float = 1.0) -> dict[str, Any]:
        """Baseline (median over ``baseline_s`` before ``phase``) vs. peak during it, in MiB."""
        assert phase.end is not None
        before = sorted(self.window(name, phase.start - baseline_s, phase.start))
        if not before:  # a baseline window shorter than the sampling interval
            before = [kib for t, kib in self.samples.get(name, []) if t <= phase.start][-1:]
        during = self.window(name, phase.start, phase.end)
        if not before or not during:
            return {"baseline_mib": None, "peak_mib": None, "growth_mib": None, "samples": 0}
        baseline = before[len(before) // 2] / 1024
        peak = max(during) / 1024
        return {
            "baseline_mib": round(baseline, 1),
            "peak_mib": round(peak, 1),
            "growth_mib": round(peak - baseline, 1),
            "samples": len(during),
        }

    def as_dict(self) -> dict[str, Any]:
        """Samples (seconds, MiB) and phases, JSON-ready."""
        return {
            "interval_s": self.interval,
            "series": {
                name: [[round(t, 3), round(kib / 1024, 2)] for t, kib in list(points)]
                for name, points in self.samples.items()
            },
            "phases": [
                {"name": p.name, "start": round(p.start, 3),
                 "end": None if p.end is None else round(p.end, 3), "load": p.load()}
                for p in self.phases
            ],
        }
