"""A mitmproxy script loaded beside goblet (``-s``): what another addon sees.

It counts the flow hooks it gets, names the hook dispatch mitmproxy runs, and raises
in its ``request`` hook for requests carrying ``X-Neighbour-Raise``; after each
response it writes what it saw, as JSON, to the file ``neighbour_out`` names.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from mitmproxy import addonmanager, ctx, http


class Neighbour:
    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    def load(self, loader: Any) -> None:
        loader.add_option("neighbour_out", str, "", "Where the neighbour writes its counts.")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.seen["requestheaders"] += 1

    async def request(self, flow: http.HTTPFlow) -> None:
        self.seen["request"] += 1
        if "x-neighbour-raise" in flow.request.headers:
            raise RuntimeError("the neighbour refuses this one")

    def response(self, flow: http.HTTPFlow) -> None:
        self.seen["response"] += 1
        dispatch = addonmanager.AddonManager.trigger_event
        report = {"seen": dict(self.seen),
                  "dispatch": f"{dispatch.__module__}.{dispatch.__qualname__}"}
        out = Path(ctx.options.neighbour_out)
        out.with_suffix(".tmp").write_text(json.dumps(report))
        os.replace(out.with_suffix(".tmp"), out)


addons = [Neighbour()]
