"""The flow policy: for each step of a git request, what should happen to it.

The addon hands over what it read from a flow and gets back an ``Action``,
which it applies to the flow; nothing here knows mitmproxy.

- ``state_for``: who is asking (credential, tenant id), for which cache repo
  (partition by isolation mode), in which protocol version.
- ``upload_pack``: read the body (``bodies.py``), parse it, and for a fetch
  ask ``decide.py``; ls-refs go upstream (in offline mode via ``forward``).
- ``forward``: offline mode's own forwarding of a ref request, and what to
  answer when that very request finds the upstream down (``offline.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

from goblet.auth.credentials import TenantKeyer, credential_from_headers
from goblet.auth.partition import partition, proxy_logins_verified
from goblet.cache.store import RepoStore, canonical_url
from goblet.decide import FetchDecider, Route
from goblet.metrics import Metrics
from goblet.offline.ask import UpstreamAsker
from goblet.offline.forward import UpstreamAnswer, UpstreamUnreachable
from goblet.options import Settings
from goblet.policy import bodies, offline
from goblet.policy.flows import FlowState, Kind, Outcome
from goblet.policy.requests import Classified
from goblet.protocol import request
from goblet.protocol.errors import ProtocolError
from goblet.serve.plans import ServePlan, clean_git_protocol


@dataclass(frozen=True, slots=True)
class Upstream:
    """Let the request go to the upstream as it is."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer ``status`` with a one-line ``message`` (and a ``challenge``)."""

    status: int
    message: str
    challenge: str | None = None


@dataclass(frozen=True, slots=True)
class GitError:
    """Answer 200 with a git ``ERR`` packet (git shows "remote error: <message>")."""

    message: str


@dataclass(frozen=True, slots=True)
class Serve:
    """Answer from the cache with ``plan`` (outcome ``cache`` or ``offline``)."""

    plan: ServePlan
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Relay:
    """Answer with what the upstream answered goblet's own forwarding."""

    answer: UpstreamAnswer


Action = Upstream | Refuse | GitError | Serve | Relay
ServePlanner = Callable[..., ServePlan]


class FlowPolicy:
    """Answers the addon's questions about flows, from the running parts."""

    def __init__(self, settings: Callable[[], Settings], *, keyer: TenantKeyer,
                 store: RepoStore, decider: FetchDecider, asker: UpstreamAsker | None,
                 metrics: Metrics, inspector: Executor, planner: ServePlanner) -> None:
        self.settings = settings
        self.keyer = keyer
        self.store = store
        self.decider = decider
        self.asker = asker
        self.metrics = metrics
        self.inspector = inspector
        self.planner = planner

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
                         version=request.protocol_version(git_protocol))

    async def upload_pack(self, state: FlowState, raw: bytes | None, enc: str | None,
                          git_protocol: str | None) -> Action:
        """What to do with an upload-pack POST (``state.kind`` becomes what it is)."""
        assert state.repo is not None
        s = self.settings()
        got = await bodies.read_body(raw, enc, s.max_request_bytes, self.inspector)
        self.metrics.request_bodies.labels(got.result).inc()
        if got.result == "invalid":
            return Refuse(400, got.reason)
        if got.body is None:
            state.reason = state.reason or got.reason
            return Upstream()
        state.body = got.body
        try:
            parsed = (request.parse_v2(got.body) if state.version == 2
                      else request.parse_v0(got.body, state.version))
        except ProtocolError as e:
            return Refuse(400, f"goblet: malformed request: {e.reason}")
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
            return GitError(decision.reason)
        if decision.route is Route.UPSTREAM:
            return Upstream()
        plan = self.planner(state.repo, got.body, clean_git_protocol(git_protocol),
                            notice=decision.notice, final=parsed.done)
        return Serve(plan, Outcome.OFFLINE if decision.offline else Outcome.CACHE)

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
            return Refuse(400, f"goblet: bad request: {e}")
        if answer is not None:
            if answer.status < 500 or not await self.asker.confirm_outage(
                    state.host, state.repo.url):
                return Relay(answer)
            why = f"upstream answered {answer.status}"
        state.reason = why
        got = offline.offline_ref_answer(self.decider, state, why,
                                         failed_answer=answer is not None)
        if isinstance(got, offline.ServeOffline):
            return Serve(self.planner(state.repo, state.body, clean_git_protocol(git_protocol),
                                      advertise=got.advertise, prefix=got.prefix,
                                      hidden_refs=got.hidden), Outcome.OFFLINE)
        if isinstance(got, offline.Refuse):
            return Refuse(got.status, got.message, got.challenge)
        assert answer is not None
        return Relay(answer)
