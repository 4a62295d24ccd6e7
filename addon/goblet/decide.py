"""The one decision that matters: may this fetch be answered from the cache?

Rules (DESIGN §1, §4), in order; the first that applies wins:

1. The request uses something the cache cannot reproduce exactly
   (``want-ref``, sha256, unknown arguments or capabilities) → upstream.
2. The repo's upstream uses another object format → upstream.
3. Upstream has not granted this tenant this repo within the verdict TTL
   → upstream (which then grants or refuses, exactly as without goblet).
4. Every wanted object is in the cache → cache.
5. Otherwise wait for the repo's fill (starting one if the repo does not
   exist yet), then fetch still-missing exact objects with the client's own
   credential; if everything is then present and the grant still holds
   → cache. A refusal from upstream during a fill records a denial and sends
   the request upstream; a network failure answers with a git-readable error;
   a local failure (disk, git) sends the request upstream.

The decision is final before the first byte of the answer.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from goblet.auth.credentials import Credential
from goblet.auth.verdicts import VerdictCache
from goblet.cache.fill import FailureKind, Filler, FillError
from goblet.cache.store import CacheRepo, RepoStore
from goblet.protocol.request import FetchRequest


class Route(enum.Enum):
    """Where a fetch is answered from."""

    CACHE = "cache"
    UPSTREAM = "upstream"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Decision:
    """A routing decision and the one-line reason for it (logged, and shown on ERROR)."""

    route: Route
    reason: str
    waited_for_fill: bool = False


class FetchDecider:
    """Applies the rules above using the store, the filler and the verdicts."""

    def __init__(
        self,
        store: RepoStore,
        filler: Filler,
        verdicts: VerdictCache,
    ) -> None:
        self.store = store
        self.filler = filler
        self.verdicts = verdicts
        self.uncacheable: set[str] = set()  # repo keys with a foreign object format
        self.heads: dict[str, str] = {}  # repo key -> upstream HEAD target, last seen

    async def decide(
        self, repo: CacheRepo, tenant: str, credential: Credential, req: FetchRequest
    ) -> Decision:
        """Decide where ``req`` (from ``tenant`` holding ``credential``) is answered."""
        if req.unservable:
            return Decision(Route.UPSTREAM, "request needs upstream: " + ", ".join(req.unservable))
        if repo.key in self.uncacheable:
            return Decision(Route.UPSTREAM, "upstream object format is not sha1")
        if not self.verdicts.is_granted(tenant, repo.url):
            return Decision(Route.UPSTREAM, "no fresh upstream grant for this credential")
        wants = set(req.wants)
        missing = wants - await self.store.present(repo, wants)
        if not missing:
            return Decision(Route.CACHE, "all wants cached")

        task = self.filler.in_flight(repo)
        if task is None and not self.store.exists(repo):
            task = self.filler.start(repo, credential, self.heads.get(repo.key))
        if task is not None:
            try:
                await asyncio.shield(task)
            except FillError as e:
                return self._after_failure(e, repo, tenant)
            missing = wants - await self.store.present(repo, wants)
        if missing and self.store.exists(repo):
            try:
                await self.filler.fetch_oids(repo, credential, sorted(missing))
            except FillError as e:
                return self._after_failure(e, repo, tenant)
            missing = wants - await self.store.present(repo, wants)
        if missing:
            return Decision(Route.UPSTREAM, f"{len(missing)} wanted object(s) not in cache", True)
        if not self.verdicts.is_granted(tenant, repo.url):
            return Decision(Route.UPSTREAM, "grant expired while filling", True)
        return Decision(Route.CACHE, "filled, then served", True)

    def _after_failure(self, e: FillError, repo: CacheRepo, tenant: str) -> Decision:
        if e.kind is FailureKind.DENIED:
            self.verdicts.record(tenant, repo.url, granted=False)
            return Decision(Route.UPSTREAM, f"fill refused: {e.reason}", True)
        if e.kind is FailureKind.UPSTREAM:
            return Decision(Route.ERROR, f"goblet: {e.reason}", True)
        return Decision(Route.UPSTREAM, f"cache unavailable: {e.reason}", True)
