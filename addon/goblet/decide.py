"""The one decision that matters: may this fetch be answered from the cache?

Rules, in order; the first that applies wins:

1. The request uses something the cache cannot reproduce exactly
   (``want-ref``, sha256, unknown arguments or capabilities) → upstream.
2. The repo's upstream uses another object format → upstream.
3. Upstream has not granted this tenant this repo within the verdict TTL
   → upstream (which then grants or refuses, exactly as without goblet).
   Offline mode only: if the tenant's latest verdict is a grant within the
   offline grace and the repo is cached, goblet asks the upstream itself
   (``info/refs`` with the client's credential). A grant or a refusal is
   recorded and applied as usual; only an outage goblet observed itself
   (for this request, or a network failure of its own in the last few
   seconds) lets the cache answer offline — see 7.
4. Isolation ``public``: the repo must be readable anonymously (an anonymous
   grant, or an anonymous fill that succeeded), else → upstream.
5. Every wanted object must be in the cache: if some are missing, wait for
   the repo's fill (starting one if the repo does not exist yet), then fetch
   the still-missing ones by id with the client's own credential. A refusal
   during the client's own fill records a denial and sends the request
   upstream; a network failure answers with a git-readable error; a local
   failure, or the failure of a fill another credential started, sends the
   request upstream (no denial recorded, no foreign error text shown).
   A repo not cached at all is first tried as a cold clone (``_cold``). A
   request finding a tee fill here (a cold clone's own answer filling the
   cache, at the pace of that clone's client) follows it while its client
   keeps up, and goes upstream as soon as that client holds the answer back
   or the fill fails; while another process holds the writer lock of a repo
   not cached yet, requests for the repo go upstream.
6. Every wanted object (and every ``shallow`` the client names) must be one
   the upstream would serve this credential now: a tip of the refs the
   upstream last listed for it (within the TTL), or reachable in the cache
   from those tips, or an object the upstream confirms for this credential
   (goblet asks it with a ``want``/``have`` probe in the client's protocol
   version).
   Otherwise → upstream. An object the upstream deleted, or one only
   reachable from refs hidden from this credential, is never served by id.
7. Offline answers: the wanted objects must be cached and reachable from the
   cache's current tips of the refs the tenant last saw; the client is told
   in a ``remote:`` line that the data may be stale.
8. Tag following (``include-tag``): upload-pack adds the tag object of every
   tag of the repo it runs in that points into the pack, listed to the client
   or not (a tag deleted upstream that no fill has pruned yet, one a ref ACL
   hides from this credential, one a concurrent fill for another credential
   brings while pack-objects works). So such a request is answered from a
   throwaway view of the cache repo (``serve/tagview.py``) whose only refs
   are the tags the upstream last listed to this credential that the cache
   holds at the same object (``Decision.tags``); its answer is shared through
   the pack cache only with requests following the same tags (with no such
   tag, the request is answered without ``include-tag``, which is the same
   answer). That needs a view that listed every tag (no
   ``ref-prefix`` left one out). When the cache lacks a listed tag, or the
   view did not list every tag, a request with ``have`` lines (``git
   fetch``, which fetches the listed tags it lacks by id afterwards, its tag
   backfill, judged by rule 6) is still answered (with the tags the view
   allows, or without ``include-tag``: ``policy/gate.py``), and one without
   (a ``--single-branch`` or ``--depth`` clone, which never backfills) goes
   upstream; while the upstream is down it is answered with what the cache
   can follow.

The decision is final before the first byte of the answer.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from goblet.auth.credentials import ANONYMOUS, Credential
from goblet.auth.verdicts import RefView, VerdictCache
from goblet.cache import reach, teefill
from goblet.cache.fill import FailureKind, Filler, FillError, FillResult
from goblet.cache.store import CacheRepo, RepoStore
from goblet.cache.teefill import Busy, TeeFill
from goblet.offline.ask import Finding, UpstreamAsker
from goblet.offline.state import UpstreamState
from goblet.protocol.request import FetchRequest

# A network failure of goblet's own this recent counts as "the upstream is down now"
# without asking it again (so an outage does not cost every request a timeout).
RECENT_OUTAGE = 10.0
MAX_TAG_SETS = 256  # the tags of this many cache ref states are remembered (rule 8)


class Route(enum.Enum):
    """Where a fetch is answered from."""

    CACHE = "cache"
    UPSTREAM = "upstream"
    TEE = "tee"  # the upstream, whose answer also fills the cache (``cache/teefill.py``)
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Decision:
    """A routing decision, the one-line reason (logged; shown on ERROR) and a notice.

    ``notice`` is shown to the user as a ``remote:`` line (offline answers).
    """

    route: Route
    reason: str
    notice: str | None = None
    tee: TeeFill | None = None  # with Route.TEE: feed it the upstream's answer
    #: with Route.CACHE and include-tag asked: the tags upload-pack may follow (rule 8);
    #: None: include-tag is taken out of the request
    tags: frozenset[tuple[str, str]] | None = None

    @property
    def offline(self) -> bool:
        """Whether this is a cache answer given while the upstream is unreachable."""
        return self.route is Route.CACHE and self.notice is not None


@functools.lru_cache(maxsize=MAX_TAG_SETS)
def _followable(view: RefView, cached: frozenset[tuple[str, str]]
                ) -> frozenset[tuple[str, str]]:
    """The listed tags the cache holds as listed: one set object per question (views and
    the cache's tag sets are shared objects, so a repeated question is an identity hit;
    the pack-cache key and the tag view hash the answer, and a set keeps its hash)."""
    return view.tags & cached


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
        asker: UpstreamAsker | None = None,
        admit: Callable[[CacheRepo], bool] = lambda repo: True,
        tee: bool = True,
    ) -> None:
        self.store = store
        self.filler = filler
        self.verdicts = verdicts
        self.isolation = isolation
        self.offline = offline
        self.offline_grace = offline_grace
        self.upstream = upstream or UpstreamState()
        self.asker = asker
        self.admit = admit
        self.tee = tee
        self.uncacheable: set[str] = set()  # repo keys with a foreign object format
        self.heads: dict[str, str] = {}  # repo key -> upstream HEAD target, last seen
        self._fill_tenant: dict[str, str] = {}  # repo key -> tenant whose credential fills it
        self._tees: dict[str, TeeFill] = {}  # repo key -> tee fill in flight
        self._tags: dict[str, frozenset[tuple[str, str]]] = {}  # refs digest -> its tags

    def fill_credential(self, credential: Credential) -> Credential:
        """The credential a fill uses: anonymous in ``public`` isolation."""
        return Credential() if self.isolation == "public" else credential

    def start_fill(self, repo: CacheRepo, credential: Credential, tenant: str,
                   head: str | None = None) -> asyncio.Task[FillResult] | None:
        """Start (or join) the fill of ``repo`` on behalf of ``tenant``; None if a new
        cache copy of it may not be made now (``admit``: the partition bound)."""
        task = self.filler.in_flight(repo)
        if task is not None:
            return task
        if not self.store.exists(repo) and not self.admit(repo):
            return None
        task = self.filler.start(repo, self.fill_credential(credential),
                                 head or self.heads.get(repo.key))
        self._fill_tenant[repo.key] = ANONYMOUS if self.isolation == "public" else tenant
        task.add_done_callback(lambda t: self._fill_tenant.pop(repo.key, None))
        return task

    def may_serve_offline(self, tenant: str, repo: CacheRepo) -> bool:
        """Offline mode, the tenant's latest answer a grant within the grace, repo cached."""
        return (
            self.offline
            and self.verdicts.granted_within(tenant, repo.url, self.offline_grace)
            and self.store.exists(repo)
            and repo.key not in self.uncacheable
        )

    def offline_hidden_refs(self, tenant: str, repo: CacheRepo) -> tuple[str, ...] | None:
        """Cache refs the tenant was not shown (hidden from an offline ref answer);
        None if the tenant's refs are unknown."""
        view = self.verdicts.view(tenant, repo.url, self.offline_grace)
        state = self.store.state(repo)
        if view is None or state is None:
            return None
        hidden = set(state.refs) - view.names
        if "HEAD" not in view.names or (state.head is not None and state.head in hidden):
            hidden.add("HEAD")  # HEAD (and its symref) only as the tenant was shown it
        return tuple(sorted(hidden))

    async def decide(
        self, repo: CacheRepo, tenant: str, credential: Credential, req: FetchRequest,
        host: str = "",
    ) -> Decision:
        """Decide where ``req`` (from ``tenant`` holding ``credential``) is answered."""
        if req.unservable:
            return Decision(Route.UPSTREAM, "request needs upstream: " + ", ".join(req.unservable))
        if repo.key in self.uncacheable:
            return Decision(Route.UPSTREAM, "upstream object format is not sha1")
        if not self.verdicts.is_granted(tenant, repo.url):
            down = await self._reverify(repo, tenant, credential, host)
            if down is not None:
                return await self._offline(repo, tenant, req, down)
            if not self.verdicts.is_granted(tenant, repo.url):
                return Decision(Route.UPSTREAM, "no fresh upstream grant for this credential")
        if self.isolation == "public" and not await self._public(repo, tenant):
            return Decision(Route.UPSTREAM, "not readable anonymously: public isolation")
        if not self.store.exists(repo) and self.filler.in_flight(repo) is None:
            cold = await self._cold(repo, tenant, credential, req)
            if cold is not None:
                return cold
        wants = set(req.wants)
        missing = await self._missing(repo, wants)
        filled = bool(missing)
        if missing:
            failed = await self._fill(repo, tenant, credential, missing)
            if failed is not None:
                return failed
            missing = await self._missing(repo, wants)
            if missing:
                return Decision(Route.UPSTREAM, f"{len(missing)} wanted object(s) not in cache")
        refused = await self._not_advertised(repo, tenant, credential, req, host=host)
        if refused is not None:
            return refused
        tags, exact = self._tags_to_follow(repo, tenant, req, self.verdicts.ttl)
        if not exact and not (self.offline and self.upstream.down_since(host,
                                                                         RECENT_OUTAGE)):
            return Decision(Route.UPSTREAM, "include-tag: the cache cannot follow every tag "
                                            "listed to this credential: upstream answers")
        if not self.verdicts.is_granted(tenant, repo.url):
            return Decision(Route.UPSTREAM, "grant expired while filling")
        notice = None
        if self.offline and (down := self.upstream.down_since(host, RECENT_OUTAGE)):
            state = self.store.state(repo)
            notice = offline_notice(down, state.filled_at if state else None)
        return Decision(Route.CACHE, "filled, then served" if filled else "all wants cached",
                        notice=notice, tags=tags)

    async def _missing(self, repo: CacheRepo, wants: set[str]) -> set[str]:
        """The ``wants`` the cache repo lacks. A want that is a ref tip the repo's last fill
        recorded is there (git keeps the object of every ref; a fill records the refs it
        left), so a clone of tips costs no ``cat-file``; the others are looked up."""
        state = self.store.state(repo)
        unknown = wants - state.tips if state is not None else wants
        return unknown - await self.store.present(repo, unknown) if unknown else set()

    async def _cold(self, repo: CacheRepo, tenant: str, credential: Credential,
                    req: FetchRequest) -> Decision | None:
        """Rule 5 for a repo not cached at all: a plain full clone (protocol v2, the
        upstream's HEAD known) streams from the upstream while its answer fills the cache;
        a request for less (shallow, filtered, with haves, some refs only) goes upstream
        while a fill warms the cache for the next. With streaming on, a request finding
        another process filling the repo (its writer lock held) goes upstream too: it
        never waits for a fill that may be a tee held by a slow client. None: fill, then
        serve, as for a missing object (a full clone in v0/v1, without a ref list or
        without the upstream's HEAD, ``public`` isolation, no new copy allowed; or, with
        a fleet tier, the store has the repo (restore, then delta) or another instance
        fills it (wait for it, then restore))."""
        if self.isolation == "public" or not self.admit(repo):
            return None
        if self.tee and self.filler.locks.held_elsewhere(repo.key):
            return Decision(Route.UPSTREAM, "cold: another process fills the repo: "
                                            "passed upstream")
        fleet = self.filler.fleet
        if fleet is not None and await fleet.can_restore(repo):
            return None  # restore from the shared store and fetch the delta: no full clone
        view = self.verdicts.view(tenant, repo.url, self.verdicts.ttl)
        if not self.tee or view is None or (req.version != 2 and teefill.full_clone(req, view)):
            return None
        head = self.heads.get(repo.key)
        if teefill.full_clone(req, view) and head is None:
            return None  # a tee could not set HEAD: the fill asks the upstream for it
        if teefill.eligible(req, view, head):
            assert view is not None
            return await self._tee(repo, tenant, view, head)
        self.start_fill(repo, credential, tenant)
        return Decision(Route.UPSTREAM, "cold: passed upstream while the cache fills")

    async def _tee(self, repo: CacheRepo, tenant: str, view: RefView,
                   head: str | None) -> Decision | None:
        """Start a tee fill of ``repo`` with the request's own answer (``Route.TEE``). If
        another process holds the repo's writer lock, or the temporary repo cannot be
        made, the request passes upstream without one; None (fill, then serve: wait for
        the fleet's leader and restore) if another instance of the fleet fills it."""
        tee = await TeeFill.start(self.filler, repo, view, head)
        if tee is Busy.FLEET:
            return None
        if tee is Busy.LOCK:
            return Decision(Route.UPSTREAM, "cold: another fill holds the repo: "
                                            "passed upstream")
        self.filler.track(repo, tee.task)
        self._fill_tenant[repo.key] = tenant
        self._tees[repo.key] = tee
        tee.task.add_done_callback(lambda t: self._untrack_tee(repo, tee))
        if await tee.begin():
            return Decision(Route.TEE, "cold clone: the upstream's answer fills the cache",
                            tee=tee)
        return Decision(Route.UPSTREAM, "cold clone: passed upstream (no cache repo)")

    def _untrack_tee(self, repo: CacheRepo, tee: TeeFill) -> None:
        self._fill_tenant.pop(repo.key, None)
        if self._tees.get(repo.key) is tee:
            del self._tees[repo.key]

    async def _follow_tee(self, repo: CacheRepo) -> bool:
        """Wait for ``repo``'s tee fill while its client keeps up with the upstream. True
        once the fill made the repo, or its answer ended and only local work is left
        (then waited for as any fill); False when the fill failed, or as soon as its
        client holds the answer back (a slow reader must delay nobody else)."""
        tee = self._tees.get(repo.key)
        if tee is None:
            return True
        bound = asyncio.ensure_future(tee.client_bound.wait())
        waits: list[asyncio.Future[Any]] = [bound, tee.task]
        try:  # (``asyncio.wait`` never cancels what it waits for)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            bound.cancel()
        if tee.task.done():
            return not tee.task.cancelled() and tee.task.exception() is None
        return not (tee.copying and tee.client_bound.is_set())

    def teeing(self, repo: CacheRepo) -> bool:
        """Whether ``repo``'s fill in flight is a tee fill still copying its client's
        answer, at that client's pace: nothing waits for it. (Once the answer is whole,
        what is left is local work, bounded like any fill's, and may be waited for.)"""
        tee = self._tees.get(repo.key)
        return tee is not None and tee.copying and not tee.task.done()

    async def _reverify(self, repo: CacheRepo, tenant: str, credential: Credential,
                        host: str) -> float | None:
        """Offline mode: ask the upstream about a stale grant. Returns when the outage
        began if the cache may answer offline, else None (a new verdict may be recorded)."""
        if not self.may_serve_offline(tenant, repo) or self.asker is None:
            return None
        down = self.upstream.down_since(host, RECENT_OUTAGE)
        if down is not None:
            return down
        probe = await self.asker.refs(host, repo.url, credential)
        if probe.finding is Finding.GRANTED:
            assert probe.advertisement is not None
            adv = probe.advertisement
            self.verdicts.record(tenant, repo.url, granted=True,
                                 view=RefView.of(adv.refs, adv.peeled, all_tags=True))
            return None
        if probe.finding is Finding.DENIED:
            self.verdicts.record(tenant, repo.url, granted=False, status=probe.status,
                                 challenge=probe.challenge)
            return None
        if probe.finding is Finding.UNKNOWN:
            return None
        return self.upstream.down_since(host, RECENT_OUTAGE) or time.time()

    async def _offline(self, repo: CacheRepo, tenant: str, req: FetchRequest,
                       down: float) -> Decision:
        """Rule 7: answer from the cache while the upstream is down, if it can."""
        state = self.store.state(repo)
        view = self.verdicts.view(tenant, repo.url, self.offline_grace)
        tips = {state.refs[n] for n in view.names if n in state.refs} if state and view else set()
        asked = set(req.wants) | set(req.shallows)
        if await reach.unreachable(self.store.git, repo.path, asked, tips):
            return Decision(Route.ERROR, "goblet: upstream unreachable and the wanted objects "
                                         "are not cached")
        return Decision(Route.CACHE, "offline: all wants cached",
                        notice=offline_notice(down, state.filled_at if state else None),
                        tags=self._tags_to_follow(repo, tenant, req, self.offline_grace)[0])

    async def _fill(self, repo: CacheRepo, tenant: str, credential: Credential,
                    missing: set[str]) -> Decision | None:
        """Rule 5: bring ``missing`` into the cache; a Decision if that failed. A tee fill
        still copying is waited for only while its client keeps up (``_follow_tee``), and
        a tee fill that fails sends its waiters upstream: its failure is another
        client's."""
        if self.teeing(repo) and not await self._follow_tee(repo):
            return Decision(Route.UPSTREAM, "cold: passed upstream while a cold clone "
                                            "fills the cache (its client holds it back)")
        task = self.filler.in_flight(repo)
        own = task is None or self._fill_tenant.get(repo.key) == tenant
        tee = self._tees.get(repo.key)
        teed = tee is not None and tee.task is task
        if task is None and not self.store.exists(repo):
            task = self.start_fill(repo, credential, tenant)
            if task is None:
                return Decision(Route.UPSTREAM, "this repo has goblet_max_partitions cache "
                                                "copies in use: upstream answers")
        if task is not None:
            try:
                await asyncio.shield(task)
            except FillError as e:
                if teed:
                    return Decision(Route.UPSTREAM, "a cold clone's fill failed: "
                                                    "upstream answers")
                return self._after_failure(e, repo, tenant, own)
            missing = missing - await self.store.present(repo, missing)
        elif missing and self.store.exists(repo):  # (a tee fill made it meanwhile)
            missing = missing - await self.store.present(repo, missing)
        if missing and self.store.exists(repo):
            try:
                await self.filler.fetch_oids(repo, self.fill_credential(credential),
                                             sorted(missing))
            except FillError as e:
                return self._after_failure(e, repo, tenant, own=True)
        return None

    async def _not_advertised(self, repo: CacheRepo, tenant: str, credential: Credential,
                              req: FetchRequest, *, host: str) -> Decision | None:
        """Rule 6: a Decision sending the request upstream if an object it asks for is
        not one the upstream would serve this credential now.

        Objects a fill just brought prove nothing: the fill may have been another
        credential's, or asked in another protocol version than the client's."""
        view = self.verdicts.view(tenant, repo.url, self.verdicts.ttl)
        tips = view.tips if view is not None else frozenset()
        outside = (set(req.wants) | set(req.shallows)) - tips
        if not outside:
            return None
        unknown = await reach.unreachable(self.store.git, repo.path, outside, tips)
        if not unknown:
            return None
        if self.asker is not None:
            served = await self.asker.serves(host, repo.url, credential, sorted(unknown),
                                             req.version)
            if served:
                return None
            if served is None and self.may_serve_offline(tenant, repo):
                down = self.upstream.down_since(host, RECENT_OUTAGE) or time.time()
                return await self._offline(repo, tenant, req, down)
        return Decision(Route.UPSTREAM, f"{len(unknown)} object(s) not advertised to this "
                                        "credential: upstream decides")

    def _tags_to_follow(self, repo: CacheRepo, tenant: str, req: FetchRequest,
                        within: float) -> tuple[frozenset[tuple[str, str]] | None, bool]:
        """Rule 8: the tags the cache's answer may follow for ``req`` (None: take
        ``include-tag`` out, or it was not asked for), and whether that answer is the
        upstream's own (False: only the upstream may answer a request without haves).
        ``within``: how old ``tenant``'s view of the refs may be. The cache's tags are
        those its last fill recorded."""
        if not req.include_tag:
            return None, True
        state = self.store.state(repo)
        view = self.verdicts.view(tenant, repo.url, within)
        if state is None or view is None or not view.all_tags:
            return None, bool(req.haves)
        cached = self._tags.get(state.digest)
        if cached is None:
            if len(self._tags) >= MAX_TAG_SETS:
                self._tags.pop(next(iter(self._tags)))
            cached = self._tags[state.digest] = frozenset(
                (n, o) for n, o in state.refs.items() if n.startswith("refs/tags/"))
        follow = _followable(view, cached)
        return follow, bool(req.haves) or len(follow) == len(view.tags)

    async def _public(self, repo: CacheRepo, tenant: str) -> bool:
        """Whether upstream serves ``repo`` anonymously (asking with an anonymous fill)."""
        if self.verdicts.is_granted(ANONYMOUS, repo.url):
            return True
        if self.verdicts.is_denied(ANONYMOUS, repo.url) or self.teeing(repo):
            return False  # (a tee fill proves nothing about anonymous access)
        task = self.start_fill(repo, Credential(), tenant)
        if task is None:
            return False
        try:
            await asyncio.shield(task)
        except FillError as e:
            if e.kind is FailureKind.DENIED:
                self.verdicts.record(ANONYMOUS, repo.url, granted=False)
            return False
        self.verdicts.record(ANONYMOUS, repo.url, granted=True)
        return True

    def _after_failure(self, e: FillError, repo: CacheRepo, tenant: str, own: bool) -> Decision:
        if not own:
            return Decision(Route.UPSTREAM, "a fill for another credential failed")
        if e.kind is FailureKind.DENIED:
            if self.isolation != "public":  # a public fill is anonymous, not this tenant's
                self.verdicts.record(tenant, repo.url, granted=False)
            return Decision(Route.UPSTREAM, f"fill refused: {e.reason}")
        if e.kind is FailureKind.UPSTREAM:
            return Decision(Route.ERROR, f"goblet: {e.reason}")
        return Decision(Route.UPSTREAM, f"cache unavailable: {e.reason}")
