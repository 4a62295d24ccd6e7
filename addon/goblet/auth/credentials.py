"""Credentials taken from a client's request, and the tenant id derived from them.

Fail-safe rule: every request header that is not one of git's known
non-credential headers is part of the credential. A cookie, a GitLab
``Private-Token`` or any header set with ``http.extraHeader`` therefore
separates tenants exactly like ``Authorization`` does; two requests share a
tenant only if they would look the same to the upstream.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

# Headers git (and mitmproxy in front of it) sends that carry no identity; and the
# range and conditional headers of HTTP (git-lfs resumes a cut download with ``Range``),
# which say which part or version of an answer is wanted, never who asks.
NON_CREDENTIAL_HEADERS = frozenset(
    {
        "host", "user-agent", "accept", "accept-encoding", "accept-language", "pragma",
        "cache-control", "git-protocol", "content-type", "content-length",
        "content-encoding", "transfer-encoding", "expect", "connection", "keep-alive",
        "te", "proxy-connection", "proxy-authorization", "via", "x-forwarded-for",
        "range", "if-range", "if-match", "if-none-match", "if-modified-since",
        "if-unmodified-since",
    }
)
ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Credential:
    """The identity of one request: its upstream headers and its proxy login.

    ``headers`` are the identity-bearing request headers in a stable order;
    they are for exactly two uses: the tenant HMAC and the
    ``http.extraHeader`` env of a fill. ``proxy`` is the (user, password)
    mitmproxy's ``proxyauth`` accepted, if any: part of the tenant identity,
    never sent upstream. ``str``/``repr`` never show any value.
    """

    headers: tuple[tuple[str, str], ...] = ()
    proxy: tuple[str, str] | None = None

    @property
    def anonymous(self) -> bool:
        """True when the request carried no credential at all."""
        return not self.headers and self.proxy is None

    @property
    def upstream_anonymous(self) -> bool:
        """True when nothing would identify the request to the upstream."""
        return not self.headers

    @property
    def basic_user(self) -> str | None:
        """The user name of a Basic ``Authorization`` header, if there is one."""
        for name, value in self.headers:
            scheme, _, token = value.partition(" ")
            if name == "authorization" and scheme.lower() == "basic":
                try:
                    decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
                except (ValueError, UnicodeDecodeError):
                    return None
                user = decoded.partition(":")[0]
                return user or None
        return None

    def __repr__(self) -> str:
        return "Credential(anonymous)" if self.anonymous else "Credential([secure])"

    __str__ = __repr__


def credential_from_headers(
    fields: Iterable[tuple[str, str]], proxy: tuple[str, str] | None = None
) -> Credential:
    """Build a Credential from (name, value) header pairs as received and a proxy login."""
    picked = sorted(
        (name.lower(), value)
        for name, value in fields
        if name.lower() not in NON_CREDENTIAL_HEADERS
    )
    return Credential(tuple(picked), proxy)


class TenantKeyer:
    """Turns credentials into stable, non-reversible tenant ids.

    The id is HMAC-SHA256(secret, canonical credential) in hex; anonymous
    requests get ``"anonymous"``. Without the secret an id cannot be linked to
    a credential, so ids may appear in logs (shortened) and on disk.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("tenant secret must be at least 16 bytes")
        self._secret = secret

    def tenant_id(self, credential: Credential) -> str:
        """The tenant id for ``credential``."""
        if credential.anonymous:
            return ANONYMOUS
        # Length-prefixed, so no choice of names and values can collide; the
        # proxy login is a pair under a name no HTTP header can have.
        pairs = list(credential.headers)
        if credential.proxy is not None:
            pairs.append((" proxy", f"{len(credential.proxy[0])}:{credential.proxy[0]}"
                                    f"{credential.proxy[1]}"))
        canonical = b"".join(
            b"%d:%s%d:%s" % (len(n), n, len(v), v)
            for n, v in (
                (name.encode("utf-8", "surrogatepass"), value.encode("utf-8", "surrogatepass"))
                for name, value in pairs
            )
        )
        return hmac.new(self._secret, canonical, hashlib.sha256).hexdigest()


def short(tenant: str) -> str:
    """The prefix of a tenant id that logs show."""
    return tenant if tenant == ANONYMOUS else tenant[:12]
