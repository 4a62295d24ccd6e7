"""Goblet links: unguessable, expiring capabilities for one LFS object.

When the upstream's batch answer grants a download to a credential, goblet
issues a link token for (tenant id, repo URL, oid) and keeps the upstream's
href and headers with it, in this process's memory only. A token is 256
random bits, so it cannot be guessed and names nothing; it is valid until
``ttl`` seconds after it was issued, and only for the tenant, repo and oid it
was issued for. There is one link per (tenant, repo, oid): a later grant of
the same object renews it (same token, the new href and expiry), so an answer
listing one object many times makes one link. The table is bounded: each
tenant holds at most ``max_per_tenant`` links (its oldest go first), the
table ``max_links``; a full table drops the oldest link of the tenant holding
the most, so a few credentials that are granted many objects cannot push
everyone else's links out. When the upstream refuses a later batch request of the same
tenant for the repo, every link it still holds there is revoked at once
(indexed by tenant and repo: no scan of the table).
"""

from __future__ import annotations

import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from goblet.auth.credentials import ANONYMOUS
from goblet.lfs.batch import Download

MAX_LINKS = 200_000
MAX_PER_TENANT = 50_000
MAX_REVOCATIONS = 10_000  # (tenant, repo) revocations remembered, for answers read meanwhile
TOKEN_CHARS = 43  # secrets.token_urlsafe(32): 256 bits in base64url
MAX_SCAN = 8192  # characters of a text ``live_in`` looks at (a request target is shorter)
_RUN = re.compile(rf"[A-Za-z0-9_-]{{{TOKEN_CHARS},}}")


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
                 max_links: int = MAX_LINKS, max_per_tenant: int = MAX_PER_TENANT) -> None:
        self.ttl = ttl
        self._clock = clock
        self._max = max_links
        self._max_tenant = max_per_tenant
        self._grants: OrderedDict[str, Grant] = OrderedDict()  # oldest grant first
        self._by_object: dict[tuple[str, str, str], str] = {}  # (tenant, repo, oid) → token
        self._by_repo: dict[tuple[str, str], set[str]] = {}  # (tenant, repo) → tokens
        self._by_tenant: dict[str, OrderedDict[str, None]] = {}  # tenant → tokens, oldest first
        self._revoked: OrderedDict[tuple[str, str], float] = OrderedDict()  # → when, last
        # tenants by how many links they hold (count → tenants), and the highest count
        self._holding: dict[int, dict[str, None]] = {}
        self._top = 0

    def __len__(self) -> int:
        return len(self._grants)

    def issue(self, tenant: str, repo_url: str, download: Download) -> str:
        """The token for ``download`` by ``tenant`` in ``repo_url``: a fresh one, or the
        one this object already has there, renewed."""
        self._expire()
        now = self._clock()
        grant = Grant(tenant, repo_url, download, now + self.ttl, now)
        key = (tenant, repo_url, download.oid)
        token = self._by_object.get(key)
        if token is not None:
            self._grants[token] = grant
            self._grants.move_to_end(token)
            self._by_tenant[tenant].move_to_end(token)
            return token
        token = secrets.token_urlsafe(32)
        self._grants[token] = grant
        self._by_object[key] = token
        self._by_repo.setdefault((tenant, repo_url), set()).add(token)
        mine = self._by_tenant.setdefault(tenant, OrderedDict())
        mine[token] = None
        self._holds(tenant, len(mine) - 1, len(mine))
        while len(mine) > self._max_tenant:
            self._drop(next(iter(mine)))
        while len(self._grants) > self._max:
            self._drop(next(iter(self._by_tenant[self._largest()])))
        return token

    def _holds(self, tenant: str, before: int, now: int) -> None:
        """``tenant`` went from holding ``before`` links to ``now``."""
        if before:
            was = self._holding[before]
            del was[tenant]
            if not was:
                del self._holding[before]
        if now:
            self._holding.setdefault(now, {})[tenant] = None
            self._top = max(self._top, now)

    def _largest(self) -> str:
        """A tenant holding the most links (the table is not empty)."""
        while self._top not in self._holding:
            self._top -= 1
        return next(iter(self._holding[self._top]))

    def now(self) -> float:
        """The table's clock (for ``revoked_since``)."""
        return self._clock()

    def revoked_since(self, tenant: str, repo_url: str, since: float) -> bool:
        """Whether ``revoke(tenant, repo_url)`` was called at or after ``since``."""
        at = self._revoked.get((tenant, repo_url))
        return at is not None and at >= since

    def revoke(self, tenant: str, repo_url: str) -> int:
        """Forget every grant of ``tenant`` in ``repo_url`` (the upstream refused it since);
        returns how many there were."""
        key = (tenant, repo_url)
        self._revoked.pop(key, None)
        self._revoked[key] = self._clock()  # (most recent last; the oldest go first)
        while len(self._revoked) > MAX_REVOCATIONS:
            self._revoked.popitem(last=False)
        gone = self._by_repo.get((tenant, repo_url), set()).copy()
        for token in gone:
            self._drop(token)
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

    def live_in(self, text: str) -> tuple[str, set[str]]:
        """The form of ``text`` that shows its live tokens (``text`` itself, or it with
        percent-escapes decoded up to twice) and those tokens, in any spelling: (text,
        {}) for most text. Only the first MAX_SCAN characters of each form are looked at
        (one lookup per position of a run of token characters): a token further on is
        not found."""
        found: set[str] = set()
        shown = text
        if not self._grants:
            return text, found
        now, form = self._clock(), text
        for _ in range(3):
            for run in _RUN.findall(form, 0, MAX_SCAN):
                for i in range(len(run) - TOKEN_CHARS + 1):
                    grant = self._grants.get(run[i:i + TOKEN_CHARS])
                    if grant is not None and grant.expires >= now:
                        found.add(run[i:i + TOKEN_CHARS])
                        shown = form
            if "%" not in form:
                break
            form = unquote(form)
        return shown, found

    def hide(self, text: str) -> str:
        """``text`` with every live token in it (``live_in``) shown as ``-``."""
        shown, found = self.live_in(text)
        for token in found:
            shown = shown.replace(token, "-")
        return shown

    def _drop(self, token: str) -> None:
        grant = self._grants.pop(token)
        self._by_object.pop((grant.tenant, grant.repo_url, grant.download.oid), None)
        repo = self._by_repo.get((grant.tenant, grant.repo_url))
        if repo is not None:
            repo.discard(token)
            if not repo:
                del self._by_repo[(grant.tenant, grant.repo_url)]
        mine = self._by_tenant.get(grant.tenant)
        if mine is not None and token in mine:
            del mine[token]
            self._holds(grant.tenant, len(mine) + 1, len(mine))
            if not mine:
                del self._by_tenant[grant.tenant]

    def _expire(self) -> None:
        now = self._clock()
        while self._grants:
            token, grant = next(iter(self._grants.items()))
            if grant.expires >= now:
                return
            self._drop(token)
