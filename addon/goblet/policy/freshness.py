"""May a ref request be answered from the cache? The refs-TTL rule, without IO.

In order; the first rule that applies wins, and every "no" means the request
goes upstream exactly as without goblet:

1. ``goblet_refs_ttl`` is 0 (the default): no — strict freshness.
2. The client asked ``goblet-max-age=0``: no.
3. The upstream has not granted *this credential* this repo within
   ``goblet_verdict_ttl``: no. Access is never decided by the cache.
4. The repo is not cached (or not cacheable): no.
5. The upstream never listed refs to this credential: no.
6. Those refs are as old as ``min(goblet_refs_ttl, goblet-max-age)`` or
   older: no. (A client can only ask for fresher refs, never staler.)
7. A push webhook marked the repo stale after they were listed: no.
8. A v2 capability advertisement (``info/refs``, no refs in it): yes.
9. ``ls-refs`` must ask only for refs the cache mirrors (``HEAD``,
   ``refs/heads/…``, ``refs/tags/…``; no prefix at all means every ref: no),
   and the cache must show exactly the refs the upstream last listed to this
   credential under those prefixes (same names, same ids, HEAD pointing at
   the upstream's HEAD branch). Then yes, with every other cache ref hidden.

A "yes" therefore never shows a credential a ref or an id the upstream did
not show it within the TTL: the answer is what the upstream said, aged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from goblet.auth.verdicts import RefView

MIRRORED = ("refs/heads/", "refs/tags/")


@dataclass(frozen=True, slots=True)
class FromCache:
    """Answer from the cache, hiding ``hidden`` refs; the refs are ``age`` seconds old."""

    hidden: tuple[str, ...]
    age: float


@dataclass(frozen=True, slots=True)
class Strict:
    """Ask the upstream; ``reason`` is logged."""

    reason: str


RefsVerdict = FromCache | Strict


@dataclass(frozen=True, slots=True)
class RefsFacts:
    """What the rule needs to know about one ref request.

    ``view``/``view_age``: the refs the upstream last listed to this credential
    and their age; ``stale_age``: seconds since a webhook marked the repo
    stale (None: never).
    """

    refs_ttl: float
    max_age: int | None
    granted: bool
    cached: bool
    view: RefView | None
    view_age: float
    stale_age: float | None = None


@dataclass(frozen=True, slots=True)
class CacheRefs:
    """The cache's branches and tags (name → id), its HEAD target, and the upstream's
    HEAD target as last seen (None: unknown)."""

    refs: Mapping[str, str]
    head: str | None
    upstream_head: str | None


Reproducer = Callable[[RefView, CacheRefs, tuple[str, ...]], tuple[str, ...] | None]


def decide(facts: RefsFacts, *, prefixes: tuple[str, ...] | None,
           cache: CacheRefs | None, hide: Reproducer | None = None) -> RefsVerdict:
    """The rule above. ``prefixes``: the ls-refs ``ref-prefix`` values, or None for a v2
    capability advertisement. ``hide`` computes what ``reproduce`` does (a caller may
    remember its results)."""
    if facts.refs_ttl <= 0:
        return Strict("goblet_refs_ttl is 0")
    if facts.max_age == 0:
        return Strict("the client asked for goblet-max-age=0")
    if not facts.granted:
        return Strict("no fresh upstream grant for this credential")
    if not facts.cached or cache is None:
        return Strict("repo not cached")
    if facts.view is None:
        return Strict("the upstream never listed refs to this credential")
    limit = facts.refs_ttl if facts.max_age is None else min(facts.refs_ttl, facts.max_age)
    if facts.view_age >= limit:
        return Strict(f"refs {facts.view_age:.0f} s old, limit {limit:.0f} s")
    if facts.stale_age is not None and facts.stale_age <= facts.view_age:
        return Strict("marked stale by a push webhook")
    if prefixes is None:
        return FromCache((), facts.view_age)
    if not prefixes or not all(p == "HEAD" or p.startswith(MIRRORED) for p in prefixes):
        return Strict("asks for refs the cache does not mirror")
    hidden = (hide or reproduce)(facts.view, cache, prefixes)
    if hidden is None:
        return Strict("the cache's refs differ from those the upstream listed")
    return FromCache(hidden, facts.view_age)


def _asked(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name.startswith(p) for p in prefixes)


def reproduce(view: RefView, cache: CacheRefs, prefixes: tuple[str, ...]) -> tuple[str, ...] | None:
    """The cache refs to hide so that the cache lists exactly ``view``'s refs under
    ``prefixes`` (all within HEAD, branches and tags); None if it cannot."""
    if not view.complete:
        return None  # that answer left some branches or tags out: unknown
    names = view.names
    if "HEAD" in prefixes and "HEAD" not in names:
        return None  # asked for HEAD, but the upstream's answer did not say
    for name, oid in view.pairs:
        if name.endswith("^{}") or not _asked(name, prefixes):
            continue
        if name == "HEAD":
            if (cache.head is None or cache.head != cache.upstream_head
                    or cache.refs.get(cache.head) != oid):
                return None
        elif not name.startswith(MIRRORED) or cache.refs.get(name) != oid:
            return None
    hidden = set(cache.refs) - names
    if "HEAD" not in names or (cache.head is not None and cache.head in hidden):
        hidden.add("HEAD")
    if any(_asked(name, prefixes) for name in names & hidden):
        return None  # e.g. HEAD listed, its branch not: upload-pack cannot show just that
    return tuple(sorted(hidden))
