"""A batch answer without Content-Length is held to be rewritten, within a cap; the
client's credential goes to the batch request's origin only."""

from __future__ import annotations

from goblet.lfs.serve import HeldAnswer
from goblet.policy.lfs import same_origin_credential


def test_the_whole_answer_is_held_and_rewritten_at_its_end() -> None:
    seen: list[bytes] = []
    held = HeldAnswer(100, lambda body: seen.append(body) or b"NEW")
    assert held(b"abc") == [] and held(b"def") == []
    assert held(b"") == [b"NEW"] and seen == [b"abcdef"]


def test_an_answer_not_rewritten_is_passed_on_whole() -> None:
    held = HeldAnswer(100, lambda body: None)
    assert held(b"abc") == [] and held(b"") == [b"abc"]


def test_past_the_cap_everything_passes_unchanged() -> None:
    held = HeldAnswer(5, lambda body: b"NEW")
    assert held(b"abc") == []
    assert held(b"def") == [b"abcdef"]  # over the cap: what was held, then the rest
    assert held(b"ghi") == [b"ghi"] and held(b"") == []


def test_an_empty_answer_sends_no_empty_piece() -> None:
    assert HeldAnswer(5, lambda body: None)(b"") == []


def test_the_client_s_credential_goes_to_the_batch_origin_only() -> None:
    mine = (("authorization", "Bearer mine"),)
    batch_origin = ("https", "forge.example", 443)
    assert same_origin_credential((), mine, batch_origin, batch_origin) == mine
    for href in (("https", "media.example", 443), ("https", "forge.example", 8443),
                 ("http", "forge.example", 443)):
        assert same_origin_credential((), mine, href, batch_origin) == ()
    theirs = (("Authorization", "RemoteAuth x"),)
    assert same_origin_credential(theirs, mine, batch_origin, batch_origin) == ()
