"""What upstream last said about (tenant, repo): granted or denied, and when."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Verdict:
    """One upstream answer: ``granted``, the monotonic time it was seen, and for a
    denial its HTTP status and ``WWW-Authenticate`` challenge (replayed offline)."""

    granted: bool
    at: float
    status: int | None = None
    challenge: str | None = None


class VerdictCache:
    """A bounded LRU map of (tenant, repo) → the latest Verdict.

    - ``is_granted``: the latest answer is a grant younger than ``ttl`` (this
      is what lets a request read the cache online).
    - ``granted_within``: the latest answer is a grant younger than the given
      age (offline mode, with its longer grace); a later denial always wins.
    - ``is_denied``: the latest answer is a denial younger than ``negative_ttl``.

    A denial replaces a grant at once (revocation is never delayed). Grants
    are kept for ``max(ttl, keep)`` seconds and denials for
    ``max(negative_ttl, keep)``;
    when more than ``max_entries`` are held the least recently recorded is
    dropped — dropping can only turn a cache hit into an upstream round trip,
    never the other way round.
    """

    def __init__(
        self,
        ttl: float,
        *,
        negative_ttl: float = 60.0,
        keep: float = 0.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.keep = keep
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], Verdict] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, tenant: str, repo: str, granted: bool, *, status: int | None = None,
               challenge: str | None = None) -> None:
        """Store upstream's latest answer for (tenant, repo)."""
        key = (tenant, repo)
        self._entries.pop(key, None)
        now = self._clock()
        self._entries[key] = Verdict(granted, now, status, challenge)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        self._sweep(now)

    def _sweep(self, now: float, budget: int = 4) -> None:
        """Drop a few expired entries from the old end (amortised clean-up)."""
        for _ in range(budget):
            if not self._entries:
                return
            key, oldest = next(iter(self._entries.items()))
            limit = max(self.ttl if oldest.granted else self.negative_ttl, self.keep)
            if now - oldest.at < limit:
                return
            del self._entries[key]

    def latest(self, tenant: str, repo: str) -> Verdict | None:
        """The latest recorded answer for (tenant, repo), however old."""
        return self._entries.get((tenant, repo))

    def denied_within(self, tenant: str, repo: str, age: float) -> Verdict | None:
        """The latest answer if it is a denial younger than ``age`` seconds."""
        v = self._entries.get((tenant, repo))
        if v is not None and not v.granted and self._clock() - v.at < age:
            return v
        return None

    def granted_within(self, tenant: str, repo: str, age: float) -> bool:
        """True iff the latest answer is a grant younger than ``age`` seconds."""
        v = self._entries.get((tenant, repo))
        return v is not None and v.granted and self._clock() - v.at < age

    def is_granted(self, tenant: str, repo: str) -> bool:
        """True iff upstream granted (tenant, repo) within the TTL."""
        return self.granted_within(tenant, repo, self.ttl)

    def is_denied(self, tenant: str, repo: str) -> bool:
        """True iff the latest answer is a denial younger than ``negative_ttl``."""
        v = self._entries.get((tenant, repo))
        return v is not None and not v.granted and self._clock() - v.at < self.negative_ttl

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
