"""The package's layering: only ``goblet/addon/`` talks to mitmproxy.

Everything else (policy, protocol, cache, serving, observability, the CLI)
must be importable and testable without it, so a rule can be read and unit
tested where it lives.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "addon" / "goblet"


def imported_roots(source: str) -> set[str]:
    """The top-level package of every import in ``source`` (lazy imports included)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_imported_roots_sees_every_form_of_import() -> None:
    src = ("import mitmproxy.http\nfrom mitmproxy import ctx\n"
           "def f():\n    import os, mitmproxy\n    from . import x\n")
    assert imported_roots(src) == {"mitmproxy", "os"}
    assert imported_roots("from goblet.policy import gate\n") == {"goblet"}


def test_only_the_addon_package_imports_mitmproxy() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50  # the walk found the package
    outside = [str(p.relative_to(PACKAGE)) for p in modules
               if p.parent.name != "addon" and "mitmproxy" in imported_roots(p.read_text())]
    assert outside == []
    inside = [p.name for p in (PACKAGE / "addon").glob("*.py")
              if "mitmproxy" in imported_roots(p.read_text())]
    assert sorted(inside) == [
        "connections.py", "dispatch.py", "early.py", "headlimit.py", "hooks.py", "lfs.py"]


def test_the_addon_modules_stay_small() -> None:
    """Hooks and glue only: a rule a unit test would want to reach belongs elsewhere."""
    for path in (PACKAGE / "addon").glob("*.py"):
        assert len(path.read_text().splitlines()) < 320, path.name
