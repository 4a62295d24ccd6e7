"""Ref requests answered from the cache within ``goblet_refs_ttl`` (``freshness.py``).

``RefsFromCache`` gathers the facts of one ``info/refs`` or ``ls-refs``
request (grant, the refs the upstream last listed to the credential, the
client's ``goblet-max-age``, webhook stale marks, the cache's refs), asks the
pure rule, and returns a cache answer — from memory (``serve/refanswers.py``:
one ``upload-pack`` run per distinct question and refs), or, for an answer too
large to hold, a serve plan for the backend — or None (upstream).
It also remembers, for a few seconds, that a (tenant, repo) was just given
cached refs, so the fetch that follows tells the user how old they were
(``remote: goblet: refs from cache, 42 s old``: git shows it; a ref answer
itself has no room for such a line).

Stale marks come from push webhooks (``observe/webhooks.py``): a mark makes
every credential's refs for that URL count as stale, so it can only send
requests upstream sooner. Marks older than the TTL are irrelevant and are
dropped; at most ``MAX_MARKS`` are held.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache, partial

from goblet.auth.verdicts import RefView
from goblet.cache.store import RepoState
from goblet.decide import FetchDecider
from goblet.observe.metrics import Metrics
from goblet.policy import freshness
from goblet.policy.flows import FlowState, Kind
from goblet.protocol import refs, serveroptions
from goblet.protocol.errors import ProtocolError
from goblet.protocol.refs import V2_CAPABILITIES
from goblet.protocol.request import cache_identity
from goblet.protocol.routes import ADVERTISEMENT_TYPE, RESULT_TYPE
from goblet.serve.plans import ServePlan, clean_git_protocol
from goblet.serve.refanswers import TOO_LARGE, RefAnswers
from goblet.serve.refanswers import Key as AnswerKey

NOTICE_WINDOW = 30.0  # seconds a fetch may follow its cached ref answer and be told
MAX_MARKS = 10_000
MAX_NOTICES = 10_000
MAX_MEMO = 1024  # remembered "refs to hide" verdicts (view, snapshot, question)
MAX_MEMO_PREFIX_CHARS = 1024  # ... only for questions this small
MAX_MEMO_HIDDEN = 256  # ... and answers this small
MAX_QUESTION_BYTES = 4096  # an ls-refs larger than this is never answered from the cache
MAX_QUESTION_PREFIXES = 128  # nor one with more ref-prefix lines
MAX_IDENTITY_MEMO = 256  # questions whose cache identity is remembered (≤ 4 KiB each)

# ``cache_identity`` of a question small enough to answer from the cache, remembered:
# CI clients ask the same few.
_identity = lru_cache(maxsize=MAX_IDENTITY_MEMO)(cache_identity)

Planner = Callable[..., ServePlan]


@dataclass(frozen=True, slots=True)
class CachedRefs:
    """A ref answer made from the cache, held in memory."""

    body: bytes
    content_type: str


def notice_text(age: float) -> str:
    """The ``remote:`` line of a fetch that followed a cached ref answer."""
    return f"goblet: refs from cache, {age:.0f} s old"


class RefsFromCache:
    """Decides, and remembers what it answered (see the module docstring)."""

    def __init__(self, decider: FetchDecider, planner: Planner, metrics: Metrics,
                 refs_ttl: Callable[[], float], *, answers: RefAnswers | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.decider = decider
        self.planner = planner
        self.answers = answers
        self.metrics = metrics
        self.refs_ttl = refs_ttl
        self._clock = clock
        self._marks: OrderedDict[str, float] = OrderedDict()  # repo URL → when marked
        self._told: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        self._hidden: OrderedDict[tuple[object, ...], tuple[weakref.ref[RefView],
                                                            tuple[str, ...] | None]] = (
            OrderedDict())

    def mark_stale(self, urls: Iterable[str]) -> int:
        """Count the refs of these repo URLs as stale from now on; how many were marked."""
        now, marked = self._clock(), 0
        for url in urls:
            self._marks.pop(url, None)
            self._marks[url] = now
            marked += 1
        horizon = now - max(self.refs_ttl(), 1.0)
        while self._marks and (len(self._marks) > MAX_MARKS
                               or next(iter(self._marks.values())) < horizon):
            self._marks.popitem(last=False)
        return marked

    def _stale_age(self, url: str) -> float | None:
        at = self._marks.get(url)
        return None if at is None else self._clock() - at

    async def answer(self, state: FlowState,
                     git_protocol: str | None) -> CachedRefs | ServePlan | None:
        """A cache answer to ``state``'s ref request, or None: ask the upstream.

        Raises ProtocolError for a malformed ``goblet-…`` server option."""
        if state.kind not in (Kind.INFO_REFS, Kind.LS_REFS):
            return None
        got = await self._answer(state, git_protocol)
        self.metrics.of(self.metrics.refs_answers, "upstream" if got is None else "cache").inc()
        if got is None and state.repo is not None:
            self._told.pop((state.tenant, state.repo.key), None)  # upstream's refs
        return got

    async def _answer(self, state: FlowState,
                      git_protocol: str | None) -> CachedRefs | ServePlan | None:
        got = self._plan(state, git_protocol)
        if got is None:
            return None
        plan, snapshot = got
        assert state.repo is not None
        identity = _identity(plan.body)  # (small: see _plan)
        if self.answers is None or snapshot is None or identity is None:
            return plan
        key = (plan.repo_key, snapshot.digest, plan.git_protocol or "", plan.advertise,
               plan.hidden_refs, identity)
        body = await self.answers.answer(key, plan.repo_dir, plan.body, plan.git_protocol,
                                         advertise=plan.advertise, hidden=plan.hidden_refs)
        if body is TOO_LARGE:
            if plan.advertise:  # (a capability list is small; this lists refs)
                state.reason = "refs from upstream: the cache's answer was no capability list"
                return None
            return plan  # too large to hold: the backend streams it
        if body is None:  # the cache could not answer (evicted meanwhile?): upstream can
            state.reason = "refs from upstream: the cache could not answer"
            return None
        if not self.decider.verdicts.is_granted(state.tenant, state.repo.url):
            # the grant expired or was replaced by a refusal while the answer was made
            state.reason = "refs from upstream: the grant ended meanwhile"
            self._told.pop((state.tenant, state.repo.key), None)
            return None
        assert isinstance(body, bytes)
        if plan.advertise and not body.startswith(V2_CAPABILITIES):
            # never expected (the plan asks upload-pack for protocol v2): an advertisement
            # of another version would list refs nobody checked against this tenant's view
            self.answers.forget(key)
            state.reason = "refs from upstream: the cache's answer was no capability list"
            return None
        if not plan.advertise and not self._only_listed(state, key, body):
            # a fill moved the cache between the rule's look and upload-pack's
            self.answers.forget(key)
            state.reason = "refs from upstream: the cache's refs moved meanwhile"
            self._told.pop((state.tenant, state.repo.key), None)
            return None
        return CachedRefs(body, ADVERTISEMENT_TYPE if plan.advertise else RESULT_TYPE)

    def _only_listed(self, state: FlowState, key: AnswerKey, body: bytes) -> bool:
        """Whether an ls-refs answer (``body``, held under ``key``) lists only refs, ids and
        peeled ids the upstream listed to this credential (its latest view). The check is
        remembered per answer and view object: a new grant makes a new view."""
        assert state.repo is not None
        latest = self.decider.verdicts.view_age(state.tenant, state.repo.url)
        if latest is None:
            return False
        view = latest[0]
        assert self.answers is not None
        seen = self.answers.recall(key, body, view)
        if seen is not None:
            return seen
        try:
            adv = refs.parse_ls_refs(body)
        except ProtocolError:
            return False
        pairs = view.pairs
        ok = (all((name, oid) in pairs for name, oid in adv.refs.items())
              and all((f"{name}^{{}}", oid) in pairs for name, oid in adv.peeled.items()))
        self.answers.remember(key, body, view, ok)
        return ok

    def _plan(self, state: FlowState,
              git_protocol: str | None) -> tuple[ServePlan, RepoState | None] | None:
        """The rule's verdict on ``state``'s ref request as a serve plan, with the cache
        snapshot it was decided on (None: upstream). Raises ProtocolError for a malformed
        ``goblet-…`` server option."""
        repo, ls = state.repo, state.ls_refs
        ttl = self.refs_ttl()
        if repo is None or ttl <= 0:
            return None
        if state.version != 2:
            state.reason = ("refs from upstream: a v0/v1 advertisement lists every ref"
                            if state.version >= 0 else
                            "refs from upstream: a Git-Protocol header goblet does not pass on")
            return None
        if ls is not None:
            options = serveroptions.parse(ls.server_options)
            if ls.unservable:
                state.reason = "ls-refs needs upstream: " + ", ".join(ls.unservable)
                return None
            if (len(state.body) > MAX_QUESTION_BYTES
                    or len(ls.ref_prefixes or ()) > MAX_QUESTION_PREFIXES):
                state.reason = "refs from upstream: an ls-refs this large is not answered " \
                               "from the cache"
                return None
            prefixes: tuple[str, ...] | None = ls.ref_prefixes
        else:
            options, prefixes = serveroptions.ClientOptions(), None
        d = self.decider
        latest = d.verdicts.view_age(state.tenant, repo.url)
        snapshot = d.store.state(repo)
        facts = freshness.RefsFacts(
            refs_ttl=ttl, max_age=options.max_age,
            granted=d.verdicts.is_granted(state.tenant, repo.url),
            cached=snapshot is not None and repo.key not in d.uncacheable,
            view=latest[0] if latest else None, view_age=latest[1] if latest else 0.0,
            stale_age=self._stale_age(repo.url))
        cache = (freshness.CacheRefs(snapshot.refs, snapshot.head, d.heads.get(repo.key))
                 if snapshot is not None else None)
        hide = (partial(self._hide, repo.key, snapshot.digest)
                if snapshot is not None and snapshot.digest else None)
        verdict = freshness.decide(facts, prefixes=prefixes, cache=cache, hide=hide)
        if isinstance(verdict, freshness.Strict):
            state.reason = f"refs from upstream: {verdict.reason}"
            return None
        self.metrics.refs_age.observe(verdict.age)
        state.reason = f"refs from cache, {verdict.age:.0f} s old"
        advertise = prefixes is None
        if not advertise:  # a capability advertisement shows no refs
            self._remember(state.tenant, repo.key, verdict.age)
        return self.planner(repo, b"" if advertise else state.body,
                            clean_git_protocol(git_protocol), advertise=advertise,
                            hidden_refs=verdict.hidden,
                            drop_head_symref="HEAD" in verdict.hidden), snapshot

    def _hide(self, repo_key: str, digest: str, view: RefView, cache: freshness.CacheRefs,
              prefixes: tuple[str, ...]) -> tuple[str, ...] | None:
        """``freshness.reproduce``, remembered per view (weakly), cache snapshot (its
        digest names its refs and HEAD) and question; only small questions and
        answers are kept (``MAX_MEMO_*``)."""
        memo = (repo_key, digest, id(view), cache.upstream_head, prefixes)
        seen = self._hidden.get(memo)
        if seen is not None and seen[0]() is view:
            self._hidden.move_to_end(memo)
            return seen[1]
        hidden = freshness.reproduce(view, cache, prefixes)
        if sum(map(len, prefixes)) <= MAX_MEMO_PREFIX_CHARS and (
                hidden is None or len(hidden) <= MAX_MEMO_HIDDEN):
            self._hidden[memo] = (weakref.ref(view), hidden)
            while len(self._hidden) > MAX_MEMO:
                self._hidden.popitem(last=False)
        return hidden

    def _remember(self, tenant: str, repo_key: str, age: float) -> None:
        key = (tenant, repo_key)
        self._told.pop(key, None)
        self._told[key] = (self._clock(), age)
        while len(self._told) > MAX_NOTICES:
            self._told.popitem(last=False)

    def notice_for(self, tenant: str, repo_key: str) -> str | None:
        """The notice for a fetch by ``tenant`` from ``repo_key`` that follows a cached
        ref answer given within ``NOTICE_WINDOW`` seconds, else None."""
        told = self._told.get((tenant, repo_key))
        if told is None or self._clock() - told[0] > NOTICE_WINDOW:
            return None
        return notice_text(told[1])

