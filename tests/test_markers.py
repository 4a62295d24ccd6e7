"""The ``e2e`` marker selects exactly the tests under tests/e2e, whatever their module says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def collected(*args: str) -> int:
    """How many tests ``pytest --collect-only ARGS`` selects (0 when none)."""
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                          "no:xdist", "-p", "no:cacheprovider", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode in (0, 5), res.stdout + res.stderr  # 5: nothing selected
    m = re.search(r"(\d+)(?:/\d+)? tests? collected|no tests collected", res.stdout)
    assert m is not None, res.stdout
    return int(m[1]) if m[1] else 0


@pytest.fixture(scope="module")
def e2e_total() -> int:
    total = collected("tests/e2e")
    assert total > 100
    return total


def test_minus_m_e2e_selects_every_e2e_test(e2e_total: int) -> None:
    assert collected("-m", "e2e", "tests/e2e") == e2e_total


def test_minus_m_not_e2e_selects_none_of_them() -> None:
    assert collected("-m", "not e2e", "tests/e2e") == 0


def test_unit_tests_are_not_e2e() -> None:
    unit = "tests/unit/protocol/test_routes.py"
    assert collected(unit) > 0
    assert collected("-m", "e2e", unit) == 0
    assert collected("-m", "not e2e", unit) == collected(unit)
