"""The one error type the protocol package raises."""

from __future__ import annotations

from typing import Literal

Culprit = Literal["client", "upstream"]


class ProtocolError(ValueError):
    """Input that does not follow git's wire protocol.

    ``culprit`` says whose bytes were bad: ``"client"`` for a request the git
    client sent, ``"upstream"`` for an answer the upstream server sent. The
    message is one line, safe to show to a git user (it never echoes more than
    a short, escaped excerpt of the input).
    """

    def __init__(self, message: str, culprit: Culprit = "client") -> None:
        super().__init__(message)
        self.culprit: Culprit = culprit

    @property
    def reason(self) -> str:
        """The one-line reason, without the culprit."""
        return str(self.args[0])


def excerpt(data: bytes, limit: int = 24) -> str:
    """A short printable excerpt of ``data`` for error messages."""
    shown = data[:limit]
    text = shown.decode("ascii", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text + ("..." if len(data) > limit else "")
