"""Pure helpers of the ``goblet`` CLI: sizes, ages, tables and git's progress lines.

Nothing here does IO; the commands print what these return.

git's progress lines (``progress.c``, ``sideband.c``), as they reach a fill's
stderr with ``LANG=C``::

    line     = ["remote: "] phase ": " (counter / count) [throughput] [", done."] [suffix]
    counter  = percent "% (" done "/" total ")"        ; percent right-aligned to 3
    count    = number                                  ; phases without a total
    throughput = ", " size " | " size "/s"             ; "/s" part only while running
    size     = number ("." 2DIGIT " " ("GiB" / "MiB" / "KiB") / " byte" ["s"])
    suffix   = "\\x1b[K" / spaces                      ; remote lines only

e.g. ``Receiving objects:  45% (1234/2742), 1.20 MiB | 2.30 MiB/s``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

_UNITS = {"byte": 1, "bytes": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_NUMBER, _UNIT = r"\d+(?:\.\d+)?", r"GiB|MiB|KiB|bytes?"
_PROGRESS = re.compile(
    r"(?P<remote>remote: )?(?P<phase>[A-Z][A-Za-z ]{0,40}?): +"
    r"(?:(?P<percent>\d{1,3})% \((?P<done>\d+)/(?P<total>\d+)\)|(?P<count>\d+))"
    rf"(?:, (?P<size>{_NUMBER}) (?P<unit>{_UNIT})"
    rf"(?: \| (?P<rate>{_NUMBER}) (?P<rate_unit>{_UNIT})/s)?)?"
    r"(?P<finished>, done\.?)?"
)


@dataclass(frozen=True, slots=True)
class ProgressLine:
    """One parsed progress line of git."""

    phase: str  # e.g. "Receiving objects", "Resolving deltas", "Counting objects"
    remote: bool  # reported by the upstream (``remote:`` prefix)
    done: int  # objects (or deltas) so far
    total: int | None  # None for phases without a known total
    percent: int | None
    bytes: int | None  # bytes received so far (``Receiving objects`` only)
    rate: int | None  # bytes per second, while running
    finished: bool  # the line ends in ``, done.``


def _bytes(number: str | None, unit: str | None) -> int | None:
    if number is None or unit is None:
        return None
    return int(float(number) * _UNITS[unit])


def parse_progress(line: str) -> ProgressLine | None:
    """Parse one of git's progress lines; None for any other line (pure, never raises)."""
    text = line.replace("\x1b[K", "").strip()
    m = _PROGRESS.fullmatch(text)
    if m is None:
        return None
    if m["count"] is not None:
        done, total, percent = int(m["count"]), None, None
    else:
        done, total, percent = int(m["done"]), int(m["total"]), int(m["percent"])
    return ProgressLine(
        phase=m["phase"].strip(), remote=m["remote"] is not None, done=done, total=total,
        percent=percent, bytes=_bytes(m["size"], m["unit"]), rate=_bytes(m["rate"], m["rate_unit"]),
        finished=m["finished"] is not None,
    )


def human_bytes(n: int | None) -> str:
    """``1536`` → ``1.5 KiB`` (binary units, like git); ``-`` for None."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float | None) -> str:
    """A duration as the largest whole unit: ``45s``, ``12m``, ``3h``, ``9d``."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces (the last column is not padded)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*cells, str(row[-1])]).rstrip())
    return "\n".join(lines)


def describe(p: ProgressLine) -> str:
    """One short status text for a progress line: ``receiving 45% 1234/2742 objects …``."""
    words = p.phase.lower().split()
    verb, noun = (words[0], " ".join(words[1:]) or "objects") if words else ("working", "")
    text = f"{'upstream ' if p.remote else ''}{verb}"
    if p.percent is not None:
        text += f" {p.percent:3d}% {p.done}/{p.total} {noun}"
    else:
        text += f" {p.done} {noun}"
    if p.bytes is not None:
        text += f", {human_bytes(p.bytes)}"
    if p.rate is not None:
        text += f" | {human_bytes(p.rate)}/s"
    return text + (", done" if p.finished else "")


class ProgressView:
    """Turns a fill's progress lines into what the CLI prints for one repo.

    On a terminal the line is rewritten in place (``\\r``); otherwise a new
    line is emitted when the phase changes, a phase finishes, or at most
    every ``every`` seconds. ``objects`` and ``bytes`` keep the last counts
    of ``Receiving objects`` (what came from upstream).
    """

    def __init__(self, label: str, *, tty: bool, every: float = 1.0) -> None:
        self.label = label
        self.tty = tty
        self.every = every
        self.objects = 0
        self.bytes: int | None = None
        self._phase = ""
        self._last = float("-inf")

    def feed(self, line: str, now: float | None = None) -> str | None:
        """The text to print for ``line`` (with ``\\r`` on a terminal), or None."""
        p = parse_progress(line)
        if p is None:
            return None
        if p.phase == "Receiving objects":
            self.objects = p.done
            self.bytes = p.bytes if p.bytes is not None else self.bytes
        now = time.monotonic() if now is None else now
        text = f"{self.label}  {describe(p)}"
        if self.tty:
            return f"\r{text}\x1b[K"
        changed = p.phase != self._phase
        self._phase = p.phase
        if changed or p.finished or now - self._last >= self.every:
            self._last = now
            return text + "\n"
        return None
