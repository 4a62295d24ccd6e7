"""The mitmproxy hooks: glue between flows and goblet's parts, and nothing else.

Per flow:

- ``tls_clienthello``: hosts outside ``goblet_hosts`` are relayed as opaque
  TCP (no interception, no need to trust our CA).
- ``requestheaders``: answer the observability endpoints; classify git
  requests; everything but upload-pack requests of goblet hosts streams through.
- ``request``: parse the upload-pack body; ls-refs and info/refs go upstream;
  a fetch is decided (``decide.FetchDecider``) and either rewritten to the
  serving backend, answered with a git error, or sent upstream.
- ``responseheaders``: stream every body except the ref answers we inspect.
- ``response``/``error``: record upstream's verdict for (tenant, repo); start
  a fill when upstream's refs moved; count and log the request.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache

from mitmproxy import ctx, exceptions, http, tls
from mitmproxy.net.http import url as http_url
from mitmproxy.utils import human

from goblet import options as opts
from goblet.auth.credentials import ANONYMOUS, Credential, credential_from_headers
from goblet.auth.partition import partition, proxy_logins_verified
from goblet.auth.verdicts import RefView
from goblet.cache.store import CacheRepo, canonical_url
from goblet.decide import Route
from goblet.observe.access import AccessLog, AccessRecord
from goblet.observe.endpoints import PATHS as ENDPOINT_PATHS
from goblet.observe.metrics import status_class
from goblet.offline.ask import answer_is_grant
from goblet.offline.forward import UpstreamAnswer, UpstreamUnreachable
from goblet.protocol import encoding, pktline, refs, request, routes
from goblet.protocol.errors import ProtocolError
from goblet.protocol.routes import RESULT_TYPE
from goblet.runtime import Runtime, resolve_ca
from goblet.serve.packcache import cache_key
from goblet.serve.plans import TOKEN_HEADER, ServePlan, clean_git_protocol

log = logging.getLogger("goblet")

_METRIC_KIND = {"info_refs": "info_refs", "ls_refs": "ls_refs", "fetch": "fetch", "push": "push"}


@dataclass(slots=True)
class FlowState:
    """What goblet knows about one git flow; lives only in memory."""

    kind: str  # info_refs | ls_refs | fetch | upload_pack | push | other | invalid | endpoint
    # outcome: cache | upstream | offline | error ("denied" is derived at the end)
    repo: CacheRepo | None = None
    tenant: str = ""
    credential: Credential = field(default_factory=Credential)
    version: int = 0
    ls_refs: request.LsRefsRequest | None = None
    outcome: str = "upstream"
    reason: str = ""
    plan: ServePlan | None = None
    host: str = ""  # upstream host[:port] as in goblet_hosts
    upstream_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    body_timer: asyncio.TimerHandle | None = None
    timed_out: bool = False

    def body_arrived(self) -> None:
        """The request body is complete: stop its timeout."""
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def count_bytes(self, data: bytes) -> bytes:
        """A response ``stream`` callable that counts what passes through."""
        self.upstream_bytes += len(data)
        return data


class Goblet:
    """The goblet addon."""

    def __init__(self) -> None:
        self.settings: opts.Settings | None = None
        self.rt: Runtime | None = None
        self.access = AccessLog()
        self._flows: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = (
            weakref.WeakKeyDictionary()
        )
        # Decoding compressed request bodies is CPU work: two threads at most, so
        # at most two bodies of goblet_max_request_bytes are being decoded at once.
        self._inspector = ThreadPoolExecutor(max_workers=2, thread_name_prefix="goblet-inspect")

    # -- options and life cycle ----------------------------------------------------

    def load(self, loader: object) -> None:
        """Declare goblet's options."""
        for spec in opts.OPTIONS:
            loader.add_option(spec.name, spec.typespec, spec.default, spec.help)  # type: ignore[attr-defined]

    def configure(self, updated: set[str]) -> None:
        """Validate all goblet options; refuse bad values with OptionsError."""
        if not any(name.startswith("goblet_") for name in updated):
            return
        try:
            settings = opts.parse_settings(ctx.options)
        except ValueError as e:
            raise exceptions.OptionsError(f"goblet: {e}") from e
        if self.rt is not None and self.settings is not None:
            if frozen := opts.needing_restart(self.settings, settings):
                raise exceptions.OptionsError(
                    f"goblet: {', '.join(frozen)} cannot change at run time (restart goblet)")
            self.rt.reconfigure(settings)
        self.access.configure(settings.log_format)
        self.settings = settings
        if settings.prefix_port:
            mode = f"regular@{settings.prefix_port}"
            if mode not in ctx.options.mode:
                ctx.options.update(mode=[*ctx.options.mode, mode])
        limit = getattr(ctx.options, "stream_large_bodies", "0")
        if limit is None or (human.parse_size(limit) or 0) > settings.max_request_bytes:
            # mitmproxy buffers the bodies goblet inspects; past this size it
            # streams them instead (they pass through uninspected).
            ctx.options.update(stream_large_bodies=str(settings.max_request_bytes))
        if settings.offline and getattr(ctx.options, "connection_strategy", "lazy") != "lazy":
            # An eager CONNECT fails outright when the upstream is down, before
            # goblet sees a request it could answer from the cache.
            log.info("goblet: goblet_offline=on sets connection_strategy=lazy")
            ctx.options.update(connection_strategy="lazy")

    async def running(self) -> None:
        """Start the runtime and log one ``goblet ready`` line."""
        s = self.settings
        assert s is not None
        base_config = resolve_ca(getattr(ctx.options, "ssl_verify_upstream_trusted_ca", None))
        if getattr(ctx.options, "ssl_insecure", False):
            base_config.append(("http.sslVerify", "false"))
        metrics_host = s.metrics_host or getattr(ctx.options, "listen_host", "")
        try:
            self.rt = await Runtime.start(
                s, base_config, metrics_host, self.access,
                ca_file=getattr(ctx.options, "ssl_verify_upstream_trusted_ca", None),
                insecure=bool(getattr(ctx.options, "ssl_insecure", False)),
            )
        except (OSError, ValueError) as e:
            log.error("goblet: cannot start with cache dir %s: %s", s.cache_dir, e)
            return
        hosts = ",".join(sorted(h if p == 443 else f"{h}:{p}" for h, p in s.hosts))
        metrics = f"{metrics_host or '*'}:{self.rt.endpoints.port}" if self.rt.endpoints else "-"
        if getattr(ctx.options, "http2", False):
            log.warning("goblet: http2 is on; mitmproxy 11.0's h2 has a header-injection "
                        "advisory, consider --set http2=false (docs/architecture.md#http2)")
        log.info(
            "goblet ready: instance=%s cache_dir=%s hosts=%s verdict_ttl=%ds "
            "upstream_timeout=%ds isolation=%s offline=%s backend=127.0.0.1:%d metrics=%s "
            "log_format=%s",
            s.instance, s.cache_dir, hosts, s.verdict_ttl, s.upstream_timeout, s.isolation,
            f"on(grace={s.offline_grace}s)" if s.offline else "off",
            self.rt.backend.port, metrics, s.log_format,
        )

    async def done(self) -> None:
        """Stop the runtime and its children."""
        if self.rt is not None:
            await self.rt.stop()
        self._inspector.shutdown(wait=False, cancel_futures=True)

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

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """The path-prefix port serves path-prefix URLs only: no tunnels."""
        if self._on_prefix_port(flow):
            flow.response = http.Response.make(
                405, b"goblet: this port serves http://<goblet>/<host>/<repo> URLs, "
                     b"not CONNECT\n", {"Content-Type": "text/plain; charset=utf-8"})

    # -- request side ------------------------------------------------------------

    def _on_prefix_port(self, flow: http.HTTPFlow) -> bool:
        """Whether the client connected to the path-prefix listener."""
        sockname = flow.client_conn.sockname
        return bool(self.settings and self.settings.prefix_port and sockname
                    and sockname[1] == self.settings.prefix_port)

    def _from_prefix(self, flow: http.HTTPFlow) -> str | None:
        """Turn ``/<host>/<path>`` into a request for https://<host>/<path>.

        Returns an error message when the URL names no goblet host: the prefix
        port is never an open proxy.
        """
        assert self.settings is not None
        req = flow.request
        split = routes.split_prefix(req.path)
        if split is None:
            return "path-prefix URLs look like /<host>/<repo>/…"
        try:
            host, port = opts.parse_host(split[0])
        except ValueError:
            return "path-prefix URLs look like /<host>/<repo>/…"
        if (host, port) not in self.settings.hosts:
            return "this host is not served here (goblet_hosts)"
        req.scheme, req.host, req.port, req.path = "https", host, port, split[1]
        req.headers["Host"] = host if port == 443 else f"{host}:{port}"
        return None

    def _is_endpoint(self, flow: http.HTTPFlow) -> bool:
        """A plain-HTTP request to the proxy itself for one of our endpoints."""
        req = flow.request
        if req.scheme != "http" or req.method not in ("GET", "HEAD"):
            return False
        if req.path.split("?", 1)[0] not in ENDPOINT_PATHS:
            return False
        server = ctx.master.addons.get("proxyserver")
        ports = {addr[1] for addr in server.listen_addrs()} if server else set()
        return req.port in ports and _is_local_address(req.host)

    def _classify(self, flow: http.HTTPFlow) -> routes.Route | None:
        """The git route of a flow to a goblet host, or None for other traffic."""
        s = self.settings
        req = flow.request
        if s is None or self.rt is None or req.scheme != "https":
            return None
        if (req.host.lower(), req.port) not in s.hosts:
            return None
        if not _host_header_matches(req.host_header, req.host, req.port):
            return None  # Host header disagrees with the connection: never cache it
        return routes.classify(req.method, req.path)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Classify the flow; stream everything we do not need to read."""
        if flow.response or flow.error or not flow.live:
            return
        if self.rt is not None and self._is_endpoint(flow):
            self._flows[flow] = FlowState("endpoint")
            return
        if self._on_prefix_port(flow):
            if flow.request.path.split("?", 1)[0] in ENDPOINT_PATHS and self.rt is not None:
                self._flows[flow] = FlowState("endpoint")
                return
            problem = self._from_prefix(flow)
            if problem is not None:
                flow.response = http.Response.make(
                    404, f"goblet: {problem}\n".encode(),
                    {"Content-Type": "text/plain; charset=utf-8", **self._served_by()})
                return
        try:
            route = self._classify(flow)
        except ProtocolError as e:
            self._flows[flow] = FlowState("invalid", reason=f"bad repository path: {e.reason}")
            return
        if route is not None and route.kind in (routes.Kind.INFO_REFS, routes.Kind.UPLOAD_PACK):
            try:
                _check_binding(flow)
                _check_headers(flow.request.headers)
            except ProtocolError as e:
                self._flows[flow] = FlowState("invalid", reason=f"bad request: {e.reason}")
                return
        if route is None or route.kind in (routes.Kind.OTHER, routes.Kind.PUSH):
            flow.request.stream = True
            if route is not None:
                self._flows[flow] = FlowState(route.kind.value)
            return
        assert self.rt is not None and self.settings is not None
        proxy_login = flow.metadata.get("proxyauth")
        credential = credential_from_headers(
            flow.request.headers.items(multi=True),
            (str(proxy_login[0]), str(proxy_login[1])) if proxy_login else None,
        )
        tenant = self.rt.keyer.tenant_id(credential)
        url = canonical_url(flow.request.host, flow.request.port, route.repo_path)
        where = partition(self.settings.isolation, credential, tenant, self.rt.keyer,
                          verified_proxy_user=proxy_logins_verified(
                              getattr(ctx.options, "proxyauth", None)))
        state = FlowState(
            route.kind.value,
            repo=self.rt.store.repo_for(url, where),
            tenant=tenant,
            credential=credential,
            version=_protocol_version(flow.request.headers.get("git-protocol")),
            host=url.split("/", 3)[2],
        )
        self._flows[flow] = state
        length = flow.request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.settings.max_request_bytes:
            flow.request.stream = True
        if flow.request.stream:
            state.reason = "request body over the inspection limit: passed through"
        elif route.kind is routes.Kind.UPLOAD_PACK:
            state.body_timer = asyncio.get_running_loop().call_later(
                self.settings.request_body_timeout, self._body_timed_out, flow)

    def _body_timed_out(self, flow: http.HTTPFlow) -> None:
        """A request body goblet waits for is too slow: drop the client's connection."""
        state = self._flows.get(flow)
        if state is None or state.body_timer is None or flow.request.stream:
            return
        state.body_timer, state.timed_out = None, True
        state.reason = "request body not received in time (goblet_request_body_timeout)"
        if self.rt is not None:
            self.rt.metrics.request_bodies.labels("timeout").inc()
        _drop_client(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        """Route upload-pack requests: upstream, cache, or a git-readable error."""
        state = self._flows.get(flow)
        if state is not None:
            state.body_arrived()
        if flow.response or flow.error or not flow.live:
            return
        if state is None or self.rt is None:
            return
        if state.kind == "endpoint":
            result = await self.rt.endpoint_answer(flow.request.path)
            flow.response = http.Response.make(
                result.status, b"" if flow.request.method == "HEAD" else result.body,
                {"Content-Type": result.content_type, "Cache-Control": "no-store"},
            )
            return
        if state.kind == "invalid":
            flow.request.stream = False
            self._answer_error(flow, state, 400, f"goblet: {state.reason}")
            return
        if state.kind == "info_refs" and self.settings is not None and self.settings.offline:
            await self._forward(flow, state, b"")
            return
        if state.kind != "upload_pack" or flow.request.stream or state.repo is None:
            return
        assert self.settings is not None
        body = await self._inspect(flow, state)
        if body is None:
            return
        try:
            parsed: request.V2Request | request.FetchRequest | request.ProbeRequest
            if state.version == 2:
                parsed = request.parse_v2(body)
            else:
                parsed = request.parse_v0(body, state.version)
        except ProtocolError as e:
            self._answer_error(flow, state, 400, f"goblet: malformed request: {e.reason}")
            return
        if isinstance(parsed, request.LsRefsRequest):
            state.kind, state.ls_refs = "ls_refs", parsed
            if self.settings.offline:
                await self._forward(flow, state, body)
            return
        if not isinstance(parsed, request.FetchRequest):
            return
        state.kind = "fetch"
        decision = await self.rt.decider.decide(
            state.repo, state.tenant, state.credential, parsed, state.host
        )
        state.reason = decision.reason
        if not flow.live or flow.error:
            return
        if decision.route is Route.ERROR:
            flow.response = http.Response.make(
                200, pktline.error_packet(decision.reason),
                {"Content-Type": RESULT_TYPE, **self._served_by()},
            )
            state.outcome = "error"
        elif decision.route is Route.CACHE:
            plan = self._plan(flow, state, body, notice=decision.notice)
            if parsed.done and decision.notice is None:
                plan = replace(plan, cache_key=self._pack_key(state, plan))
            self._to_backend(flow, state, plan)
            if decision.offline:
                state.outcome = "offline"

    async def _inspect(self, flow: http.HTTPFlow, state: FlowState) -> bytes | None:
        """The decoded request body, or None when it is not inspected.

        Over ``goblet_max_request_bytes`` (raw or decoded) or in an encoding goblet
        does not decode, the request passes through to the upstream uninspected
        (exactly as without goblet); a corrupt body is answered with 400.
        """
        assert self.rt is not None and self.settings is not None
        raw = flow.request.raw_content
        enc = flow.request.headers.get("content-encoding")
        bodies = self.rt.metrics.request_bodies
        if raw is None:
            state.reason = "request body over the inspection limit: passed through"
            bodies.labels("too_large").inc()
            return None
        if not encoding.inspectable(enc):
            state.reason = "request body encoding not inspected: passed through"
            bodies.labels("not_decoded").inc()
            return None
        cap = self.settings.max_request_bytes
        try:
            if (enc or "").strip().lower() in ("", "identity"):
                body = encoding.decode_capped(raw, enc, cap)
            else:
                body = await asyncio.get_running_loop().run_in_executor(
                    self._inspector, encoding.decode_capped, raw, enc, cap)
        except encoding.BodyTooLarge:
            state.reason = "request body over the inspection limit: passed through"
            bodies.labels("too_large").inc()
            return None
        except ProtocolError as e:
            bodies.labels("invalid").inc()
            self._answer_error(flow, state, 400, f"goblet: undecodable request body: {e.reason}")
            return None
        bodies.labels("inspected").inc()
        return body

    def _pack_key(self, state: FlowState, plan: ServePlan) -> str | None:
        """The pack-cache key of a final fetch (None when it cannot be keyed)."""
        assert self.rt is not None and state.repo is not None
        snapshot = self.rt.store.state(state.repo)
        identity = request.cache_identity(plan.body)
        if snapshot is None or identity is None:
            return None
        return cache_key(state.repo.key, snapshot.digest, plan.git_protocol, identity)

    async def _forward(self, flow: http.HTTPFlow, state: FlowState, body: bytes) -> None:
        """Offline mode: ask the upstream ourselves; if that very request finds it down
        (no answer, or a 5xx), answer from the cache when this tenant may be served."""
        assert self.rt is not None and self.rt.asker is not None and state.repo is not None
        req = flow.request
        try:
            answer = await self.rt.asker.forward(
                state.host, req.method, f"https://{state.host}{req.path}",
                req.headers.items(multi=True), req.raw_content)
        except UpstreamUnreachable as e:
            self._offline_answer(flow, state, body, f"upstream unreachable: {e}", None)
            return
        except ValueError as e:
            self._answer_error(flow, state, 400, f"goblet: bad request: {e}")
            return
        if answer.status >= 500 and await self.rt.asker.confirm_outage(
                state.host, state.repo.url):
            self._offline_answer(flow, state, body, f"upstream answered {answer.status}", answer)
            return
        flow.response = _response_from(answer)

    def _offline_answer(self, flow: http.HTTPFlow, state: FlowState, body: bytes, why: str,
                        failed: UpstreamAnswer | None) -> None:
        """Answer a ref request whose forwarding just failed: from the cache if this
        tenant may be served offline, else with upstream's last refusal of this
        credential (a 401 makes git retry with the user's credentials), else with
        the failed answer itself or a 502."""
        assert self.rt is not None and state.repo is not None
        decider = self.rt.decider
        if decider.may_serve_offline(state.tenant, state.repo):
            capabilities_only = state.kind == "info_refs" and state.version == 2
            hidden = () if capabilities_only else decider.offline_hidden_refs(
                state.tenant, state.repo)
            if hidden is not None:
                advertise = state.kind == "info_refs"
                prefix = b""
                if advertise and state.version != 2:
                    prefix = pktline.encode_line("# service=git-upload-pack") + pktline.FLUSH
                plan = self._plan(flow, state, body, advertise=advertise, prefix=prefix)
                self._to_backend(flow, state, replace(plan, hidden_refs=hidden))
                state.outcome, state.reason = "offline", why
                return
        if denial := decider.verdicts.denied_within(
                state.tenant, state.repo.url, decider.offline_grace):
            status = denial.status or 403
            self._answer_error(flow, state, status,
                               f"goblet: upstream unreachable; its last answer was {status}")
            assert flow.response is not None
            if denial.challenge:
                flow.response.headers["WWW-Authenticate"] = denial.challenge
        elif failed is not None:
            flow.response = _response_from(failed)
            state.reason = why
        else:
            self._answer_error(flow, state, 502, f"goblet: {why}")

    def _answer_error(self, flow: http.HTTPFlow, state: FlowState, status: int, msg: str) -> None:
        line = " ".join(msg.split())[:300] + "\n"
        flow.response = http.Response.make(
            status, line.encode(),
            {"Content-Type": "text/plain; charset=utf-8", **self._served_by()},
        )
        state.outcome, state.reason = "error", msg

    def _served_by(self) -> dict[str, str]:
        return {"X-Served-By": self.settings.instance} if self.settings is not None else {}

    def _plan(self, flow: http.HTTPFlow, state: FlowState, body: bytes, *,
              advertise: bool = False, prefix: bytes = b"", notice: str | None = None
              ) -> ServePlan:
        assert state.repo is not None
        return ServePlan(
            repo_dir=state.repo.path,
            body=body,
            git_protocol=clean_git_protocol(flow.request.headers.get("git-protocol")),
            label=state.repo.url,
            advertise=advertise,
            prefix=prefix,
            notice=notice,
            repo_key=state.repo.key,
        )

    def _to_backend(self, flow: http.HTTPFlow, state: FlowState, plan: ServePlan) -> None:
        """Rewrite ``flow`` so mitmproxy fetches its answer (``plan``) from our backend."""
        assert self.rt is not None and state.repo is not None
        self.rt.store.touch(state.repo)
        token = self.rt.plans.register(plan)
        req = flow.request
        req.scheme, req.host, req.port = "http", "127.0.0.1", self.rt.backend.port
        req.headers = http.Headers([
            (b"Host", f"127.0.0.1:{self.rt.backend.port}".encode()),
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
        if state is None:
            flow.response.stream = True
            return
        if state.kind in ("endpoint", "invalid") or state.outcome == "error":
            return  # our own answer, already in memory
        if self.settings is not None:
            flow.response.headers["X-Served-By"] = self.settings.instance
        if state.kind in ("info_refs", "ls_refs") and flow.response.status_code == 200:
            return
        flow.response.stream = state.count_bytes if state.outcome == "upstream" else True

    async def response(self, flow: http.HTTPFlow) -> None:
        """Record upstream's verdict; start a fill when upstream's refs moved; log."""
        state = self._flows.pop(flow, None)
        if state is None or flow.response is None or state.kind == "endpoint":
            return
        state.body_arrived()
        if state.repo is not None and state.outcome == "upstream" and self.rt is not None:
            status = flow.response.status_code
            if status in (401, 403, 404):
                self.rt.decider.verdicts.record(
                    state.tenant, state.repo.url, granted=False, status=status,
                    challenge=flow.response.headers.get("www-authenticate"))
            elif status == 200 and state.kind in ("info_refs", "ls_refs"):
                await self._refs_seen(flow, state)
        self._finish(flow, state)

    def error(self, flow: http.HTTPFlow) -> None:
        """Count and log a flow that ended without a (complete) response.

        A flow that ends without an answer never marks the upstream down: the
        client may have caused it (a half-sent request), and only goblet's own
        attempts decide what counts as an outage.
        """
        state = self._flows.pop(flow, None)
        if state is not None and state.kind != "endpoint":
            state.body_arrived()
            if not state.timed_out:
                state.reason = flow.error.msg if flow.error else "flow error"
            self._finish(flow, state, failed=True)

    async def _refs_seen(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """A 200 ref answer from upstream: a grant only if it parses as one; then
        compare its refs with the cache's and start a fill if they moved."""
        assert flow.response is not None and state.repo is not None and self.rt is not None
        decider, repo = self.rt.decider, state.repo
        resp = flow.response
        body = await self._response_body(resp)
        ls_refs = state.kind == "ls_refs"
        if body is None or not answer_is_grant(200, resp.headers.get("content-type", ""),
                                               body, ls_refs=ls_refs):
            return  # not a ref answer (an ERR packet, say): proves nothing
        adv = refs.parse_ls_refs(body) if ls_refs else refs.parse_info_refs(body)
        listed = ls_refs or adv.version != 2
        decider.verdicts.record(state.tenant, repo.url, granted=True,
                                view=RefView.of(adv.refs, adv.peeled) if listed else None)
        if adv.object_format != "sha1":
            decider.uncacheable.add(repo.key)
            return
        if not listed:
            # v2 capabilities only (the refs come with ls-refs): hide the fetch
            # features only upstream could serve, so clients do not use them.
            restricted = refs.restrict_v2_fetch_features(body)
            if restricted is not None:
                resp.content = restricted
            return
        head = adv.symrefs.get("HEAD")
        if head:
            decider.heads[repo.key] = head
        prefixes = state.ls_refs.ref_prefixes if state.ls_refs else ()
        snapshot = self.rt.store.state(repo)
        stale = snapshot is None or refs.refs_differ(adv.refs, snapshot.refs, prefixes)
        if not stale and head and snapshot is not None and snapshot.head != head:
            stale = True
        if decider.isolation == "public" and decider.verdicts.is_denied(ANONYMOUS, repo.url):
            return  # not anonymously readable: never cached in public isolation
        if stale:
            decider.start_fill(repo, state.credential, state.tenant, head)

    async def _response_body(self, resp: http.Response) -> bytes | None:
        """The decoded body of a buffered upstream answer (None if streamed or bad)."""
        assert self.settings is not None
        raw = resp.raw_content
        if raw is None:
            return None
        enc = resp.headers.get("content-encoding")
        if (enc or "").strip().lower() in ("", "identity"):
            return raw
        if not encoding.inspectable(enc):
            return None
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._inspector, encoding.decode_capped, raw, enc, self.settings.max_request_bytes)
        except (encoding.BodyTooLarge, ProtocolError):
            return None

    def _finish(self, flow: http.HTTPFlow, state: FlowState, failed: bool = False) -> None:
        """Count the request in the metrics and write its access-log line."""
        if self.rt is None or self.settings is None:
            return
        status = flow.response.status_code if flow.response is not None else None
        outcome, sent, upstream_status = state.outcome, None, None
        if state.plan is not None:
            sent = state.plan.stats.bytes_sent
            if not state.plan.stats.complete or failed:
                outcome = "error"
                state.reason = state.plan.stats.error or state.reason or "cache stream incomplete"
        elif outcome == "upstream":
            upstream_status = None if failed else status
            if flow.response is not None:
                sent = state.upstream_bytes or len(flow.response.raw_content or b"")
            if failed or status is None or status >= 500:
                outcome = "error"
            elif status in (401, 403, 404):
                outcome = "denied"
        kind = _METRIC_KIND.get(state.kind, "other")
        m = self.rt.metrics
        duration = time.monotonic() - state.started
        m.requests.labels(kind, outcome).inc()
        m.request_duration.labels(kind).observe(duration)
        if state.plan is not None:
            m.served_bytes.labels("cache").inc(sent or 0)
            m.pack_cache_requests.labels(state.plan.stats.cache_role).inc()
        elif state.outcome == "upstream":
            m.served_bytes.labels("upstream").inc(sent or 0)
            m.upstream_requests.labels(kind, status_class(upstream_status)).inc()
            req, resp = flow.request, flow.response
            if resp is not None and resp.timestamp_end and req.timestamp_end:
                m.upstream_duration.labels(kind).observe(
                    max(0.0, resp.timestamp_end - req.timestamp_end))
        self.access.request(AccessRecord(
            kind=state.kind,
            url=state.repo.url if state.repo else _url_without_query(flow),
            tenant=self.rt.tenant_label(state.tenant),
            outcome=outcome,
            status=status,
            bytes=sent,
            duration=duration,
            upstream_status=upstream_status,
            instance=self.settings.instance,
            reason=state.reason,
        ))


def _host_header_matches(header: str | None, host: str, port: int) -> bool:
    """Whether a Host header names ``host:port`` (the port may be left out for 443)."""
    value = (header or "").lower()
    host = host.lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name == host and (rest == f":{port}" or (not rest and port == 443))
    return value == f"{host}:{port}" or (value == host and port == 443)


def _check_binding(flow: http.HTTPFlow) -> None:
    """Raise ProtocolError unless the request names the host its tunnel goes to.

    Inside a ``CONNECT`` tunnel the request target's authority (absolute form)
    and the TLS SNI must both be the tunnel's host: otherwise mitmproxy would
    send the request to one host while the client's other words name another,
    and a verdict or a cache read could be bound to the wrong repo.
    """
    req = flow.request
    if req.authority:
        # inside a tunnel mitmproxy keeps an absolute-form authority and sends it on
        try:
            host, port = http_url.parse_authority(req.authority, check=True)
        except ValueError:
            raise ProtocolError("malformed request target authority") from None
        if (host.lower(), port or 443) != (req.host.lower(), req.port):
            raise ProtocolError("request target does not match the CONNECT host")
    tunnel = flow.server_conn.address
    if tunnel is not None and (str(tunnel[0]).lower(), tunnel[1]) != (req.host.lower(), req.port):
        raise ProtocolError("request target does not match the CONNECT host")
    sni = flow.client_conn.sni
    if sni and sni.lower().rstrip(".") != req.host.lower().rstrip("."):
        raise ProtocolError("TLS server name does not match the request's host")


def _check_headers(headers: http.Headers) -> None:
    """Raise ProtocolError if a header name or value holds CR, LF or NUL (obs-fold).

    The message never repeats the header, whose value may be a credential.
    """
    for name, value in headers.fields:
        if any(c in value or c in name for c in (b"\r", b"\n", b"\0")):
            raise ProtocolError("malformed (folded or multi-line) request header")


def _drop_client(flow: http.HTTPFlow) -> None:
    """Close the client connection of ``flow`` now (mitmproxy has no public call for it)."""
    server = ctx.master.addons.get("proxyserver")
    handler = getattr(server, "connections", {}).get(flow.client_conn.id)
    if handler is not None:
        handler.close_connection(flow.client_conn)


@lru_cache(maxsize=256)
def _is_local_address(host: str) -> bool:
    """Whether ``host`` names this machine (a socket can bind to it)."""
    if host in ("localhost", "127.0.0.1", "::1"):
        return True
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM,
                                   flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        return False
    for family, _, _, _, sockaddr in infos:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.bind((sockaddr[0], 0))
                return True
            except OSError:
                continue
    return False


def _response_from(answer: UpstreamAnswer) -> http.Response:
    """A mitmproxy response carrying the upstream's answer byte for byte."""
    now = time.time()
    return http.Response(
        http_version=b"HTTP/1.1", status_code=answer.status, reason=answer.reason.encode(),
        headers=http.Headers([(k.encode(), v.encode("latin-1", "replace"))
                              for k, v in answer.headers]
                             + [(b"content-length", str(len(answer.body)).encode())]),
        content=answer.body, trailers=None, timestamp_start=now, timestamp_end=now,
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


def make_addons() -> Sequence[object]:
    """The addon list for the ``mitmdump -s`` entry script."""
    return [Goblet()]
