"""Credentials taken from a client's request, and the tenant id derived from them.

Fail-safe rule: every request header that is not one of git's known
non-credential headers is part of the credential. A cookie, a GitLab
``Private-Token`` or any header set with ``http.extraHeader`` therefore
separates tenants exactly like ``Authorization`` does; two requests share a
tenant only if they would look the same to the upstream.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

# Headers git (and mitmproxy in front of it) sends that carry no identity.
NON_CREDENTIAL_HEADERS = frozenset(
    {
        "host", "user-agent", "accept", "accept-encoding", "accept-language", "pragma",
        "cache-control", "git-protocol", "content-type", "content-length",
        "content-encoding", "transfer-encoding", "expect", "connection", "keep-alive",
        "te", "proxy-connection", "proxy-authorization", "via", "x-forwarded-for",
    }
)
ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Credential:
    """The identity-bearing headers of one request, in a stable order.

    ``str``/``repr`` never show the values. ``headers`` is for exactly two
    uses: the tenant HMAC and the ``http.extraHeader`` env of a fill.
    """

    headers: tuple[tuple[str, str], ...] = ()

    @property
    def anonymous(self) -> bool:
        """True when the request carried no credential at all."""
        return not self.headers

    def __repr__(self) -> str:
        return "Credential(anonymous)" if self.anonymous else "Credential([secure])"

    __str__ = __repr__


def credential_from_headers(fields: Iterable[tuple[str, str]]) -> Credential:
    """Build a Credential from (name, value) header pairs as received."""
    picked = sorted(
        (name.lower(), value)
        for name, value in fields
        if name.lower() not in NON_CREDENTIAL_HEADERS
    )
    return Credential(tuple(picked))


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
        # Length-prefixed, so no choice of names and values can collide.
        canonical = b"".join(
            b"%d:%s%d:%s" % (len(n), n, len(v), v)
            for n, v in (
                (name.encode("utf-8", "surrogatepass"), value.encode("utf-8", "surrogatepass"))
                for name, value in credential.headers
            )
        )
        return hmac.new(self._secret, canonical, hashlib.sha256).hexdigest()


def short(tenant: str) -> str:
    """The prefix of a tenant id that logs show."""
    return tenant if tenant == ANONYMOUS else tenant[:12]
