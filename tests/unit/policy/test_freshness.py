"""The refs-TTL rule: when a ref request may be answered from the cache."""

from __future__ import annotations

from dataclasses import replace

import pytest
from goblet.auth.verdicts import RefView
from goblet.policy.freshness import CacheRefs, FromCache, RefsFacts, Strict, decide, reproduce
from hypothesis import given, settings
from hypothesis import strategies as st

A, B, C, T = "a" * 40, "b" * 40, "c" * 40, "d" * 40
CLONE = ("HEAD", "refs/heads/", "refs/tags/")
VIEW = RefView.of({"HEAD": A, "refs/heads/main": A, "refs/heads/dev": B, "refs/tags/v1": T},
                  {"refs/tags/v1": C}, complete=True)
CACHE = CacheRefs({"refs/heads/main": A, "refs/heads/dev": B, "refs/tags/v1": T},
                  "refs/heads/main", "refs/heads/main")
FRESH = RefsFacts(refs_ttl=60, max_age=None, granted=True, cached=True, view=VIEW, view_age=5)


def test_a_fresh_grant_with_young_reproducible_refs_is_answered_from_the_cache() -> None:
    assert decide(FRESH, prefixes=CLONE, cache=CACHE) == FromCache((), 5)
    assert decide(FRESH, prefixes=None, cache=CACHE) == FromCache((), 5)  # capabilities


@pytest.mark.parametrize(("change", "why"), [
    ({"refs_ttl": 0}, "goblet_refs_ttl is 0"),
    ({"max_age": 0}, "goblet-max-age=0"),
    ({"granted": False}, "no fresh upstream grant"),
    ({"cached": False}, "not cached"),
    ({"view": None}, "never listed refs"),
    ({"view_age": 60}, "limit 60"),
    ({"max_age": 5}, "limit 5"),  # a client may ask for fresher refs
    ({"stale_age": 5}, "push webhook"),
    ({"stale_age": 1}, "push webhook"),
])
def test_strict(change: dict[str, object], why: str) -> None:
    got = decide(replace(FRESH, **change), prefixes=CLONE, cache=CACHE)  # type: ignore[arg-type]
    assert isinstance(got, Strict) and why in got.reason
    assert isinstance(decide(replace(FRESH, **change), prefixes=None,  # type: ignore[arg-type]
                             cache=CACHE), Strict)


def test_a_client_cannot_ask_for_older_refs_than_the_operator_allows() -> None:
    old = replace(FRESH, view_age=90, max_age=3600)
    assert isinstance(decide(old, prefixes=CLONE, cache=CACHE), Strict)
    assert decide(replace(FRESH, max_age=3600), prefixes=CLONE, cache=CACHE) == FromCache((), 5)


def test_a_webhook_before_the_refs_were_listed_changes_nothing() -> None:
    assert decide(replace(FRESH, stale_age=6), prefixes=CLONE, cache=CACHE) == FromCache((), 5)


@pytest.mark.parametrize("prefixes", [(), ("refs/",), ("HEAD", "refs/pull/1/head"),
                                      ("main", "refs/heads/main"), ("refs/notes/",)])
def test_refs_the_cache_does_not_mirror_go_upstream(prefixes: tuple[str, ...]) -> None:
    got = decide(FRESH, prefixes=prefixes, cache=CACHE)
    assert isinstance(got, Strict) and "does not mirror" in got.reason


def test_cache_refs_the_credential_was_not_shown_are_hidden() -> None:
    cache = replace(CACHE, refs={**CACHE.refs, "refs/heads/secret": C, "refs/tags/x": C})
    assert reproduce(VIEW, cache, CLONE) == ("refs/heads/secret", "refs/tags/x")


@pytest.mark.parametrize("cache", [
    replace(CACHE, refs={**CACHE.refs, "refs/heads/main": B}),  # moved since
    replace(CACHE, refs={"refs/heads/main": A, "refs/tags/v1": T}),  # a branch missing
    replace(CACHE, head="refs/heads/dev"),  # HEAD elsewhere
    replace(CACHE, upstream_head="refs/heads/dev"),  # upstream's HEAD moved
    replace(CACHE, upstream_head=None),  # upstream's HEAD unknown
])
def test_a_cache_that_differs_from_what_upstream_listed_goes_upstream(cache: CacheRefs) -> None:
    got = decide(FRESH, prefixes=CLONE, cache=cache)
    assert isinstance(got, Strict) and "differ" in got.reason


def test_only_asked_refs_must_match() -> None:
    moved_tag = replace(CACHE, refs={**CACHE.refs, "refs/tags/v1": B})
    assert decide(FRESH, prefixes=("refs/heads/",), cache=moved_tag) == FromCache((), 5)
    assert isinstance(decide(FRESH, prefixes=CLONE, cache=moved_tag), Strict)


def test_an_incomplete_view_or_one_without_head_proves_nothing() -> None:
    partial = replace(VIEW, complete=False)
    assert isinstance(decide(replace(FRESH, view=partial), prefixes=CLONE, cache=CACHE), Strict)
    headless = RefView.of({"refs/heads/main": A, "refs/heads/dev": B, "refs/tags/v1": T}, {},
                          complete=True)
    assert isinstance(decide(replace(FRESH, view=headless), prefixes=CLONE, cache=CACHE), Strict)
    got = decide(replace(FRESH, view=headless), prefixes=("refs/heads/", "refs/tags/"),
                 cache=CACHE)
    assert got == FromCache(("HEAD",), 5)  # HEAD never shown: hidden


NAMES = ("refs/heads/main", "refs/heads/dev", "refs/heads/secret", "refs/tags/v1",
         "refs/pull/1/head")
OIDS = (A, B, C)


@settings(max_examples=500, deadline=None)
@given(view_refs=st.dictionaries(st.sampled_from(("HEAD", *NAMES)), st.sampled_from(OIDS)),
       cache_refs=st.dictionaries(st.sampled_from(NAMES[:4]), st.sampled_from(OIDS)),
       head=st.sampled_from((None, *NAMES[:2])), upstream_head=st.sampled_from((None, *NAMES[:2])),
       prefixes=st.lists(st.sampled_from(("HEAD", "refs/heads/", "refs/tags/",
                                          "refs/heads/main")), min_size=1, max_size=3))
def test_a_cache_answer_never_shows_a_ref_or_id_upstream_did_not(
        view_refs: dict[str, str], cache_refs: dict[str, str], head: str | None,
        upstream_head: str | None, prefixes: list[str]) -> None:
    """Whatever the view and the cache hold: if the rule answers from the cache, every ref
    the answer shows (cache refs not hidden, under the prefixes asked) is one the upstream
    listed with that very id, and every ref the upstream listed there is shown."""
    view = RefView.of(view_refs, {}, complete=True)
    cache = CacheRefs(cache_refs, head, upstream_head)
    got = decide(replace(FRESH, view=view), prefixes=tuple(prefixes), cache=cache)
    if not isinstance(got, FromCache):
        return
    asked = tuple(prefixes)
    shown = {n: o for n, o in cache_refs.items()
             if n not in got.hidden and any(n.startswith(p) for p in asked)}
    if "HEAD" not in got.hidden and "HEAD" in asked and head is not None and head in cache_refs:
        shown["HEAD"] = cache_refs[head]
    listed = {n: o for n, o in view_refs.items() if any(n.startswith(p) for p in asked)}
    assert shown == listed
