"""Credentials never print their values; tenant ids separate callers fail-safe."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
from goblet.auth.credentials import (
    ANONYMOUS,
    NON_CREDENTIAL_HEADERS,
    Credential,
    TenantKeyer,
    credential_from_headers,
    short,
)

if TYPE_CHECKING:
    from tests.unit.conftest import GitWire

SENTINEL = "s3ntinel-T0KEN-4f9a1c"
SECRET = b"k" * 32
Headers = list[tuple[str, str]]

# What git 2.39 sends on an anonymous POST (see also the real recording below).
GIT_HEADERS: Headers = [
    ("Host", "github.com"),
    ("User-Agent", "git/2.39.5"),
    ("Accept-Encoding", "deflate, gzip, br, zstd"),
    ("Content-Type", "application/x-git-upload-pack-request"),
    ("Accept", "application/x-git-upload-pack-result"),
    ("Git-Protocol", "version=2"),
    ("Content-Length", "267"),
]


def tenant(headers: Headers, secret: bytes = SECRET) -> str:
    return TenantKeyer(secret).tenant_id(credential_from_headers(headers))


# ---------------------------------------------------------------------------- secrecy

SECRET_CREDENTIALS = [
    pytest.param([("Authorization", f"Bearer {SENTINEL}")], id="authorization"),
    pytest.param([("Cookie", f"session={SENTINEL}")], id="cookie"),
    pytest.param([("Private-Token", SENTINEL)], id="gitlab-private-token"),
    pytest.param([("X-Custom", SENTINEL), ("Authorization", "Basic eDp5")], id="two-headers"),
    pytest.param([(SENTINEL, "value")], id="secret-in-header-name"),
]


@pytest.mark.parametrize("headers", SECRET_CREDENTIALS)
def test_credential_never_renders_its_headers(headers: Headers) -> None:
    cred = credential_from_headers(headers)
    renderings = [
        repr(cred), str(cred), f"{cred}", f"{cred!r}", f"{cred!s}", format(cred),
        "%r" % (cred,),  # noqa: UP031 - the %-operator is what is under test
        "%s" % (cred,),  # noqa: UP031
        "{!r}".format(cred),  # noqa: UP032
        repr([cred]), repr({"c": cred}), repr((cred,)),
    ]
    for text in renderings:
        assert SENTINEL not in text
        assert "value" not in text
    assert repr(cred) == "Credential([secure])"


@pytest.mark.parametrize("headers", SECRET_CREDENTIALS)
def test_credential_never_reaches_a_log_line(headers: Headers,
                                             caplog: pytest.LogCaptureFixture) -> None:
    cred = credential_from_headers(headers)
    log = logging.getLogger("goblet.test")
    with caplog.at_level(logging.DEBUG):
        log.info("fill with %s", cred)
        log.info("fill with %r", cred)
        log.info("fill: %(c)s", {"c": cred})
    assert caplog.records
    assert SENTINEL not in caplog.text


def test_anonymous_credential_says_so() -> None:
    assert repr(Credential()) == "Credential(anonymous)"
    assert str(credential_from_headers(GIT_HEADERS)) == "Credential(anonymous)"


def test_tenant_id_does_not_contain_the_token() -> None:
    tid = tenant([("Authorization", f"Bearer {SENTINEL}")])
    assert SENTINEL not in tid
    assert len(tid) == 64
    assert int(tid, 16) >= 0


# ---------------------------------------------------------------------------- which headers count


@pytest.mark.parametrize(
    ("headers", "anonymous"),
    [
        pytest.param([], True, id="no-headers"),
        pytest.param(GIT_HEADERS, True, id="git-standard-headers"),
        pytest.param([("Proxy-Authorization", "Basic cHJveHk6cHc="), ("Via", "1.1 x"),
                      ("X-Forwarded-For", "10.0.0.1"), ("Connection", "keep-alive"),
                      ("Keep-Alive", "5"), ("Proxy-Connection", "keep-alive"), ("TE", "trailers"),
                      ("Expect", "100-continue"), ("Transfer-Encoding", "chunked"),
                      ("Content-Encoding", "gzip"), ("Pragma", "no-cache"),
                      ("Cache-Control", "no-cache"), ("Accept-Language", "en")],
                     True, id="hop-by-hop-and-proxy-headers"),
        pytest.param([("HOST", "x"), ("user-agent", "git/2.39.5"), ("GIT-PROTOCOL", "version=2")],
                     True, id="standard-headers-any-case"),
        pytest.param([("Authorization", "Bearer x")], False, id="authorization"),
        pytest.param([("Cookie", "a=b")], False, id="cookie-only"),
        pytest.param([("Private-Token", "x")], False, id="private-token"),
        pytest.param([("X-Anything", "1")], False, id="custom-header-only"),
        pytest.param([("Authorization", "")], False, id="empty-authorization"),
        pytest.param([("X-Forwarded-Host", "evil")], False, id="unknown-x-forwarded-variant"),
        pytest.param([("User-Agents", "x")], False, id="near-miss-of-a-standard-name"),
    ],
)
def test_anonymous_only_without_any_unknown_header(headers: Headers, anonymous: bool) -> None:
    cred = credential_from_headers(headers)
    assert cred.anonymous is anonymous
    assert (tenant(headers) == ANONYMOUS) is anonymous


def test_credential_keeps_only_identity_headers_lower_cased_and_sorted() -> None:
    cred = credential_from_headers(
        [*GIT_HEADERS, ("X-Token", "2"), ("Authorization", "Bearer A"), ("Cookie", "c=1")]
    )
    assert cred.headers == (("authorization", "Bearer A"), ("cookie", "c=1"), ("x-token", "2"))


def test_every_non_credential_header_is_lower_case() -> None:
    assert all(h == h.lower() for h in NON_CREDENTIAL_HEADERS)


# ---------------------------------------------------------------------------- tenant ids


def test_different_tokens_give_different_tenants() -> None:
    ids = {tenant([("Authorization", f"Bearer token-{i}")]) for i in range(50)}
    assert len(ids) == 50


def test_same_token_gives_the_same_tenant_across_keyers() -> None:
    headers = [("Authorization", "Bearer abc")]
    assert tenant(headers) == tenant(list(headers)) == TenantKeyer(SECRET).tenant_id(
        credential_from_headers(headers))


def test_tenant_depends_on_the_secret() -> None:
    headers = [("Authorization", "Bearer abc")]
    assert tenant(headers, b"a" * 32) != tenant(headers, b"b" * 32)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        pytest.param([("Authorization", "Bearer t")], [("authorization", "Bearer t")],
                     id="name-case"),
        pytest.param([("AUTHORIZATION", "Bearer t")], [("Authorization", "Bearer t")],
                     id="name-upper-case"),
        pytest.param([("Authorization", "Bearer t"), ("Cookie", "a=1")],
                     [("Cookie", "a=1"), ("Authorization", "Bearer t")], id="header-order"),
        pytest.param([("Cookie", "a=1"), ("Cookie", "b=2")],
                     [("Cookie", "b=2"), ("Cookie", "a=1")], id="repeated-header-order"),
        pytest.param([("Authorization", "Bearer t")],
                     [*GIT_HEADERS, ("Authorization", "Bearer t")], id="git-headers-added"),
        pytest.param([("Authorization", "Bearer t"), ("User-Agent", "git/2.39.5")],
                     [("Authorization", "Bearer t"), ("User-Agent", "git/2.45.0")],
                     id="user-agent-changed"),
        pytest.param([("Authorization", "Bearer t"), ("Git-Protocol", "version=2")],
                     [("Authorization", "Bearer t")], id="git-protocol-dropped"),
        pytest.param([("Authorization", "Bearer t"), ("Content-Type", "a")],
                     [("Authorization", "Bearer t"), ("Content-Type", "b"), ("Accept", "c")],
                     id="content-type-and-accept"),
    ],
)
def test_same_tenant(left: Headers, right: Headers) -> None:
    assert tenant(left) == tenant(right)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        pytest.param([("Authorization", "Bearer t")], [("Authorization", "Bearer T")],
                     id="value-case-matters"),
        pytest.param([("Authorization", "Bearer t")], [("Authorization", "Bearer t ")],
                     id="value-whitespace-matters"),
        pytest.param([("Authorization", "Bearer t")], [("X-Authorization", "Bearer t")],
                     id="name-matters"),
        pytest.param([("Authorization", "Bearer t")],
                     [("Authorization", "Bearer t"), ("Cookie", "a=1")], id="extra-cookie"),
        pytest.param([("Cookie", "a=1")], [("Cookie", "a=1"), ("Cookie", "a=1")],
                     id="repeated-header"),
        pytest.param([("Cookie", "a=1")], [("Cookie", "a=2")], id="cookie-value"),
        # Regression: "name:value" lines joined by LF let these pairs share one id.
        pytest.param([("a", "b:c")], [("a:b", "c")], id="colon-boundary"),
        pytest.param([("a", "1\nb:2")], [("a", "1"), ("b", "2")], id="newline-boundary"),
        pytest.param([("Private-Token", "t")], [("Authorization", "t")],
                     id="same-value-other-name"),
    ],
)
def test_different_tenant(left: Headers, right: Headers) -> None:
    assert tenant(left) != tenant(right)


@pytest.mark.parametrize("length", [0, 15])
def test_keyer_refuses_a_short_secret(length: int) -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        TenantKeyer(b"x" * length)


def test_keyer_accepts_a_16_byte_secret() -> None:
    assert len(TenantKeyer(b"x" * 16).tenant_id(credential_from_headers([("A", "b")]))) == 64


def test_tenant_id_survives_non_utf8_header_values() -> None:
    # mitmproxy decodes header values with surrogateescape.
    raw = b"Bearer \xff\xfe".decode("utf-8", "surrogateescape")
    assert tenant([("Authorization", raw)]) != tenant([("Authorization", "Bearer ")])


# Regression: names were encoded as latin-1, so these raised UnicodeEncodeError.
@pytest.mark.parametrize("name", ["Priv\u0101te-Token", "X-\udce9"],
                         ids=["non-latin1", "surrogate"])
def test_tenant_id_for_any_header_name(name: str) -> None:
    assert len(tenant([(name, "v")])) == 64


@pytest.mark.parametrize(
    ("tid", "shown"),
    [
        (ANONYMOUS, "anonymous"),
        ("0123456789abcdef" * 4, "0123456789ab"),
        ("abc", "abc"),
    ],
)
def test_short(tid: str, shown: str) -> None:
    assert short(tid) == shown


# ---------------------------------------------------------------------------- real git


def test_real_git_request_headers_are_anonymous(git_wire: GitWire) -> None:
    """Every header git 2.39 sends without a credential is known to carry no identity."""
    for exchange in git_wire.sessions["v2-clone"] + git_wire.sessions["v0-clone"]:
        cred = credential_from_headers(exchange.headers)
        assert cred.anonymous, (exchange.method, exchange.headers)


def test_real_git_extra_header_is_the_whole_credential(git_wire: GitWire) -> None:
    tenants = set()
    for exchange in git_wire.sessions["v2-auth"]:
        cred = credential_from_headers(exchange.headers)
        assert cred.headers == (("authorization", "Bearer wire-token"),)
        tenants.add(TenantKeyer(SECRET).tenant_id(cred))
    # The GET and the POST of one clone are one tenant despite different Accept/Content-Type.
    assert len(tenants) == 1
    assert tenants != {ANONYMOUS}


@pytest.mark.parametrize("header", [
    ("Range", "bytes=2000-"), ("If-Range", '"e"'), ("If-Match", '"e"'),
    ("If-None-Match", '"e"'), ("If-Modified-Since", "Wed, 21 Oct 2015 07:28:00 GMT"),
    ("If-Unmodified-Since", "Wed, 21 Oct 2015 07:28:00 GMT"),
])
def test_range_and_conditional_headers_are_no_credential(header: tuple[str, str]) -> None:
    """git-lfs resumes a cut download with Range: the same credential, the same tenant."""
    base = [*GIT_HEADERS, ("Authorization", "Bearer A")]
    assert credential_from_headers([*base, header]) == credential_from_headers(base)
    assert tenant([*base, header]) == tenant(base)
