"""What goblet changes in ref answers: v2 fetch features only the upstream can serve are
hidden; an offline answer that hides HEAD does not name its target."""

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


# ------------------------------------------------------- HEAD's symref out of offline answers

def _adv(version_line: bool = False) -> bytes:
    caps = b"multi_ack symref=HEAD:refs/heads/main thin-pack agent=git/2.39.5\n"
    return (pktline.encode_line("# service=git-upload-pack") + pktline.FLUSH
            + (pktline.encode_line("version 1") if version_line else b"")
            + pktline.encode_data(b"a" * 40 + b" refs/heads/dev\0" + caps)
            + pktline.encode_line("b" * 40 + " refs/tags/v1") + pktline.FLUSH)


@pytest.mark.parametrize("version_line", [False, True])
@pytest.mark.parametrize("step", [None, 1, 5])
def test_head_symref_dropper_removes_only_the_symref(version_line: bool,
                                                     step: int | None) -> None:
    adv = _adv(version_line)
    d = refs.HeadSymrefDropper()
    pieces = [adv] if step is None else [adv[i:i + step] for i in range(0, len(adv), step)]
    out = b"".join(d.feed(p) for p in pieces) + d.close()
    parsed = refs.parse_info_refs(out)
    assert "HEAD" not in parsed.symrefs and b"refs/heads/main" not in out
    assert parsed.refs == {"refs/heads/dev": "a" * 40, "refs/tags/v1": "b" * 40}
    assert b"multi_ack thin-pack agent=git/2.39.5\n" in out
    d = refs.HeadSymrefDropper()
    assert d.feed(out + b"trailing") + d.close() == out + b"trailing"
    assert pktline.decode(out)[-1].kind is pktline.PktKind.FLUSH


def test_head_symref_dropper_passes_what_is_not_an_advertisement() -> None:
    d = refs.HeadSymrefDropper()
    assert d.feed(b"PACK....") + d.close() == b"PACK...."
    d = refs.HeadSymrefDropper()
    assert d.feed(b"00") + d.close() == b"00"
