"""Goblet links: unguessable, expiring capabilities for one LFS object.

When the upstream's batch answer grants a download to a credential, goblet
issues a link token for (tenant id, repo URL, oid) and keeps the upstream's
href and headers with it, in this process's memory only. A token is 256
random bits, so it cannot be guessed and names nothing; it is valid until
``ttl`` seconds after it was issued, and only for the tenant, repo and oid it
was issued for. The table is bounded: the oldest grants go first. When the
upstream refuses a later batch request of the same tenant for the repo, every
link it still holds there is revoked at once.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from goblet.auth.credentials import ANONYMOUS
from goblet.lfs.batch import Download

MAX_LINKS = 200_000


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token allows: ``download`` of one object, by one tenant, of one repo."""

    tenant: str
    repo_url: str
    download: Download
    expires: float
    issued: float = 0.0

    def __repr__(self) -> str:  # the href and its headers are credentials
        return f"Grant(oid={self.download.oid[:12]}, size={self.download.size})"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a link is not honoured: HTTP status and a one-line reason."""

    status: int
    reason: str


UNKNOWN = Refusal(404, "goblet: unknown or expired LFS link (run the git command again)")
OTHER_CREDENTIAL = Refusal(403, "goblet: this LFS link was issued to another credential")
NO_CREDENTIAL = Refusal(401, "goblet: this LFS link needs the credential it was issued to")


class LinkTable:
    """Token → Grant, in memory, each valid for ``ttl`` seconds."""

    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic,
                 max_links: int = MAX_LINKS) -> None:
        self.ttl = ttl
        self._clock = clock
        self._max = max_links
        self._grants: OrderedDict[str, Grant] = OrderedDict()

    def __len__(self) -> int:
        return len(self._grants)

    def issue(self, tenant: str, repo_url: str, download: Download) -> str:
        """A fresh token for ``download`` by ``tenant`` in ``repo_url``."""
        self._expire()
        token = secrets.token_urlsafe(32)
        now = self._clock()
        self._grants[token] = Grant(tenant, repo_url, download, now + self.ttl, now)
        while len(self._grants) > self._max:
            self._grants.popitem(last=False)
        return token

    def revoke(self, tenant: str, repo_url: str) -> int:
        """Forget every grant of ``tenant`` in ``repo_url`` (the upstream refused it since);
        returns how many there were."""
        gone = [t for t, g in self._grants.items()
                if g.tenant == tenant and g.repo_url == repo_url]
        for token in gone:
            del self._grants[token]
        return len(gone)

    def check(self, token: str, *, tenant: str, repo_url: str, oid: str) -> Grant | Refusal:
        """The grant of ``token`` if it is valid for this tenant, repo and oid now."""
        grant = self._grants.get(token)
        if grant is None or grant.expires < self._clock():
            return UNKNOWN
        if grant.repo_url != repo_url or grant.download.oid != oid:
            return UNKNOWN  # says nothing about what the token is for
        if grant.tenant != tenant:
            return NO_CREDENTIAL if tenant == ANONYMOUS else OTHER_CREDENTIAL
        return grant

    def _expire(self) -> None:
        now = self._clock()
        while self._grants:
            token, grant = next(iter(self._grants.items()))
            if grant.expires >= now:
                return
            del self._grants[token]
