"""Keep request header lines out of every log line, mitmproxy's own included.

mitmproxy's HTTP/1 parser refuses a header line without a colon and logs the
line whole ("Invalid header line: b'Authorization Bearer …'"), which is how a
typo in ``http.extraHeader`` would put a token into the log. goblet installs
a log-record factory that replaces such lines with ``<redacted>`` before any
handler sees the record.
"""

from __future__ import annotations

import logging
import re
from typing import Any

_LINE = re.compile(r"(Invalid header line: |Invalid headers?: )"
                   r"""b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_installed = False


def redact(text: str) -> str:
    """``text`` with every quoted header line of a parse error replaced."""
    return _LINE.sub(r"\1<redacted>", text)


def install() -> None:
    """Redact header lines in every log record from now on (idempotent)."""
    global _installed  # noqa: PLW0603 (one process-wide factory)
    if _installed:
        return
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if "nvalid header" in str(record.msg) or (
                isinstance(record.args, tuple)
                and any("nvalid header" in str(a) for a in record.args)):
            record.msg, record.args = redact(record.getMessage()), None
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
