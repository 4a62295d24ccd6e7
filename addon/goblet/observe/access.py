"""One access-log line per git request, as text or JSON. Never a credential.

Text, on stdout next to mitmproxy's own lines, with the same ``[HH:MM:SS.mmm]``
timestamp and mitmproxy's ``termlog_verbosity``::

    git fetch https://github.com/o/r.git tenant=3f2a9c01b7de outcome=cache status=200
        bytes=123456 duration=0.412s upstream=- instance=goblet-1 [reason='…']

Request lines go to their own logger (``goblet.access.request``) with its own
handler rather than through mitmproxy's log: mitmproxy hands every record it
sees to every addon as an event, which cost more than the rest of a cached ref
answer. Fill and error events (rare) still go through mitmproxy's log.

JSON (``goblet_log_format=json``): one object per line on stderr, with the
same fields plus ``time`` (RFC 3339, UTC) and ``event: "request"``; fills and
errors use ``event: "fill"`` / ``"error"``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from goblet.observe import redact

_ACCESS = logging.getLogger("goblet.access")
_REQUESTS = logging.getLogger("goblet.access.request")
_REQUESTS.propagate = False  # (its own handler, see the module docstring)


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """The facts of one git request. ``url`` never carries userinfo or a query."""

    kind: str
    url: str
    tenant: str
    outcome: str
    status: int | None
    bytes: int | None
    duration: float
    upstream_status: int | None
    instance: str
    reason: str = ""


def printable(text: str) -> str:
    """``text`` with control and other non-printable characters as ``\\xNN`` escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def format_text(r: AccessRecord) -> str:
    """The text line (without mitmproxy's timestamp prefix); nothing in it can move a
    terminal's cursor or colour it."""
    line = (
        f"git {r.kind} {printable(r.url)} tenant={r.tenant} outcome={r.outcome} "
        f"status={r.status if r.status is not None else '-'} "
        f"bytes={r.bytes if r.bytes is not None else '-'} duration={r.duration:.3f}s "
        f"upstream={r.upstream_status if r.upstream_status is not None else '-'} "
        f"instance={r.instance}"
    )
    if r.reason:
        line += f" reason={r.reason!r}"
    return line


def rfc3339(ts: float) -> str:
    """UTC time with milliseconds, e.g. ``2026-11-27T09:30:00.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def format_json(event: str, fields: dict[str, Any], ts: float | None = None) -> str:
    """One JSON object: ``time``, ``event`` and ``fields``, keys sorted."""
    obj = {"time": rfc3339(time.time() if ts is None else ts), "event": event, **fields}
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class _Stdout(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` is when a record comes (as ``print`` does)."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)

    def write_line(self, message: str) -> None:
        """Write ``message`` as ``emit`` would format it, without making a record (the
        fast path of ``AccessLog.request``: a request line costs a few microseconds)."""
        now = time.time()
        second = int(now)
        if second != self._second:  # (the same local ``HH:MM:SS`` as the formatter's)
            self._second, self._stamp = second, time.strftime("%H:%M:%S",
                                                              time.localtime(second))
        line = f"[{self._stamp}.{int(now % 1 * 1000):03d}] {message}{self.terminator}"
        with self.lock or contextlib.nullcontext():
            try:
                sys.stdout.write(line)
                sys.stdout.flush()
            except (OSError, ValueError):  # (a closed or broken stdout: as ``emit`` would)
                pass


_STDOUT = _Stdout()
_STDOUT.setFormatter(logging.Formatter("[%(asctime)s.%(msecs)03d] %(message)s",
                                       datefmt="%H:%M:%S"))


def _plain_stdout() -> bool:
    """Whether request lines go to goblet's stdout handler alone, unfiltered and at a
    level that shows them (nobody has changed the logger): then they skip logging's
    record machinery."""
    return (_REQUESTS.handlers == [_STDOUT] and not _REQUESTS.filters and not _STDOUT.filters
            and _STDOUT.level <= logging.INFO and _REQUESTS.isEnabledFor(logging.INFO))


class AccessLog:
    """Writes access records and events in the configured format."""

    def __init__(self) -> None:
        self.json = False
        self._handler: logging.Handler | None = None
        if _STDOUT not in _REQUESTS.handlers:  # (one process-wide logger and handler)
            _REQUESTS.addHandler(_STDOUT)
        _REQUESTS.setLevel(logging.INFO)

    def verbosity(self, level: str) -> None:
        """Follow mitmproxy's ``termlog_verbosity`` (``error``, ``warn``, ``info``…) for
        text request lines."""
        got = logging.getLevelName(level.upper())
        _STDOUT.setLevel(got if isinstance(got, int) else logging.INFO)

    def configure(self, fmt: str) -> None:
        """Switch between ``text`` (stdout, beside mitmproxy's log) and ``json`` (stderr
        lines)."""
        self.json = fmt == "json"
        if self.json and self._handler is None:
            self._handler = logging.StreamHandler(sys.stderr)
            self._handler.setFormatter(logging.Formatter("%(message)s"))
            _ACCESS.addHandler(self._handler)
            _ACCESS.propagate = False
            _ACCESS.setLevel(logging.INFO)
        elif not self.json and self._handler is not None:
            _ACCESS.removeHandler(self._handler)
            self._handler = None
            _ACCESS.propagate = True

    def request(self, record: AccessRecord) -> None:
        """Log one git request."""
        if self.json:
            _ACCESS.info(format_json("request", asdict(record)))
        elif _plain_stdout():  # (redacted as the record factory would: ``redact.py``)
            _STDOUT.write_line(redact.redact_record_text(format_text(record)))
        else:
            _REQUESTS.info(format_text(record))

    def event(self, event: str, message: str, level: int = logging.INFO, **fields: Any) -> None:
        """Log a fill or error event (``message`` is the text form)."""
        if self.json:
            _ACCESS.log(level, format_json(event, {"message": message, **fields}))
        else:
            _ACCESS.log(level, message)
