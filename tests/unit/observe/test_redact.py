"""Header lines never reach a log, whoever logs them; paths cannot steer a terminal."""

from __future__ import annotations

import logging

import pytest
from goblet.observe import redact
from goblet.observe.access import AccessRecord, format_text, printable

TOKEN = "tok-3c1d9e"


@pytest.mark.parametrize("text", [
    f"HTTP/1 protocol error: Invalid header line: b'Authorization Bearer {TOKEN}'",
    f'Invalid header line: b"Cookie {TOKEN} \\"quoted\\""',
    f"Invalid headers: b'x {TOKEN}' and more",
    "Invalid header line: " + repr(f"it's \\ {TOKEN}".encode()),
])
def test_header_lines_are_redacted(text: str) -> None:
    out = redact.redact(text)
    assert TOKEN not in out and "<redacted>" in out


def test_other_text_is_left_alone() -> None:
    text = "client connect b'abc' Invalid request"
    assert redact.redact(text) == text


def test_every_log_record_is_redacted_once_installed(caplog: pytest.LogCaptureFixture) -> None:
    redact.install()
    redact.install()  # twice is once
    with caplog.at_level(logging.INFO):
        logging.getLogger("mitmproxy.proxy.server").info(
            "HTTP protocol error in client request: Invalid header line: %s",
            repr(f"Authorization Bearer {TOKEN}".encode()))
        logging.getLogger("x").warning(f"Invalid header line: b'Bearer {TOKEN}'")
    assert caplog.records and TOKEN not in caplog.text


def test_the_text_access_log_escapes_control_characters() -> None:
    assert printable("/a\x1b[2Jb\x07") == "/a\\x1b[2Jb\\x07"
    line = format_text(AccessRecord("other", "https://h/\x1b[31mred", "-", "upstream", 200, 1,
                                    0.1, 200, "i"))
    assert "\x1b" not in line and "\\x1b[31mred" in line
