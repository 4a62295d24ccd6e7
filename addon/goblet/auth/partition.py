"""Which cache partition a request reads and fills, by isolation mode.

- ``shared`` and ``public``: the one shared partition (``""``).
- ``tenant``: one partition per tenant id (every identity-bearing header and
  the proxy login).
- ``user``: one partition per *verified* user: the proxy login's user name
  when mitmproxy's ``proxyauth`` checked it against a user list (any mode but
  ``any``, which accepts every name). A user name a client merely claims —
  the user part of a Basic ``Authorization`` header, which the upstream may
  ignore when the password is a token — never chooses a partition; such
  requests fall back to their tenant's partition.
"""

from __future__ import annotations

from goblet.auth.credentials import Credential, TenantKeyer


def proxy_logins_verified(proxyauth: str | None) -> bool:
    """Whether mitmproxy's ``proxyauth`` option checks user names (not ``any``)."""
    return bool(proxyauth) and str(proxyauth).strip().lower() != "any"


def partition(mode: str, credential: Credential, tenant: str, keyer: TenantKeyer, *,
              verified_proxy_user: bool) -> str:
    """The partition of a request under isolation ``mode``."""
    if mode == "tenant":
        return "tenant:" + tenant
    if mode == "user":
        if verified_proxy_user and credential.proxy is not None:
            return "user:" + keyer.tenant_id(Credential((("user", credential.proxy[0]),)))
        return "tenant:" + tenant
    return ""
