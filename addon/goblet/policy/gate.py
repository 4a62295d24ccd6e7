"""The flow policy: for each step of a git request, what should happen to it.

The addon hands over what it read from a flow and gets back an ``Action``,
which it applies to the flow; nothing here knows mitmproxy.

- ``state_for``: who is asking (credential, tenant id), for which cache repo
  (partition by isolation mode), in which protocol version.
- ``upload_pack``: read the body (``bodies.py``), parse it (off the event
  loop), and for a fetch ask ``decide.py``; ls-refs go upstream (in offline
  mode via ``forward``). Decoded bodies held by requests in progress share a
  budget of twice ``goblet_max_request_bytes``; a body beyond it passes
  through uninspected, and one going upstream is let go at once.
- ref requests within ``goblet_refs_ttl``: answered from the cache when
  ``refcache.py`` (the rule: ``freshness.py``) finds that safe.
- ``forward``: offline mode's own forwarding of a ref request, and what to
  answer when that very request finds the upstream down (``offline.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, replace

from goblet.auth.credentials import TenantKeyer, credential_from_headers
from goblet.auth.partition import partition, proxy_logins_verified
from goblet.cache.store import RepoStore, canonical_url
from goblet.cache.teefill import TeeFill
from goblet.decide import FetchDecider, Route
from goblet.observe.endpoints import Answer
from goblet.observe.metrics import Metrics
from goblet.offline.ask import UpstreamAsker
from goblet.offline.forward import UpstreamAnswer, UpstreamUnreachable
from goblet.options import Settings
from goblet.policy import bodies, offline
from goblet.policy.flows import FlowState, Kind, Outcome
from goblet.policy.offload import INLINE_REQUEST_BYTES, run_sized
from goblet.policy.refcache import CachedRefs, RefsFromCache
from goblet.policy.requests import Classified
from goblet.protocol import pktline, request
from goblet.protocol.errors import ProtocolError
from goblet.protocol.routes import RESULT_TYPE
from goblet.serve.plans import ServePlan, clean_git_protocol, served_version


@dataclass(frozen=True, slots=True)
class Upstream:
    """Let the request go to the upstream as it is (its answer feeding ``tee``, if set)."""

    tee: TeeFill | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer with this response; ``outcome``/``reason`` are the request's, if set."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    outcome: Outcome | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Serve:
    """Answer from the cache with ``plan`` (outcome ``cache`` or ``offline``)."""

    plan: ServePlan
    outcome: Outcome


Action = Upstream | Reply | Serve
TEXT = (("Content-Type", "text/plain; charset=utf-8"),)


def refuse(status: int, message: str, challenge: str | None = None) -> Reply:
    """goblet's own refusal: ``status`` with ``message`` as one short line."""
    line = " ".join(message.split())[:300] + "\n"
    auth = (("WWW-Authenticate", challenge),) if challenge else ()
    return Reply(status, line.encode(), TEXT + auth, Outcome.ERROR, message)


def git_error(message: str) -> Reply:
    """A git ``ERR`` packet with status 200 (git shows "remote error: <message>")."""
    return Reply(200, pktline.error_packet(message), (("Content-Type", RESULT_TYPE),),
                 Outcome.ERROR)


def relay(answer: UpstreamAnswer) -> Reply:
    """What the upstream answered goblet's own forwarding, byte for byte."""
    return Reply(answer.status, answer.body, tuple(answer.headers))


ServePlanner = Callable[..., ServePlan]
MAX_PARSE_MEMO = 256  # small request bodies whose parse is remembered (≤ 1 KiB each)


def parse_upload_pack(body: bytes, version: int) -> request.V2Request | request.FetchRequest:
    """Parse an upload-pack request body in protocol ``version`` (CPU work: a large one
    runs off the event loop, ``policy/offload.py``)."""
    return request.parse_v2(body) if version == 2 else request.parse_v0(body, version)


# The parse of a small body (≤ INLINE_REQUEST_BYTES), remembered: CI clients repeat the
# same few questions, and the parsed requests are immutable. (A malformed body raises
# each time.)
_parse_small = functools.lru_cache(maxsize=MAX_PARSE_MEMO)(parse_upload_pack)


@dataclass(frozen=True, slots=True)
class ServedForms:
    """What answering a fetch from the cache takes from its body, besides the parse:
    the body without include-tag (if it asks for that) and the pack-cache identities
    (a final fetch). Made, like the parse, off the event loop for a large body (a body
    of tiny pkt-lines costs about 0.5 ms per KiB per walk), and only for an answer."""

    untagged: bytes | None = None
    identity: bytes | None = None
    untagged_identity: bytes | None = None


def served_forms(body: bytes, include_tag: bool, final: bool) -> ServedForms:
    """The ``ServedForms`` of a fetch ``body`` (``request.without_include_tag``,
    ``request.cache_identity``)."""
    untagged = request.without_include_tag(body) if include_tag else None
    if not final:
        return ServedForms(untagged)
    return ServedForms(untagged, request.cache_identity(body),
                       request.cache_identity(untagged) if untagged is not None else None)


_forms_small = functools.lru_cache(maxsize=MAX_PARSE_MEMO)(served_forms)


class FlowPolicy:
    """Answers the addon's questions about flows, from the running parts."""

    def __init__(self, settings: Callable[[], Settings], *, keyer: TenantKeyer,
                 store: RepoStore, decider: FetchDecider, asker: UpstreamAsker | None,
                 metrics: Metrics, inspector: Executor, planner: ServePlanner,
                 endpoints: Callable[[str], Awaitable[Answer]] | None = None,
                 refs: RefsFromCache | None = None) -> None:
        self.settings = settings
        self.keyer = keyer
        self.store = store
        self.decider = decider
        self.asker = asker
        self.metrics = metrics
        self.inspector = inspector
        self.planner = planner
        self.endpoints = endpoints
        self.refs = refs  # ref requests answered within goblet_refs_ttl
        self._held = 0  # bytes of decoded request bodies held by flows in progress
        self._raw = 0  # bytes of request bodies mitmproxy holds for goblet until read

    def state_for(self, got: Classified, host: str, port: int, *,
                  headers: Iterable[tuple[str, str]], proxy_login: tuple[str, str] | None,
                  proxyauth: str | None, git_protocol: str | None) -> FlowState:
        """The FlowState of a classified git request (``proxyauth``: mitmproxy's option)."""
        credential = credential_from_headers(headers, proxy_login)
        tenant = self.keyer.tenant_id(credential)
        url = canonical_url(host, port, got.repo_path)
        where = partition(self.settings().isolation, credential, tenant, self.keyer,
                          verified_proxy_user=proxy_logins_verified(proxyauth))
        return FlowState(got.kind, repo=self.store.repo_for(url, where), tenant=tenant,
                         credential=credential, host=url.split("/", 3)[2],
                         version=served_version(git_protocol))

    async def route(self, state: FlowState, *, method: str, path: str, streamed: bool,
                    headers: list[tuple[str, str]], raw: bytes | None, enc: str | None,
                    git_protocol: str | None) -> Action:
        """What to do with a request whose body has arrived (``streamed``: it was passed
        on unread)."""
        if state.kind is Kind.ENDPOINT and self.endpoints is not None:
            got = await self.endpoints(path)
            return Reply(got.status, b"" if method == "HEAD" else got.body,
                         (("Content-Type", got.content_type), ("Cache-Control", "no-store")))
        if state.kind is Kind.INVALID:
            return refuse(400, f"goblet: {state.reason}")
        self._arrived(state, 0 if streamed or raw is None else len(raw))
        action: Action = Upstream()
        if state.kind is Kind.UPLOAD_PACK and not streamed:
            action = await self.upload_pack(state, raw, enc, git_protocol)
        if isinstance(action, Upstream) and self.refs is not None:
            try:
                cached = await self.refs.answer(state, git_protocol)
            except ProtocolError as e:
                return git_error(f"goblet: {e.reason}")
            if isinstance(cached, CachedRefs):
                return Reply(200, cached.body, (("Content-Type", cached.content_type),
                                                ("Cache-Control", "no-cache")), Outcome.CACHE)
            if cached is not None:
                action = Serve(cached, Outcome.CACHE)
        if isinstance(action, Upstream) and self.settings().offline and state.kind in (
                Kind.INFO_REFS, Kind.LS_REFS):
            action = await self.forward(state, method, path, headers=headers, raw=raw,
                                        git_protocol=git_protocol)
        if isinstance(action, Upstream):
            if state.ls_refs is not None:  # (kept until the answer is read)
                state.ls_refs = request.kept_question(state.ls_refs)
            self.release(state)  # a decoded body going upstream is let go at once
        elif isinstance(action, Serve):
            self._arrived(state, 0)  # the backend answers: the flow's body is dropped
        return action

    async def upload_pack(self, state: FlowState, raw: bytes | None, enc: str | None,
                          git_protocol: str | None) -> Action:
        """What to do with an upload-pack POST (``state.kind`` becomes what it is)."""
        assert state.repo is not None
        if state.version == request.UNREADABLE_VERSION:
            state.reason = "a Git-Protocol header goblet does not pass on"
            return Upstream()
        s = self.settings()
        got = await bodies.read_body(raw, enc, s.max_request_bytes, self.inspector)
        if got.body is not None and not self._hold(state, len(got.body)):
            got = bodies.BodyVerdict("busy", reason=bodies.BUSY)
        self.metrics.of(self.metrics.request_bodies, got.result).inc()
        if got.result == "invalid":
            return refuse(400, got.reason)
        if got.body is None:
            state.reason = state.reason or got.reason
            return Upstream()
        try:
            small = len(got.body) <= INLINE_REQUEST_BYTES
            parsed = await run_sized(self.inspector, len(got.body), INLINE_REQUEST_BYTES,
                                     _parse_small if small else parse_upload_pack, got.body,
                                     state.version)
        except ProtocolError as e:
            return refuse(400, f"goblet: malformed request: {e.reason}")
        state.body = got.body
        if isinstance(parsed, request.LsRefsRequest):
            state.kind, state.ls_refs = Kind.LS_REFS, parsed
            return Upstream()
        if not isinstance(parsed, request.FetchRequest):
            return Upstream()
        state.kind = Kind.FETCH
        decision = await self.decider.decide(state.repo, state.tenant, state.credential,
                                             parsed, state.host)
        state.reason = decision.reason
        if decision.route is Route.ERROR:
            return git_error(decision.reason)
        if decision.route in (Route.UPSTREAM, Route.TEE):
            self.release(state)
            return Upstream(decision.tee)
        notice = decision.notice or (self.refs.notice_for(state.tenant, state.repo.key)
                                     if self.refs is not None else None)
        # (``decide.py`` rule 8; following no tag is answering without ``include-tag``)
        follows = parsed.include_tag and bool(decision.tags)
        read = await run_sized(self.inspector, len(got.body), INLINE_REQUEST_BYTES,
                               _forms_small if small else served_forms, got.body,
                               parsed.include_tag, parsed.done)
        untag = parsed.include_tag and not follows and read.untagged is not None
        plan = self.planner(state.repo, read.untagged if untag else got.body,
                            clean_git_protocol(git_protocol), notice=notice,
                            final=parsed.done,
                            identity=read.untagged_identity if untag else read.identity,
                            tags=decision.tags if follows else None,
                            untagged=read.untagged if follows and parsed.haves else None)
        return Serve(plan, Outcome.OFFLINE if decision.offline else Outcome.CACHE)

    def intake(self, state: FlowState, content_length: str, *, streamed: bool,
               body: bool) -> bodies.Intake:
        """``bodies.intake`` of ``state``'s request, whose body, if mitmproxy is to hold it
        for goblet, takes its ``Content-Length`` (the cap, when it announces none) of the
        budget of bodies held at once (twice ``goblet_max_request_bytes``; ``release``
        gives it back). Over that budget the body is passed on unread, as a larger one
        is: a client cannot make goblet hold more."""
        cap = self.settings().max_request_bytes
        got = bodies.intake(state.kind, content_length, cap, streamed, body=body)
        if got.stream or not body or state.kind is not Kind.UPLOAD_PACK:
            return got  # (only an upload-pack POST has a body goblet reads)
        size = int(content_length) if content_length.isdigit() else cap
        if self._raw + size > 2 * cap:
            state.reason = bodies.BUSY_RAW
            self.metrics.of(self.metrics.request_bodies, "busy").inc()
            return bodies.Intake(stream=True, timed=False)
        self._raw += size
        state.raw_held = size
        return got

    def _arrived(self, state: FlowState, size: int) -> None:
        """``state``'s body as received is ``size`` bytes (0: not held, or no longer): its
        share of the budget comes down to that (a chunked body took the cap)."""
        if state.raw_held > size:
            self._raw -= state.raw_held - size
            state.raw_held = size

    def _hold(self, state: FlowState, size: int) -> bool:
        """Take ``size`` bytes of the budget of decoded bodies held at once (twice
        ``goblet_max_request_bytes``); False when it is spent."""
        if self._held + size > 2 * self.settings().max_request_bytes:
            return False
        self._held += size
        state.held = size
        return True

    def release(self, state: FlowState, *, ended: bool = False) -> None:
        """``state`` no longer needs its decoded body: it went upstream, or (``ended``) its
        request ended. Only the end gives back the share of the body as received
        (mitmproxy holds it in the flow until then)."""
        self._held -= state.held
        state.held, state.body = 0, b""
        if ended:
            self._arrived(state, 0)

    async def forward(self, state: FlowState, method: str, path: str, *,
                      headers: list[tuple[str, str]], raw: bytes | None,
                      git_protocol: str | None) -> Action:
        """Offline mode: forward a ref request (``raw`` body as received) ourselves; if
        that very request finds the upstream down (no answer, or a 5xx goblet confirms),
        answer offline."""
        assert self.asker is not None and state.repo is not None
        try:
            answer: UpstreamAnswer | None = await self.asker.forward(
                state.host, method, f"https://{state.host}{path}", headers, raw)
        except UpstreamUnreachable as e:
            answer, why = None, f"upstream unreachable: {e}"
        except ValueError as e:
            return refuse(400, f"goblet: bad request: {e}")
        if answer is not None and answer.status < 500:
            return relay(answer)
        if not await self.asker.confirm_outage(state.host, state.repo.url):
            # the upstream is up: this request failed for reasons of its own; mitmproxy
            # sends it once more, exactly as without goblet
            return relay(answer) if answer is not None else Upstream()
        if answer is not None:
            why = f"upstream answered {answer.status}"
        state.reason = why
        got = offline.offline_ref_answer(self.decider, state, why,
                                         failed_answer=answer is not None)
        if isinstance(got, offline.ServeOffline):
            return Serve(self.planner(state.repo, state.body, clean_git_protocol(git_protocol),
                                      advertise=got.advertise, prefix=got.prefix,
                                      hidden_refs=got.hidden,
                                      drop_head_symref="HEAD" in got.hidden),
                         Outcome.OFFLINE)
        if isinstance(got, offline.Refuse):
            return refuse(got.status, got.message, got.challenge)
        assert answer is not None
        return replace(relay(answer), reason=why)
