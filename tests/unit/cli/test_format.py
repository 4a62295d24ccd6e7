"""The CLI's pure helpers: git's progress lines, their display, sizes and ages."""

from __future__ import annotations

import pytest
from goblet.cli.format import ProgressView, describe, human_age, human_bytes, parse_progress
from hypothesis import given
from hypothesis import strategies as st

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("line", "phase", "remote", "done", "total", "percent", "size", "rate", "finished"),
    [
        ("Receiving objects:  45% (1234/2742), 1.20 MiB | 2.30 MiB/s", "Receiving objects",
         False, 1234, 2742, 45, int(1.2 * MiB), int(2.3 * MiB), False),
        ("Receiving objects: 100% (2742/2742), 12.00 MiB | 5.00 MiB/s, done.",
         "Receiving objects", False, 2742, 2742, 100, 12 * MiB, 5 * MiB, True),
        ("Receiving objects:   3% (1/30)", "Receiving objects", False, 1, 30, 3, None, None,
         False),
        ("Receiving objects:  50% (15/30), 1 byte | 1 byte/s", "Receiving objects", False,
         15, 30, 50, 1, 1, False),
        ("Receiving objects: 100% (30/30), 900 bytes | 900.00 KiB/s, done.",
         "Receiving objects", False, 30, 30, 100, 900, 900 * 1024, True),
        ("Receiving objects: 100% (9/9), 2.50 GiB, done.", "Receiving objects", False, 9, 9,
         100, int(2.5 * 1024**3), None, True),
        ("Resolving deltas: 100% (3/3), done.", "Resolving deltas", False, 3, 3, 100, None,
         None, True),
        ("remote: Counting objects: 100% (5/5), done.        ", "Counting objects", True, 5, 5,
         100, None, None, True),
        ("remote: Compressing objects:  40% (2/5)\x1b[K", "Compressing objects", True, 2, 5, 40,
         None, None, False),
        ("remote: Enumerating objects: 45, done.", "Enumerating objects", True, 45, None, None,
         None, None, True),
        ("Checking connectivity: 1200, done.", "Checking connectivity", False, 1200, None, None,
         None, None, True),
    ],
)
def test_progress_lines_parse(line: str, phase: str, remote: bool, done: int,
                              total: int | None, percent: int | None, size: int | None,
                              rate: int | None, finished: bool) -> None:
    p = parse_progress(line)
    assert p is not None
    assert (p.phase, p.remote, p.done, p.total, p.percent, p.bytes, p.rate, p.finished) == (
        phase, remote, done, total, percent, size, rate, finished)


@pytest.mark.parametrize("line", [
    "", "remote: Total 45 (delta 3), reused 0 (delta 0), pack-reused 0",
    "From https://github.com/org/repo", " * [new branch]      main -> main",
    "fatal: unable to access 'https://x/': Could not resolve host: x",
    "Receiving objects: lots", "Receiving objects:  45% (1234/2742), 1.20 XiB | 2 MiB/s",
    "receiving objects: 45% (1/2)", "Receiving objects: 45% (1/2) trailing",
])
def test_other_lines_are_not_progress(line: str) -> None:
    assert parse_progress(line) is None


@given(st.text(max_size=200))
def test_any_text_parses_or_is_none(text: str) -> None:
    result = parse_progress(text)
    assert result is None or result.done >= 0


@given(st.integers(0, 10**7), st.integers(1, 10**7), st.integers(0, 999_999))
def test_generated_counter_lines_round_trip(done: int, total: int, centi_kib: int) -> None:
    done %= total + 1  # git never counts past the total
    line = (f"Receiving objects: {done * 100 // total:3d}% ({done}/{total}), "
            f"{centi_kib // 100}.{centi_kib % 100:02d} KiB | 1.00 MiB/s")
    p = parse_progress(line)
    assert p is not None and (p.done, p.total) == (done, total)
    assert p.bytes == int(float(f"{centi_kib // 100}.{centi_kib % 100:02d}") * 1024)


def test_describe_names_objects_and_bytes() -> None:
    p = parse_progress("Receiving objects:  45% (1234/2742), 1.20 MiB | 2.30 MiB/s")
    assert p is not None
    assert describe(p) == "receiving  45% 1234/2742 objects, 1.2 MiB | 2.3 MiB/s"
    q = parse_progress("remote: Enumerating objects: 45, done.")
    assert q is not None and describe(q) == "upstream enumerating 45 objects, done"


def test_progress_view_throttles_without_a_terminal() -> None:
    view = ProgressView("[1/1]", tty=False, every=1.0)
    lines = [f"Receiving objects: {i:3d}% ({i}/100), {i}.00 KiB | 1.00 MiB/s" for i in range(100)]
    out = [view.feed(line, now=0.001 * n) for n, line in enumerate(lines)]
    shown = [o for o in out if o is not None]
    assert len(shown) == 1 and shown[0].startswith("[1/1]  receiving ")  # first of the phase
    done = view.feed("Receiving objects: 100% (100/100), 100.00 KiB | 1.00 MiB/s, done.", 0.2)
    assert done is not None and done.endswith("done\n")
    assert view.feed("Resolving deltas:  10% (1/10)", 0.3) is not None  # a new phase
    assert view.feed("Resolving deltas:  20% (2/10)", 0.4) is None
    assert view.feed("Resolving deltas:  30% (3/10)", 1.5) is not None  # a second later
    assert view.feed("From https://x/y", 9.0) is None
    assert (view.objects, view.bytes) == (100, 100 * 1024)


def test_progress_view_rewrites_one_line_on_a_terminal() -> None:
    view = ProgressView("[2/3]", tty=True)
    out = view.feed("Receiving objects:  45% (1234/2742), 1.20 MiB | 2.30 MiB/s", 0.0)
    assert out is not None and out.startswith("\r[2/3]  receiving") and out.endswith("\x1b[K")
    assert "\n" not in out


@pytest.mark.parametrize(("n", "text"), [
    (None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * MiB, "5.0 MiB"),
    (3 * 1024**3, "3.0 GiB"), (2 * 1024**5, "2048.0 TiB"),
])
def test_human_bytes(n: int | None, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize(("s", "text"), [
    (None, "-"), (-5, "0s"), (59.9, "59s"), (60, "1m"), (7200, "2h"), (86400 * 9 + 5, "9d"),
])
def test_human_age(s: float | None, text: str) -> None:
    assert human_age(s) == text
