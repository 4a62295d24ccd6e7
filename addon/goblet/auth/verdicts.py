"""What upstream last said about (tenant, repo): granted or denied, when, and which refs."""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# Refs the distinct views of all held verdicts may hold (about 250 bytes each): far above
# any one repo's (150,000 refs is a large monorepo), far below what clients could make
# goblet hold by asking, as ever new tenants, for ever other subsets of a large repo's.
MAX_VIEW_PAIRS = 1_000_000


@dataclass(frozen=True, slots=True, weakref_slot=True)
class RefView:
    """The refs an upstream ref answer showed one credential.

    ``pairs`` holds (refname, oid) for every advertised ref and
    (refname + ``^{}``, oid) for every peeled tag; ``tips`` is every oid in
    it. Objects are served by id only if they are reachable from ``tips``
    (see ``decide.py``). Equal views are shared between tenants.
    """

    pairs: frozenset[tuple[str, str]]
    tips: frozenset[str] = field(compare=False)
    complete: bool = False  # every branch and tag was listed (no ref-prefix left any out)
    all_tags: bool = False  # every tag was listed (no ref-prefix left one out)
    #: The advertised ref names (peeled entries excluded); made once, read per request.
    names: frozenset[str] = field(init=False, compare=False, repr=False)
    _tags: frozenset[tuple[str, str]] | None = field(
        default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names",
                           frozenset(n for n, _ in self.pairs if not n.endswith("^{}")))

    @property
    def tags(self) -> frozenset[tuple[str, str]]:
        """The listed tags, (refname, oid) (peeled entries excluded); made when first
        asked for (by a fetch following tags), then kept."""
        if self._tags is None:
            object.__setattr__(self, "_tags", frozenset(
                (n, o) for n, o in self.pairs
                if n.startswith("refs/tags/") and not n.endswith("^{}")))
        assert self._tags is not None
        return self._tags

    @classmethod
    def of(cls, refs: Mapping[str, str], peeled: Mapping[str, str], *,
           complete: bool = False, all_tags: bool | None = None) -> RefView:
        """The view of an advertisement's refs and peeled tags (``all_tags``: defaults
        to ``complete``)."""
        pairs = frozenset([*refs.items(), *((f"{n}^{{}}", o) for n, o in peeled.items())])
        return cls(pairs, frozenset(oid for _, oid in pairs), complete,
                   complete if all_tags is None else all_tags)

    @property
    def mirrored(self) -> dict[str, str]:
        """The listed branches and tags (what a fill mirrors), name → oid."""
        return {n: o for n, o in self.pairs if n.startswith(("refs/heads/", "refs/tags/"))
                and not n.endswith("^{}")}


@dataclass(frozen=True, slots=True)
class Verdict:
    """One upstream answer: ``granted``, the monotonic time it was seen, and for a
    denial its HTTP status and ``WWW-Authenticate`` challenge (replayed offline).
    A grant may carry the refs it showed (``view``, seen at ``view_at``)."""

    granted: bool
    at: float
    status: int | None = None
    challenge: str | None = None
    view: RefView | None = None
    view_at: float = 0.0


class VerdictCache:
    """A bounded LRU map of (tenant, repo) → the latest Verdict.

    - ``is_granted``: the latest answer is a grant younger than ``ttl`` (this
      is what lets a request read the cache online).
    - ``granted_within``: the latest answer is a grant younger than the given
      age (offline mode, with its longer grace); a later denial always wins.
    - ``is_denied``: the latest answer is a denial younger than ``negative_ttl``.
    - ``view``: the refs of the latest grant that listed refs, if younger than
      the given age. A grant without refs (a v2 capability advertisement)
      keeps the previous view; a denial drops it.

    A denial replaces a grant at once (revocation is never delayed). Grants
    are kept for ``max(ttl, keep)`` seconds and denials for
    ``max(negative_ttl, keep)``;
    when more than ``max_entries`` are held, or their distinct views hold more
    than ``max_view_pairs`` refs in all (a client chooses which refs an answer
    lists, with ``ref-prefix``, and which tenant it is), the least recently
    recorded are dropped — dropping can only turn a cache hit into an upstream
    round trip, never the other way round.
    """

    def __init__(
        self,
        ttl: float,
        *,
        negative_ttl: float = 60.0,
        keep: float = 0.0,
        max_entries: int = 100_000,
        max_view_pairs: int = MAX_VIEW_PAIRS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.keep = keep
        self._max = max_entries
        self._max_pairs = max_view_pairs
        self._pairs = 0  # refs of the distinct views entries hold
        self._held: dict[int, list[int]] = {}  # id(view) → [its refs, entries holding it]
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], Verdict] = OrderedDict()
        self._views: weakref.WeakValueDictionary[
            tuple[frozenset[tuple[str, str]], bool, bool], RefView] = weakref.WeakValueDictionary()

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, tenant: str, repo: str, granted: bool, *, status: int | None = None,
               challenge: str | None = None, view: RefView | None = None) -> None:
        """Store upstream's latest answer for (tenant, repo)."""
        key = (tenant, repo)
        previous = self._entries.pop(key, None)
        now = self._clock()
        view_at = now
        if view is not None:
            view = self._views.setdefault((view.pairs, view.complete, view.all_tags), view)
        elif granted and previous is not None and previous.granted:
            view, view_at = previous.view, previous.view_at
        verdict = Verdict(granted, now, status, challenge, view if granted else None, view_at)
        self._hold(verdict.view, 1)
        if previous is not None:
            self._hold(previous.view, -1)
        self._entries[key] = verdict
        self._sweep(now)  # (expired entries go first)
        while len(self._entries) > self._max or (
                self._pairs > self._max_pairs and len(self._entries) > 1):
            self._hold(self._entries.popitem(last=False)[1].view, -1)

    def _hold(self, view: RefView | None, change: int) -> None:
        """One entry more (``change`` 1) or less (-1) holds ``view``."""
        if view is None:
            return
        held = self._held.setdefault(id(view), [len(view.pairs), 0])
        if held[1] == 0:
            self._pairs += held[0]
        held[1] += change
        if held[1] == 0:
            self._pairs -= held[0]
            del self._held[id(view)]

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
            self._hold(oldest.view, -1)

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

    def view(self, tenant: str, repo: str, age: float) -> RefView | None:
        """The refs upstream last listed for (tenant, repo), if the latest answer is a
        grant and those refs are younger than ``age`` seconds."""
        v = self._entries.get((tenant, repo))
        if v is None or not v.granted or v.view is None or self._clock() - v.view_at >= age:
            return None
        return v.view

    def view_age(self, tenant: str, repo: str) -> tuple[RefView, float] | None:
        """The refs upstream last listed for (tenant, repo) and their age in seconds, if
        the latest answer is a grant (of any age: callers bound it)."""
        v = self._entries.get((tenant, repo))
        if v is None or not v.granted or v.view is None:
            return None
        return v.view, max(0.0, self._clock() - v.view_at)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
        self._held.clear()
        self._pairs = 0
