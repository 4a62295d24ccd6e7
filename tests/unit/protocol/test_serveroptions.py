"""goblet's own server options: goblet-max-age, and everyone else's left alone."""

from __future__ import annotations

import pytest
from goblet.protocol import serveroptions
from goblet.protocol.errors import ProtocolError
from goblet.protocol.serveroptions import ClientOptions, parse
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize(("options", "expected"), [
    ((), ClientOptions()),
    (("goblet-max-age=0",), ClientOptions(0)),
    (("goblet-max-age=30",), ClientOptions(30)),
    (("goblet-max-age=30", "goblet-max-age=5", "goblet-max-age=9"), ClientOptions(5)),
    (("ci-job=42", "goblet-max-age=7", "x"), ClientOptions(7, ("ci-job=42", "x"))),
    (("goblet-future-thing=1",), ClientOptions()),  # unknown goblet options: ignored
    (("Goblet-max-age=0",), ClientOptions(None, ("Goblet-max-age=0",))),  # not ours
])
def test_parse(options: tuple[str, ...], expected: ClientOptions) -> None:
    assert parse(options) == expected


@pytest.mark.parametrize("bad", ["goblet-max-age", "goblet-max-age=", "goblet-max-age=-1",
                                 "goblet-max-age=1.5", "goblet-max-age=soon",
                                 "goblet-max-age=1234567890", "goblet-max-age= 1"])
def test_a_bad_max_age_is_the_clients_fault(bad: str) -> None:
    with pytest.raises(ProtocolError, match="goblet-max-age takes whole seconds") as e:
        parse([bad])
    assert e.value.culprit == "client"


@given(st.lists(st.text(max_size=40), max_size=8))
def test_any_options_parse_or_raise_our_error(options: list[str]) -> None:
    try:
        got = parse(options)
    except ProtocolError:
        assert any(o.startswith(serveroptions.MAX_AGE) for o in options)
        return
    assert got.max_age is None or got.max_age >= 0
    assert all(not o.startswith(serveroptions.PREFIX) for o in got.foreign)
