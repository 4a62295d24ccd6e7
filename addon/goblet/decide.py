"""The one decision that matters: may this fetch be answered from the cache?

Rules (DESIGN §1, §4), in order; the first that applies wins:

1. The request uses something the cache cannot reproduce exactly
   (``want-ref``, sha256, unknown arguments or capabilities) → upstream.
2. The repo's upstream uses another object format → upstream.
3. Upstream has not granted this tenant this repo within the verdict TTL
   → upstream (which then grants or refuses, exactly as without goblet) —
   unless offline mode is on, the upstream host is unreachable, and the
   tenant's latest verdict is a grant within the offline grace.
4. Isolation ``public``: the repo must be readable anonymously (an anonymous
   grant, or an anonymous fill that succeeded), else → upstream.
5. Every wanted object is in the cache → cache.
6. Otherwise wait for the repo's fill (starting one if the repo does not
   exist yet), then fetch still-missing exact objects with the client's own
   credential; if everything is then present and the grant still holds
   → cache. A refusal from upstream during a fill records a denial and sends
   the request upstream; a network failure answers with a git-readable error;
   a local failure (disk, git) sends the request upstream. While the upstream
   is unreachable nothing can be fetched: a git-readable error.

The decision is final before the first byte of the answer.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass

from goblet.auth.credentials import ANONYMOUS, Credential
from goblet.auth.verdicts import VerdictCache
from goblet.cache.fill import FailureKind, Filler, FillError
from goblet.cache.store import CacheRepo, RepoStore
from goblet.offline.state import UpstreamState
from goblet.protocol.request import FetchRequest


class Route(enum.Enum):
    """Where a fetch is answered from."""

    CACHE = "cache"
    UPSTREAM = "upstream"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Decision:
    """A routing decision, the one-line reason (logged; shown on ERROR) and a notice.

    ``notice`` is shown to the user as a ``remote:`` line (offline answers).
    """

    route: Route
    reason: str
    notice: str | None = None

    @property
    def offline(self) -> bool:
        """Whether this is a cache answer given while the upstream is unreachable."""
        return self.route is Route.CACHE and self.notice is not None


def offline_notice(down_since: float, filled_at: float | None) -> str:
    """The ``remote:`` line of an offline answer."""
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(down_since))
    text = f"goblet: upstream unreachable since {since}; serving cached data that may be stale"
    if filled_at is not None:
        text += " (last updated " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(filled_at)) \
            + ")"
    return text


class FetchDecider:
    """Applies the rules above using the store, the filler and the verdicts."""

    def __init__(
        self,
        store: RepoStore,
        filler: Filler,
        verdicts: VerdictCache,
        *,
        isolation: str = "shared",
        offline: bool = False,
        offline_grace: float = 86400.0,
        upstream: UpstreamState | None = None,
    ) -> None:
        self.store = store
        self.filler = filler
        self.verdicts = verdicts
        self.isolation = isolation
        self.offline = offline
        self.offline_grace = offline_grace
        self.upstream = upstream or UpstreamState()
        self.uncacheable: set[str] = set()  # repo keys with a foreign object format
        self.heads: dict[str, str] = {}  # repo key -> upstream HEAD target, last seen

    def fill_credential(self, credential: Credential) -> Credential:
        """The credential a fill uses: anonymous in ``public`` isolation."""
        return Credential() if self.isolation == "public" else credential

    def offline_since(self, host: str) -> float | None:
        """When ``host`` became unreachable, if offline mode is on and it is."""
        return self.upstream.down_since(host) if self.offline else None

    def may_serve_offline(self, tenant: str, repo: CacheRepo, host: str) -> bool:
        """Offline mode, ``host`` down, the tenant granted within the grace, repo cached."""
        return (
            self.offline_since(host) is not None
            and self.verdicts.granted_within(tenant, repo.url, self.offline_grace)
            and self.store.exists(repo)
            and repo.key not in self.uncacheable
        )

    async def decide(
        self, repo: CacheRepo, tenant: str, credential: Credential, req: FetchRequest,
        host: str = "",
    ) -> Decision:
        """Decide where ``req`` (from ``tenant`` holding ``credential``) is answered."""
        if req.unservable:
            return Decision(Route.UPSTREAM, "request needs upstream: " + ", ".join(req.unservable))
        if repo.key in self.uncacheable:
            return Decision(Route.UPSTREAM, "upstream object format is not sha1")
        down = self.offline_since(host)
        offline = self.may_serve_offline(tenant, repo, host)
        if not offline and not self.verdicts.is_granted(tenant, repo.url):
            return Decision(Route.UPSTREAM, "no fresh upstream grant for this credential")
        if self.isolation == "public" and not offline and not await self._public(repo):
            return Decision(Route.UPSTREAM, "not readable anonymously: public isolation")
        notice = None
        if down is not None:
            state = self.store.state(repo)
            notice = offline_notice(down, state.filled_at if state else None)
        wants = set(req.wants)
        missing = wants - await self.store.present(repo, wants)
        if not missing:
            return Decision(Route.CACHE, "all wants cached", notice=notice)
        if down is not None:
            return Decision(Route.ERROR, f"goblet: upstream unreachable and {len(missing)} "
                                         "wanted object(s) are not cached")

        task = self.filler.in_flight(repo)
        if task is None and not self.store.exists(repo):
            task = self.filler.start(
                repo, self.fill_credential(credential), self.heads.get(repo.key)
            )
        if task is not None:
            try:
                await asyncio.shield(task)
            except FillError as e:
                return self._after_failure(e, repo, tenant)
            missing = wants - await self.store.present(repo, wants)
        if missing and self.store.exists(repo):
            try:
                await self.filler.fetch_oids(
                    repo, self.fill_credential(credential), sorted(missing)
                )
            except FillError as e:
                return self._after_failure(e, repo, tenant)
            missing = wants - await self.store.present(repo, wants)
        if missing:
            return Decision(Route.UPSTREAM, f"{len(missing)} wanted object(s) not in cache")
        if not self.verdicts.is_granted(tenant, repo.url):
            return Decision(Route.UPSTREAM, "grant expired while filling")
        return Decision(Route.CACHE, "filled, then served")

    async def _public(self, repo: CacheRepo) -> bool:
        """Whether upstream serves ``repo`` anonymously (asking with an anonymous fill)."""
        if self.verdicts.is_granted(ANONYMOUS, repo.url):
            return True
        if self.verdicts.is_denied(ANONYMOUS, repo.url):
            return False
        task = self.filler.in_flight(repo) or self.filler.start(
            repo, Credential(), self.heads.get(repo.key)
        )
        try:
            await asyncio.shield(task)
        except FillError as e:
            if e.kind is FailureKind.DENIED:
                self.verdicts.record(ANONYMOUS, repo.url, granted=False)
            return False
        self.verdicts.record(ANONYMOUS, repo.url, granted=True)
        return True

    def _after_failure(self, e: FillError, repo: CacheRepo, tenant: str) -> Decision:
        if e.kind is FailureKind.DENIED:
            if self.isolation != "public":  # a public fill is anonymous, not this tenant's
                self.verdicts.record(tenant, repo.url, granted=False)
            return Decision(Route.UPSTREAM, f"fill refused: {e.reason}")
        if e.kind is FailureKind.UPSTREAM:
            return Decision(Route.ERROR, f"goblet: {e.reason}")
        return Decision(Route.UPSTREAM, f"cache unavailable: {e.reason}")
