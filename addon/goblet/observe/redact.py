"""Keep request header lines and LFS link tokens out of every log line, mitmproxy's own
included.

mitmproxy's HTTP/1 parser refuses a header line without a colon and logs the
line whole ("Invalid header line: b'Authorization Bearer …'"), which is how a
typo in ``http.extraHeader`` would put a token into the log; it logs a bad
request line, and the head of a client that closed its connection before the
end of its headers, whole too (``Authorization`` lines included). goblet
installs a log-record factory that replaces such quoted bytes with
``<redacted>`` before any handler sees the record. The token of a goblet LFS
link (``…/goblet/<token>/``) becomes ``-`` in any spelling of the path
(another case, doubled slashes, ``%2F``, escaped characters), so a misspelled
link logs no live token either.
"""

from __future__ import annotations

import logging
import re
from typing import Any

_LINE = re.compile(r"(Invalid header line: |Invalid headers?: |Bad HTTP request line: "
                   r"|Client closed connection before completing request headers: )"
                   r"""b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_LINK = re.compile(r"(?i)(goblet(?:/|%2f)+)(?:%[0-9a-f]{2}|[A-Za-z0-9_-]){20,}")
_installed = False


def redact(text: str) -> str:
    """``text`` with every quoted header line of a parse error replaced, and every LFS
    link token hidden."""
    return redact_links(_LINE.sub(r"\1<redacted>", text))


def redact_links(text: str) -> str:
    """``text`` with the token of every goblet LFS link in it replaced by ``-``."""
    return _LINK.sub(r"\1-", text) if "oblet" in text.lower() else text


def may_need_redaction(text: str) -> bool:
    """Whether ``text`` may hold a header line or a link token (a cheap test before the
    patterns; False means ``redact(text) == text``)."""
    return ("nvalid header" in text or "oblet" in text.lower() or "request line" in text
            or "request headers:" in text)


def redact_record_text(text: str) -> str:
    """``text`` as the installed record factory leaves a log message."""
    return redact(text) if may_need_redaction(text) else text


def install() -> None:
    """Redact header lines in every log record from now on (idempotent)."""
    global _installed  # noqa: PLW0603 (one process-wide factory)
    if _installed:
        return
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        texts = [str(record.msg), *(str(a) for a in record.args)] if isinstance(
            record.args, tuple) else [str(record.msg)]
        if any(may_need_redaction(t) for t in texts):
            record.msg, record.args = redact(record.getMessage()), None
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
