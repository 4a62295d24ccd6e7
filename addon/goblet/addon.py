"""The mitmproxy hooks: glue between flows and goblet's parts, and nothing else.

Per flow:

- ``tls_clienthello``: hosts outside ``goblet_hosts`` are relayed as opaque
  TCP (no interception, no need to trust our CA).
- ``requestheaders``: classify; everything but upload-pack requests of
  goblet hosts streams through untouched.
- ``request``: parse the upload-pack body; ls-refs and info/refs go upstream;
  a fetch is decided (``decide.FetchDecider``) and either rewritten to the
  serving backend, answered with a git error, or sent upstream.
- ``responseheaders``: stream every body except the ref answers we inspect.
- ``response``: record upstream's verdict for (tenant, repo); compare the
  advertised refs with the cache and start a fill when they differ.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mitmproxy import ctx, exceptions, http, tls

from goblet import options as opts
from goblet.auth.credentials import (
    Credential,
    TenantKeyer,
    credential_from_headers,
    short,
)
from goblet.auth.secret import load_or_create_secret
from goblet.auth.verdicts import VerdictCache
from goblet.cache.fill import Filler
from goblet.cache.gitrun import GitRunner
from goblet.cache.locks import RepoLocks
from goblet.cache.store import CacheRepo, RepoStore, canonical_url
from goblet.decide import FetchDecider, Route
from goblet.protocol import pktline, refs, request, routes
from goblet.protocol.errors import ProtocolError
from goblet.serve.backend import ServeBackend
from goblet.serve.plans import TOKEN_HEADER, PlanRegistry, ServePlan, clean_git_protocol

log = logging.getLogger("goblet")

ADVERTISEMENT_TYPE = "application/x-git-upload-pack-advertisement"
RESULT_TYPE = "application/x-git-upload-pack-result"
SECRET_FILE = "tenant-secret"  # noqa: S105 (a file name, not a secret)


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated option values."""

    cache_dir: Path
    hosts: frozenset[tuple[str, int]]
    verdict_ttl: int
    upstream_timeout: int
    instance: str
    max_request_bytes: int


@dataclass(slots=True)
class FlowState:
    """What goblet knows about one git flow; lives only in memory."""

    kind: str  # info_refs | ls_refs | fetch | upload_pack | push | other
    repo: CacheRepo | None = None
    tenant: str = ""
    credential: Credential = field(default_factory=Credential)
    version: int = 0
    ls_refs: request.LsRefsRequest | None = None
    outcome: str = "upstream"
    reason: str = ""
    plan: ServePlan | None = None
    started: float = field(default_factory=time.monotonic)


class Goblet:
    """The goblet addon."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.store: RepoStore | None = None
        self.decider: FetchDecider | None = None
        self.keyer: TenantKeyer | None = None
        self.plans = PlanRegistry()
        self.backend: ServeBackend | None = None
        self._flows: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = (
            weakref.WeakKeyDictionary()
        )

    # -- options -----------------------------------------------------------------

    def load(self, loader: object) -> None:
        """Declare goblet's options."""
        for spec in opts.OPTIONS:
            loader.add_option(spec.name, spec.typespec, spec.default, spec.help)  # type: ignore[attr-defined]

    def configure(self, updated: set[str]) -> None:
        """Validate all goblet options; refuse bad values with OptionsError."""
        if not any(name.startswith("goblet_") for name in updated):
            return
        o = ctx.options
        try:
            settings = Settings(
                cache_dir=opts.parse_cache_dir(o.goblet_cache_dir),
                hosts=opts.parse_hosts(o.goblet_hosts),
                verdict_ttl=opts.parse_seconds(
                    "goblet_verdict_ttl", o.goblet_verdict_ttl, 0, 3600
                ),
                upstream_timeout=opts.parse_seconds(
                    "goblet_upstream_timeout", o.goblet_upstream_timeout
                ),
                instance=opts.parse_instance(o.goblet_instance),
                max_request_bytes=opts.parse_size(
                    "goblet_max_request_bytes", o.goblet_max_request_bytes
                ),
            )
        except ValueError as e:
            raise exceptions.OptionsError(f"goblet: {e}") from e
        if self.settings is not None and self.store is not None:
            if settings.cache_dir != self.settings.cache_dir:
                raise exceptions.OptionsError("goblet: goblet_cache_dir cannot change at run time")
            if self.decider is not None:
                self.decider.verdicts.ttl = settings.verdict_ttl
        self.settings = settings

    # -- life cycle --------------------------------------------------------------

    async def running(self) -> None:
        """Create the cache layout, load the tenant secret, start the backend."""
        s = self.settings
        assert s is not None
        ca = getattr(ctx.options, "ssl_verify_upstream_trusted_ca", None)
        base_config: list[tuple[str, str]] = []
        if ca:
            base_config.append(("http.sslCAInfo", str(Path(ca).resolve())))
        if getattr(ctx.options, "ssl_insecure", False):
            base_config.append(("http.sslVerify", "false"))
        git = GitRunner(home=s.cache_dir / "home", base_config=base_config)
        store = RepoStore(s.cache_dir, git)
        try:
            store.prepare()
            secret = load_or_create_secret(s.cache_dir / SECRET_FILE)
        except (OSError, ValueError) as e:
            log.error("goblet: cannot use cache dir %s: %s", s.cache_dir, e)
            return
        locks = RepoLocks(store.lock_dir)
        filler = Filler(store, locks, git, stall_timeout=s.upstream_timeout)
        self.store = store
        self.keyer = TenantKeyer(secret)
        self.decider = FetchDecider(store, filler, VerdictCache(s.verdict_ttl))
        self.backend = ServeBackend(git, self.plans)
        await self.backend.start()
        hosts = ",".join(sorted(h if p == 443 else f"{h}:{p}" for h, p in s.hosts))
        log.info(
            "goblet ready: instance=%s cache_dir=%s hosts=%s verdict_ttl=%ds "
            "upstream_timeout=%ds backend=127.0.0.1:%d",
            s.instance, s.cache_dir, hosts, s.verdict_ttl, s.upstream_timeout, self.backend.port,
        )

    async def done(self) -> None:
        """Stop the backend and its children."""
        if self.backend is not None:
            await self.backend.stop()

    # -- connection level --------------------------------------------------------

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Relay TLS to hosts we do not cache without intercepting it."""
        if self.settings is None:
            return
        address = data.context.server.address
        sni = data.client_hello.sni
        port = address[1] if address else 443
        names = {(sni.lower(), port)} if sni else set()
        if address:
            names.add((str(address[0]).lower(), port))
        if not names & self.settings.hosts:
            data.ignore_connection = True

    # -- request side ------------------------------------------------------------

    def _classify(self, flow: http.HTTPFlow) -> routes.Route | None:
        """The git route of a flow to a goblet host, or None for other traffic."""
        s = self.settings
        req = flow.request
        if s is None or self.decider is None or req.scheme != "https":
            return None
        host = req.host.lower()
        if (host, req.port) not in s.hosts:
            return None
        header = (req.host_header or "").lower()
        if header not in (host, f"{host}:{req.port}") and not (
            header.startswith("[") and header.split("]")[0][1:] == host
        ):
            return None  # Host header disagrees with the connection: never cache it
        return routes.classify(req.method, req.path)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Classify the flow; stream everything we do not need to read."""
        if flow.response or flow.error or not flow.live:
            return
        try:
            route = self._classify(flow)
        except ProtocolError as e:
            self._flows[flow] = FlowState("invalid", reason=e.reason)
            return
        if route is None or route.kind in (routes.Kind.OTHER, routes.Kind.PUSH):
            flow.request.stream = True
            if route is not None:
                self._flows[flow] = FlowState(route.kind.value)
            return
        assert self.keyer is not None and self.settings is not None
        credential = credential_from_headers(flow.request.headers.items(multi=True))
        repo = self._repo(flow, route.repo_path)
        state = FlowState(
            route.kind.value,
            repo=repo,
            tenant=self.keyer.tenant_id(credential),
            credential=credential,
            version=_protocol_version(flow.request.headers.get("git-protocol")),
        )
        self._flows[flow] = state
        length = flow.request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.settings.max_request_bytes:
            flow.request.stream = True
            state.kind, state.reason = "upload_pack", "request body over the inspection limit"

    def _repo(self, flow: http.HTTPFlow, repo_path: str) -> CacheRepo:
        assert self.store is not None
        return self.store.repo_for(canonical_url(flow.request.host, flow.request.port, repo_path))

    async def request(self, flow: http.HTTPFlow) -> None:
        """Route upload-pack requests: upstream, cache, or a git-readable error."""
        if flow.response or flow.error or not flow.live:
            return
        state = self._flows.get(flow)
        if state is None:
            return
        if state.kind == "invalid":
            flow.request.stream = False
            flow.response = _text_response(400, f"goblet: bad repository path: {state.reason}")
            state.outcome = "error"
            return
        if state.kind != "upload_pack" or flow.request.stream or state.repo is None:
            return
        assert self.settings is not None and self.decider is not None
        raw = flow.request.raw_content or b""
        if len(raw) > self.settings.max_request_bytes:
            state.reason = "request body over the inspection limit"
            return
        try:
            body = flow.request.get_content(strict=True) or b""
            parsed: request.V2Request | request.FetchRequest | request.ProbeRequest
            if state.version == 2:
                parsed = request.parse_v2(body)
            else:
                parsed = request.parse_v0(body, state.version)
        except ProtocolError as e:
            flow.response = _text_response(400, f"goblet: malformed request: {e.reason}")
            state.outcome, state.reason = "error", e.reason
            return
        except ValueError as e:
            flow.response = _text_response(400, f"goblet: undecodable request body: {e}")
            state.outcome, state.reason = "error", "undecodable body"
            return
        if isinstance(parsed, request.LsRefsRequest):
            state.kind, state.ls_refs = "ls_refs", parsed
            return
        if not isinstance(parsed, request.FetchRequest):
            return
        state.kind = "fetch"
        decision = await self.decider.decide(state.repo, state.tenant, state.credential, parsed)
        state.reason = decision.reason
        if not flow.live or flow.error:
            return
        if decision.route is Route.ERROR:
            flow.response = http.Response.make(
                200, pktline.error_packet(decision.reason), {"Content-Type": RESULT_TYPE}
            )
            state.outcome = "error"
        elif decision.route is Route.CACHE:
            self._to_backend(flow, state, body)

    def _to_backend(self, flow: http.HTTPFlow, state: FlowState, body: bytes) -> None:
        """Rewrite ``flow`` so mitmproxy fetches its answer from our backend."""
        assert self.backend is not None and state.repo is not None
        plan = ServePlan(
            repo_dir=state.repo.path,
            body=body,
            git_protocol=clean_git_protocol(flow.request.headers.get("git-protocol")),
            label=state.repo.url,
        )
        token = self.plans.register(plan)
        req = flow.request
        req.scheme, req.host, req.port = "http", "127.0.0.1", self.backend.port
        req.headers = http.Headers([
            (b"Host", f"127.0.0.1:{self.backend.port}".encode()),
            (b"Content-Length", b"0"),
            (TOKEN_HEADER.encode(), token.encode()),
        ])
        req.raw_content = b""
        state.outcome, state.plan = "cache", plan

    # -- response side -----------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Stream all bodies except the ref answers the response hook reads."""
        state = self._flows.get(flow)
        if flow.response is None:
            return
        if state is not None and state.outcome == "error":
            return  # our own answer, already in memory
        if state is not None and state.kind in ("info_refs", "ls_refs") \
                and flow.response.status_code == 200:
            return
        flow.response.stream = True
        if state is not None and self.settings is not None:
            flow.response.headers["X-Served-By"] = self.settings.instance

    def response(self, flow: http.HTTPFlow) -> None:
        """Record upstream's verdict; start a fill when upstream's refs moved."""
        state = self._flows.pop(flow, None)
        if state is None or flow.response is None:
            return
        if state.repo is not None and state.outcome == "upstream" and self.decider is not None:
            self._record_verdict(flow, state)
            if flow.response.status_code == 200 and state.kind in ("info_refs", "ls_refs"):
                self._refs_seen(flow, state)
        self._log(flow, state)

    def error(self, flow: http.HTTPFlow) -> None:
        """Log a flow that ended without a response."""
        state = self._flows.pop(flow, None)
        if state is not None:
            state.outcome = "error"
            state.reason = flow.error.msg if flow.error else "flow error"
            self._log(flow, state)

    def _record_verdict(self, flow: http.HTTPFlow, state: FlowState) -> None:
        assert flow.response is not None and state.repo is not None and self.decider is not None
        status = flow.response.status_code
        ctype = flow.response.headers.get("content-type", "")
        verdicts = self.decider.verdicts
        if status in (401, 403, 404):
            verdicts.record(state.tenant, state.repo.url, granted=False)
        elif status == 200 and ctype.split(";")[0].strip() in (ADVERTISEMENT_TYPE, RESULT_TYPE):
            verdicts.record(state.tenant, state.repo.url, granted=True)

    def _refs_seen(self, flow: http.HTTPFlow, state: FlowState) -> None:
        assert flow.response is not None and state.repo is not None
        assert self.store is not None and self.decider is not None
        repo = state.repo
        body = flow.response.get_content(strict=False) or b""
        try:
            if state.kind == "ls_refs":
                adv = refs.parse_ls_refs(body)
            else:
                adv = refs.parse_info_refs(body)
        except ProtocolError as e:
            log.warning("unparsable ref answer from %s: %s", repo.url, e.reason)
            return
        if adv.object_format != "sha1":
            self.decider.uncacheable.add(repo.key)
            return
        if adv.version == 2 and state.kind == "info_refs":
            # v2 capabilities only (the refs come with ls-refs): hide the fetch
            # features only upstream could serve, so clients do not use them.
            restricted = refs.restrict_v2_fetch_features(body)
            if restricted is not None:
                flow.response.content = restricted
            return
        head = adv.symrefs.get("HEAD")
        if head:
            self.decider.heads[repo.key] = head
        prefixes = state.ls_refs.ref_prefixes if state.ls_refs else ()
        snapshot = self.store.state(repo)
        stale = snapshot is None or refs.refs_differ(adv.refs, snapshot.refs, prefixes)
        if not stale and head and snapshot is not None and snapshot.head != head:
            stale = True
        if stale:
            self.decider.filler.start(repo, state.credential, head or self.decider.heads.get(
                repo.key))

    def _log(self, flow: http.HTTPFlow, state: FlowState) -> None:
        status = flow.response.status_code if flow.response else "-"
        sent = state.plan.stats.bytes_sent if state.plan else None
        if state.plan is not None and not state.plan.stats.complete:
            state.outcome = "error"
            state.reason = state.plan.stats.error or "cache stream incomplete"
        log.info(
            "git %s %s tenant=%s outcome=%s status=%s bytes=%s duration=%.3fs%s",
            state.kind,
            state.repo.url if state.repo else _url_without_query(flow),
            short(state.tenant) if state.tenant else "-",
            state.outcome,
            status,
            sent if sent is not None else "-",
            time.monotonic() - state.started,
            f" reason={state.reason!r}" if state.reason else "",
        )


def _url_without_query(flow: http.HTTPFlow) -> str:
    """Scheme, host and path of the original request; queries may hold tokens."""
    req = flow.request
    return f"{req.scheme}://{req.pretty_host}{req.path.split('?', 1)[0]}"


def _protocol_version(header: str | None) -> int:
    """The protocol version a Git-Protocol header asks for (0 if none)."""
    for item in (header or "").split(":"):
        if item.startswith("version="):
            value = item.split("=", 1)[1]
            if value in ("1", "2"):
                return int(value)
    return 0


def _text_response(status: int, message: str) -> http.Response:
    line = " ".join(message.split())[:300] + "\n"
    return http.Response.make(status, line.encode(), {"Content-Type": "text/plain; charset=utf-8"})


def make_addons() -> Sequence[object]:
    """The addon list for the ``mitmdump -s`` entry script."""
    return [Goblet()]
