"""restrict_v2_fetch_features: hide v2 fetch features only the upstream can serve."""

from __future__ import annotations

import pytest
from goblet.protocol import pktline, refs
from goblet.protocol.errors import ProtocolError


def advert(*caps: str) -> bytes:
    return (pktline.encode_line("# service=git-upload-pack") + pktline.FLUSH
            + pktline.encode_line("version 2")
            + b"".join(pktline.encode_line(c) for c in caps) + pktline.FLUSH)


@pytest.mark.parametrize(
    ("fetch", "expected"),
    [
        ("fetch=shallow wait-for-done filter ref-in-want sideband-all packfile-uris",
         "fetch=shallow wait-for-done filter"),
        ("fetch=ref-in-want", "fetch"),
        ("fetch=shallow sideband-all", "fetch=shallow"),
    ],
)
def test_unservable_features_are_removed(fetch: str, expected: str) -> None:
    body = advert("agent=git/2.45", "ls-refs=unborn", fetch, "server-option",
                  "object-format=sha1")
    out = refs.restrict_v2_fetch_features(body)
    assert out == advert("agent=git/2.45", "ls-refs=unborn", expected, "server-option",
                         "object-format=sha1")
    assert refs.parse_info_refs(out).capabilities[2] == expected


@pytest.mark.parametrize("fetch", ["fetch=shallow wait-for-done filter", "fetch", "fetch=shallow"])
def test_answers_without_such_features_are_left_alone(fetch: str) -> None:
    assert refs.restrict_v2_fetch_features(advert("agent=x", fetch)) is None


def test_malformed_answers_raise_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        refs.restrict_v2_fetch_features(b"00")
