"""A batch answer without Content-Length is held to be rewritten, within a cap."""

from __future__ import annotations

from goblet.lfs.flow import HeldAnswer


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
