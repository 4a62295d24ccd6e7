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
    f"Bad HTTP request line: b'GET /x?t={TOKEN}'",
    "127.0.0.1:5000: Client closed connection before completing request headers: "
    f"b'GET / HTTP/1.1\\r\\nAuthorization: Bearer {TOKEN}\\r\\n'",
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


LINK_TOKEN = "dntmjjkAtxoBFuoi7i3Dtgl0BzQh29VNC7tGVdDJJpk"
LINK_OID = "398f56346616eb37d4e40cb35352584136856f47cf579c388" + "0" * 15


@pytest.mark.parametrize("path", [
    f"/o/r.git/info/lfs/goblet/{LINK_TOKEN}/{LINK_OID}",
    f"/o/r.git/info/lfs/goblet/{LINK_TOKEN}/{LINK_OID.upper()}",
    f"/o/r.git/info/lfs//goblet/{LINK_TOKEN}/{LINK_OID}",
    f"/o/r.git//info/lfs/goblet/{LINK_TOKEN}/{LINK_OID}",
    f"/o/./r.git/info/lfs/goblet/{LINK_TOKEN}/{LINK_OID}",
    f"/o/r.git/info/lfs/goblet/{LINK_TOKEN}/{LINK_OID}/",
    f"/o/r.git/info/lfs/goblet/{LINK_TOKEN}%2F{LINK_OID}",
    f"/o/r.git/info/lfs/goblet/%{ord(LINK_TOKEN[0]):02X}{LINK_TOKEN[1:]}/{LINK_OID}",
    f"/o/r.git/info/LFS/GOBLET/{LINK_TOKEN}/{LINK_OID}",
    f"/o/r.git/info/lfs/goblet%2f{LINK_TOKEN}/{LINK_OID}",
    f"/o/r.git/info/lfs/goblet/{LINK_TOKEN};x=1/{LINK_OID}",
])
def test_lfs_link_tokens_are_hidden_in_any_spelling(path: str) -> None:
    out = redact.redact(f"git invalid https://h{path} tenant=- outcome=error")
    assert LINK_TOKEN not in out and LINK_TOKEN[1:] not in out and "goblet" in out.lower()


def test_lfs_link_tokens_are_hidden_in_every_log_record(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    redact.install()
    with caplog.at_level(logging.INFO):
        logging.getLogger("goblet.access").info(
            f"git other https://h/o/r.git/info/lfs//goblet/{LINK_TOKEN}/{LINK_OID}")
        logging.getLogger("mitmproxy").info("%s", f"/info/LFS/goblet/{LINK_TOKEN}/x")
    assert len(caplog.records) == 2 and LINK_TOKEN not in caplog.text


def test_other_goblet_paths_are_left_alone() -> None:
    for text in ("https://github.com/goblet/goblet.git", "goblet ready: instance=a",
                 "/o/r.git/info/lfs/goblet/short/x"):
        assert redact.redact(text) == text
