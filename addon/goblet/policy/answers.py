"""What the upstream's answers to ref requests prove, and what goblet does about them.

- ``401``/``403``/``404`` to any git request: a denial for (tenant, repo),
  which replaces any grant at once; its ``WWW-Authenticate`` challenge is kept
  (offline answers repeat it).
- ``200`` to ``info/refs`` or ``ls-refs``, with git's content type and a body
  that parses as a ref answer: a grant, with the refs it listed (the tenant's
  view; a v2 capability advertisement lists none). Anything else — an ``ERR``
  packet with status 200, say — proves nothing.
- After a grant that listed refs: a fill starts when the cache's branches,
  tags or HEAD differ from them (within the ``ref-prefix`` view an ``ls-refs``
  asked for), except for repos ``public`` isolation must not cache. An
  upstream using another object format makes the repo uncacheable.
- A v2 capability advertisement is returned with the fetch features only the
  upstream could serve removed, so clients do not ask for them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, replace

from goblet.auth.credentials import ANONYMOUS
from goblet.auth.verdicts import RefView
from goblet.cache.store import RepoState, RepoStore
from goblet.decide import FetchDecider
from goblet.policy import bodies
from goblet.policy.flows import FlowState, Kind, Outcome
from goblet.policy.offload import INLINE_ANSWER_BYTES, run_sized
from goblet.protocol import refs
from goblet.protocol.errors import ProtocolError
from goblet.protocol.request import small_question

DENIALS = (401, 403, 404)
MAX_READ_MEMO = 256  # small ref answers whose reading is remembered (≤ 8 KiB each)
MAX_MEMO_PREFIX_CHARS = 1024  # ... and whose comparison is, for questions this small
MAX_MEMO_PREFIXES = 128  # ... (and of at most this many ref-prefix lines)
INLINE_COMPARED_REFS = 1000  # cache refs compared with an answer on the event loop, at most
MAX_UNREAD_REPOS = 1024  # repos whose unreadable ref answers were logged (once each)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RefAnswer:
    """A ref answer that proves access: what it says, the refs it listed (None for a
    capability advertisement) and, if the client must not see it as it is, its
    replacement body."""

    advertisement: refs.RefAdvertisement
    view: RefView | None
    replacement: bytes | None = None
    #: for a large answer, read off the event loop: the cache's snapshot it was compared
    #: with there, and whether their refs differ (``refs.refs_differ``)
    compared: tuple[RepoState, bool] | None = None


def read_ref_answer(content_type: str, body: bytes, *, ls_refs: bool,
                    complete: bool = False, all_tags: bool = False) -> RefAnswer | None:
    """Parse a 200 answer to a ref request once (CPU work for repos with many refs: a large
    one runs off the event loop); None if it is not a ref answer (then it proves
    nothing). ``complete``: the question asked for every branch and tag, ``all_tags``:
    for every tag (the view says so)."""
    adv = refs.parse_ref_answer(content_type, body, ls_refs=ls_refs)
    if adv is None:
        return None
    if not ls_refs and adv.version == 2:
        try:
            return RefAnswer(adv, None, refs.restrict_v2_fetch_features(body))
        except ProtocolError:
            return None
    return RefAnswer(adv, RefView.of(adv.refs, adv.peeled, complete=complete,
                                     all_tags=all_tags))


def lists_all_branches_and_tags(prefixes: tuple[str, ...]) -> bool:
    """Whether an ls-refs with these ``ref-prefix`` values lists every branch and tag."""
    return not prefixes or all(any(want.startswith(p) for p in prefixes)
                               for want in ("refs/heads/", "refs/tags/"))


def lists_all_tags(prefixes: tuple[str, ...]) -> bool:
    """Whether an ls-refs with these ``ref-prefix`` values lists every tag."""
    return not prefixes or any("refs/tags/".startswith(p) for p in prefixes)


class AnswerPolicy:
    """Records verdicts and starts fills from the upstream's answers."""

    def __init__(self, decider: FetchDecider, store: RepoStore, inspector: Executor) -> None:
        self.decider = decider
        self.store = store
        self.inspector = inspector
        self._read_memo: OrderedDict[tuple[str, bool, bool, bool, bytes], RefAnswer | None] = (
            OrderedDict())
        self._differs: dict[str, tuple[tuple[bytes, str, str, tuple[str, ...]], bool]] = {}
        self._unread: set[str] = set()  # repo keys whose unreadable ref answer was logged

    async def answer(self, state: FlowState, status: int, headers: Mapping[str, str],
                     raw: bytes | None, cap: int) -> bytes | None:
        """The upstream answered ``state``'s request (``headers`` looked up by lower-case
        name, ``raw`` body unless streamed); returns a replacement body, if one is needed."""
        if state.repo is None or state.outcome is not Outcome.UPSTREAM:
            return None
        if status in DENIALS:
            self.denied(state, status, headers.get("www-authenticate"))
        elif status == 200 and state.kind in (Kind.INFO_REFS, Kind.LS_REFS):
            body = await bodies.read_answer(raw, headers.get("content-encoding"), cap,
                                            self.inspector)
            if body is None:
                return None
            prefixes = state.ls_refs.ref_prefixes if state.ls_refs else ()
            read = await self._read(state, headers.get("content-type", ""), body, prefixes)
            if read is not None:
                await self.granted(state, read, body)
                return read.replacement
            self._unreadable(state, headers.get("content-type", ""), body)
        return None

    def _unreadable(self, state: FlowState, content_type: str, body: bytes) -> None:
        """Log (once per repo) an answer with git's content type that is no ref answer
        goblet can read, e.g. one naming a ref that is not UTF-8: it proves nothing, so the
        repo's requests keep passing to the upstream, and an operator should know why."""
        assert state.repo is not None
        ls_refs = state.kind is Kind.LS_REFS
        if state.repo.key in self._unread or not refs.is_ref_answer_type(content_type,
                                                                          ls_refs=ls_refs):
            return
        if len(self._unread) >= MAX_UNREAD_REPOS:
            self._unread.clear()
        self._unread.add(state.repo.key)
        try:
            (refs.parse_ls_refs if ls_refs else refs.parse_info_refs)(body)
            why = "not a ref answer"
        except ProtocolError as e:
            why = e.reason
        log.warning("goblet: cannot read the upstream's %s answer for %s (%s): it proves "
                    "nothing, so this repo is served by the upstream", state.kind.value,
                    state.repo.url, why)

    async def _read(self, state: FlowState, content_type: str, body: bytes,
                    prefixes: tuple[str, ...]) -> RefAnswer | None:
        """``read_ref_answer`` of the answer to ``state``'s request (asked with
        ``prefixes``). The reading of a small answer is remembered (an upstream repeats the
        same answer until its refs move); a large one is read, and compared with the
        cache's refs, off the event loop."""
        ls_refs = state.kind is Kind.LS_REFS
        complete, all_tags = lists_all_branches_and_tags(prefixes), lists_all_tags(prefixes)
        if len(body) > INLINE_ANSWER_BYTES:
            return await run_sized(self.inspector, len(body), INLINE_ANSWER_BYTES,
                                   self._read_and_compare, state, content_type, body,
                                   prefixes, complete=complete, all_tags=all_tags)
        key = (content_type, ls_refs, complete, all_tags, body)
        if key in self._read_memo:
            self._read_memo.move_to_end(key)
            return self._read_memo[key]
        read = read_ref_answer(content_type, body, ls_refs=ls_refs, complete=complete,
                               all_tags=all_tags)
        self._read_memo[key] = read
        while len(self._read_memo) > MAX_READ_MEMO:
            self._read_memo.popitem(last=False)
        return read

    def _read_and_compare(self, state: FlowState, content_type: str, body: bytes,
                          prefixes: tuple[str, ...], *, complete: bool,
                          all_tags: bool) -> RefAnswer | None:
        """A large answer's reading (in a worker thread): with the cache's refs compared
        to it, and the hash of its view made, so the event loop does neither."""
        assert state.repo is not None
        read = read_ref_answer(content_type, body, ls_refs=state.kind is Kind.LS_REFS,
                               complete=complete, all_tags=all_tags)
        if read is None or read.view is None:
            return read
        hash(read.view.pairs)  # (a frozenset keeps its hash: the verdict cache needs it)
        snapshot = self.store.state(state.repo)
        if snapshot is None or read.advertisement.object_format != "sha1":
            return read
        return replace(read, compared=(snapshot, refs.refs_differ(
            read.advertisement.refs, snapshot.refs, prefixes)))

    async def _differ(self, state: FlowState, body: bytes, read: RefAnswer,
                      snapshot: RepoState, prefixes: tuple[str, ...]) -> bool:
        """``refs.refs_differ`` of ``read``'s refs (read from ``body``) and the cache's,
        remembered per repo for the same small answer to the same kind of request, cache
        refs (the snapshot's digest) and prefixes (at most MAX_MEMO_PREFIXES lines of
        MAX_MEMO_PREFIX_CHARS); at most MAX_READ_MEMO repos. Holds neither the reading
        nor the snapshot."""
        assert state.repo is not None
        if read.compared is not None and read.compared[0] is snapshot:
            return read.compared[1]
        repo_key, key = state.repo.key, (body, state.kind.value, snapshot.digest, prefixes)
        seen = self._differs.get(repo_key)
        if seen is not None and seen[0] == key:
            return seen[1]
        # (a small answer may come with a large cache: compared off the loop then)
        differ = await run_sized(self.inspector, len(snapshot.refs), INLINE_COMPARED_REFS,
                                 refs.refs_differ, read.advertisement.refs, snapshot.refs,
                                 prefixes)
        if len(body) > INLINE_ANSWER_BYTES or not snapshot.digest \
                or not small_question(prefixes, MAX_MEMO_PREFIXES, MAX_MEMO_PREFIX_CHARS):
            return differ  # (a large answer or question: read anew each time, never held)
        self._differs.pop(repo_key, None)
        self._differs[repo_key] = (key, differ)
        while len(self._differs) > MAX_READ_MEMO:
            self._differs.pop(next(iter(self._differs)))
        return differ

    def denied(self, state: FlowState, status: int, challenge: str | None) -> None:
        """The upstream refused this request (401, 403 or 404)."""
        assert state.repo is not None
        self.decider.verdicts.record(state.tenant, state.repo.url, granted=False,
                                     status=status, challenge=challenge)

    async def granted(self, state: FlowState, read: RefAnswer, body: bytes) -> None:
        """The upstream answered this ref request with ``read`` (read from ``body``):
        record the grant, and start a fill if the cache's refs differ from the ones it
        listed."""
        assert state.repo is not None
        decider, repo, adv = self.decider, state.repo, read.advertisement
        decider.verdicts.record(state.tenant, repo.url, granted=True, view=read.view)
        if adv.object_format != "sha1":
            decider.uncacheable.add(repo.key)
            return
        if read.view is None:
            return
        head = adv.symrefs.get("HEAD")
        if head:
            decider.heads[repo.key] = head
        prefixes = state.ls_refs.ref_prefixes if state.ls_refs else ()
        snapshot = self.store.state(repo)
        stale = (snapshot is None or await self._differ(state, body, read, snapshot, prefixes)
                 or bool(head and snapshot.head != head))
        if decider.isolation == "public" and decider.verdicts.is_denied(ANONYMOUS, repo.url):
            return  # not anonymously readable: never cached in public isolation
        if snapshot is None and decider.tee:
            return  # a repo not cached yet is filled by the fetch that follows (decide.py)
        if stale:  # (a new copy over the partition bound is not started: upstream serves)
            decider.start_fill(repo, state.credential, state.tenant, head)
