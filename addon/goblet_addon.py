"""Entry point for ``mitmdump -s addon/goblet_addon.py``.

Thin on purpose: it makes the ``goblet`` package importable from a source
checkout (no install needed) and hands mitmproxy the addon instance.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from goblet.addon import make_addons  # noqa: E402

addons = list(make_addons())
