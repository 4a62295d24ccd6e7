"""What upstream last said about (tenant, repo): granted or denied, and when."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Verdict:
    """One upstream answer: ``granted`` and the monotonic time it was seen."""

    granted: bool
    at: float


class VerdictCache:
    """A bounded LRU map of (tenant, repo) → Verdict.

    ``is_granted`` is true only for a grant younger than ``ttl`` seconds. A
    denial replaces a grant at once (revocation is never delayed). When full,
    the least recently recorded entry is dropped — dropping can only turn a
    cache hit into an upstream round trip, never the other way round.
    """

    def __init__(
        self,
        ttl: float,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], Verdict] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, tenant: str, repo: str, granted: bool) -> None:
        """Store upstream's latest answer for (tenant, repo)."""
        key = (tenant, repo)
        self._entries.pop(key, None)
        self._entries[key] = Verdict(granted, self._clock())
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def is_granted(self, tenant: str, repo: str) -> bool:
        """True iff upstream granted (tenant, repo) within the TTL."""
        v = self._entries.get((tenant, repo))
        return v is not None and v.granted and self._clock() - v.at < self.ttl

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
