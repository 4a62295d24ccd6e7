"""AccessLog: one line per git request on stdout (text) or stderr (JSON)."""

from __future__ import annotations

import json
import logging
import re

import pytest
from goblet.observe import redact
from goblet.observe.access import AccessLog, AccessRecord

TOKEN = "T" * 43
RECORD = AccessRecord("ls_refs", f"https://h/o/r.git/info/lfs/goblet/{TOKEN}/x", "3f2a9c01b7de",
                      "cache", 200, 2157, 0.0042, None, "goblet-1", "refs from cache, 4 s old")


def test_text_lines_go_to_stdout_with_mitmproxys_timestamp(
        capsys: pytest.CaptureFixture[str]) -> None:
    redact.install()
    log = AccessLog()
    log.configure("text")
    log.verbosity("info")
    log.request(RECORD)
    out = capsys.readouterr().out
    assert re.fullmatch(
        r"\[\d\d:\d\d:\d\d\.\d{3}\] git ls_refs https://h/o/r\.git/info/lfs/goblet/-/x "
        r"tenant=3f2a9c01b7de outcome=cache status=200 bytes=2157 duration=0\.004s "
        r"upstream=- instance=goblet-1 reason='refs from cache, 4 s old'\n", out), out
    assert TOKEN not in out  # (the record factory redacts this logger's lines too)


@pytest.mark.parametrize(("verbosity", "shown"), [("error", False), ("warn", False),
                                                   ("info", True), ("debug", True)])
def test_text_lines_follow_termlog_verbosity(verbosity: str, shown: bool,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    log = AccessLog()
    log.configure("text")
    log.verbosity(verbosity)
    log.request(RECORD)
    log.verbosity("info")
    assert bool(capsys.readouterr().out) is shown


def test_json_lines_go_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    log = AccessLog()
    log.configure("json")
    try:
        log.request(RECORD)
    finally:
        log.configure("text")
    got = capsys.readouterr()
    assert got.out == ""
    line = json.loads(got.err.strip().splitlines()[-1])
    assert line["event"] == "request" and line["kind"] == "ls_refs" and line["bytes"] == 2157


def test_a_handler_or_filter_added_to_the_request_logger_is_honoured(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Lines skip logging's records only while nobody has changed the logger: an added
    handler receives them (redacted), and a filter can drop them."""
    redact.install()
    log = AccessLog()
    log.configure("text")
    log.verbosity("info")
    got: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.getMessage())

    logger, keep = logging.getLogger("goblet.access.request"), Keep()
    logger.addHandler(keep)
    try:
        log.request(RECORD)
    finally:
        logger.removeHandler(keep)
    assert len(got) == 1 and got[0].startswith("git ls_refs ") and TOKEN not in got[0]
    assert capsys.readouterr().out.count("git ls_refs") == 1  # (the stdout line too)
    drop = logging.Filter("nothing.matches")
    logger.addFilter(drop)
    try:
        log.request(RECORD)
    finally:
        logger.removeFilter(drop)
    assert capsys.readouterr().out == ""
    log.request(RECORD)
    assert capsys.readouterr().out.count("git ls_refs") == 1
