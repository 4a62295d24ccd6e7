"""The mitmproxy hooks: guard, ask goblet's policy, apply its answer to the flow.

Every decision lives in modules without mitmproxy (``policy/``, ``decide.py``,
``observe/exposure.py``, ``options.py``); this one moves facts out of flows and
answers back into them.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence

from mitmproxy import ctx, exceptions, http

from goblet import options as opts
from goblet.addon import dispatch
from goblet.addon.connections import (
    TEXT,
    ConnectionHooks,
    client_backlog,
    close_client,
    closed_by_goblet,
    guard_exposure,
    proxy_ports,
)
from goblet.addon.early import EarlyAnswers, goblet_response, set_header, to_backend
from goblet.addon.lfs import LfsFlows
from goblet.observe import exposure
from goblet.observe.access import AccessLog
from goblet.observe.recorder import Timing
from goblet.policy import bodies, gate, outcomes, requests
from goblet.policy.deadlines import Deadlines
from goblet.policy.flows import FlowState, Kind, Outcome
from goblet.runtime import Runtime
from goblet.serve.plans import ServePlan

log = logging.getLogger("goblet")


class Goblet(ConnectionHooks):
    """The goblet addon: options, life cycle, and the request and response hooks."""

    def __init__(self) -> None:
        self.settings: opts.Settings | None = None
        self.rt: Runtime | None = None
        self.access = AccessLog()
        self._flows: weakref.WeakKeyDictionary[http.HTTPFlow, FlowState] = (
            weakref.WeakKeyDictionary())
        self._backend_clients: set[str] = set()  # client connections goblet answers
        self.early = EarlyAnswers(lambda: self.rt, self._backend_clients)
        self.lfs = LfsFlows(lambda: self.rt, self._backend_clients)
        self._heads = Deadlines(lambda: self.settings.request_body_timeout
                                if self.settings else 60.0, close_client)
        self._started = self._refused = False  # (running; refused an open proxy at start-up)

    # -- options and life cycle ----------------------------------------------------

    def load(self, loader: object) -> None:
        """Declare goblet's options; keep header lines out of mitmproxy's log."""
        self.install_guards()
        for spec in opts.OPTIONS:
            loader.add_option(spec.name, spec.typespec, spec.default, spec.help)  # type: ignore[attr-defined]

    def configure(self, updated: set[str]) -> None:
        """Validate goblet's options; refuse bad values and restart-only changes with
        OptionsError, and an open proxy (``guard_exposure``: at start-up, before anything
        listens)."""
        o = ctx.options
        if updated & exposure.EXPOSURE_OPTIONS and not guard_exposure(
                o, started=self._started, listening=self._listening()):
            self._refused = True
            return
        if "termlog_verbosity" in updated:
            self.access.verbosity(str(getattr(o, "termlog_verbosity", "info")))
        if not any(name.startswith("goblet_") for name in updated):
            return
        try:
            settings = opts.reparse(self.settings if self.rt is not None else None, o)
        except ValueError as e:
            raise exceptions.OptionsError(f"goblet: {e}") from e
        if self.rt is not None:
            self.rt.reconfigure(settings)
        self.apply(settings)
        self.settings = settings
        updates = {k: v for k, v in opts.mitmproxy_updates_for(settings, o).items() if k in o}
        if updates:  # (an option mitmproxy does not have here, e.g. in a test harness, is skipped)
            log.info("goblet sets %s", ", ".join(f"{k}={v}" for k, v in updates.items()))
            o.update(**updates)

    async def running(self) -> None:
        """Start the runtime and log one ``goblet ready`` line."""
        self._started, s = True, self.settings
        if self._refused or s is None:
            return  # (refused at start-up: mitmproxy is on its way out)
        for warning in exposure.startup_warnings(ctx.options, listening=self._listening()):
            log.warning("%s", warning)
        try:
            self.rt = await Runtime.start_for(s, ctx.options, self.access)
        except (OSError, ValueError) as e:
            log.error("goblet: cannot start with cache dir %s: %s", s.cache_dir, e)
            return
        log.info("%s", self.rt.ready_line())

    async def done(self) -> None:
        """Stop the runtime and its children; mitmproxy's own hook dispatch again."""
        dispatch.uninstall()
        if self.rt is not None:
            await self.rt.stop()

    @staticmethod
    def _listening() -> bool:
        return ctx.master.addons.get("proxyserver") is not None

    # -- request side ------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Classify the flow; stream everything we do not need to read."""
        self._heads.cancel(flow.client_conn.id)
        if flow.response or flow.error or not flow.live:
            return
        req = flow.request
        if self.rt is None or self.settings is None:
            self._not_started(flow)
            return
        body = bodies.may_have_body(req.http_version, req.headers.fields)
        door = requests.front_door(
            exposure.PlainRequest(req.scheme, req.method, req.path, req.host, req.port,
                                  tuple(req.headers.get_all("via"))),
            prefix_port=self._on_prefix_port(flow), hosts=self.settings.hosts,
            proxy_ports=proxy_ports(), is_local=exposure.is_local_address)
        if door.reply or (door.endpoint and body):  # (an endpoint takes no body)
            self._reply_early(flow, FlowState(Kind.ENDPOINT), gate.Reply(
                *door.reply, (*TEXT.items(), *self._served_by().items())) if door.reply
                else gate.refuse(400, "goblet: this endpoint takes no request body"), body=body)
        if door.endpoint or door.reply:
            self._flows.setdefault(flow, FlowState(Kind.ENDPOINT))
            return
        seen = req.url if door.target else None  # (the URL as received, if rewritten)
        if door.target:
            req.scheme, (req.host, req.port, req.path) = "https", door.target
            req.headers["Host"] = req.host if req.port == 443 else f"{req.host}:{req.port}"
        if door.via:
            req.headers["Via"] = door.via
        login = flow.metadata.get("proxyauth")
        login = (str(login[0]), str(login[1])) if login else None
        if got := self.lfs.requestheaders(flow, seen, login):
            self._flows[flow] = got[0]
            if got[1] is not None:
                self._reply_early(flow, got[0], got[1], body=body)
            elif got[0].kind is Kind.LFS_OBJECT:
                self.early.discard(flow, timed=body)  # a link never needs one
            return
        self._classify(flow, body, login)

    def _reply_early(self, flow: http.HTTPFlow, state: FlowState, reply: gate.Reply, *,
                     body: bool) -> None:
        """Answer with goblet's own ``reply`` now (``body``: the request may carry one,
        never held; ``addon/early.py``)."""
        self._flows[flow] = state
        state.outcome = reply.outcome or state.outcome
        state.reason = reply.reason or state.reason
        self.early.reply(flow, reply.status, reply.body, [*reply.headers, *(
            self._served_by().items() if state.kind is not Kind.ENDPOINT else ())], body=body)

    def _classify(self, flow: http.HTTPFlow, body: bool, login: tuple[str, str] | None) -> None:
        """Refuse an invalid request at once, pass on what goblet does not read, hold what
        it does (``body``: the request may carry one) within the cap and body timeout."""
        assert self.rt is not None and self.settings is not None
        req, s = flow.request, self.settings
        got = requests.classify(requests.RequestFacts(
            req.method, req.scheme, req.host, req.port, req.path, req.host_header,
            req.authority, flow.server_conn.address, flow.client_conn.sni,
            tuple(req.headers.fields)), s.hosts)
        if got is not None and got.kind is Kind.INVALID:
            self._reply_early(flow, FlowState(got.kind, reason=got.problem),
                              gate.refuse(400, f"goblet: {got.problem}"), body=body)
            return
        if got is None or got.kind in (Kind.PUSH, Kind.OTHER):
            req.stream = True
            if got is not None:
                self._flows[flow] = FlowState(got.kind, reason=got.problem)
            return
        state = self._flows[flow] = self.rt.policy.state_for(
            got, req.host, req.port, headers=req.headers.items(multi=True), proxy_login=login,
            proxyauth=getattr(ctx.options, "proxyauth", None),
            git_protocol=req.headers.get("git-protocol"))
        intake = self.rt.policy.intake(state, req.headers.get("content-length", ""),
                                       streamed=bool(req.stream), body=body)
        req.stream = req.stream or intake.stream
        if intake.stream:
            state.reason = state.reason or bodies.PASSED_ON
        elif intake.timed:
            self.early.time_held(flow, state)

    async def request(self, flow: http.HTTPFlow) -> None:
        """Route upload-pack requests: upstream, cache, or a git-readable error."""
        self.early.body_ended(flow)
        if (state := self._flows.get(flow)) is not None:
            state.body_arrived()
        if flow.response or flow.error or not flow.live or state is None or self.rt is None \
                or self.early.answered(flow):
            return  # (answered at requestheaders already)
        req = flow.request
        if await self.lfs.request(flow, state):
            return
        action = await self.rt.policy.route(
            state, method=req.method, path=req.path, streamed=bool(req.stream),
            headers=req.headers.items(multi=True), raw=req.raw_content,
            enc=req.headers.get("content-encoding"), git_protocol=req.headers.get("git-protocol"))
        if not flow.live or flow.error:
            return
        if isinstance(action, gate.Upstream) and action.tee is not None:
            state.tee = action.tee  # a stall of its upstream fails the client too:
            state.tee.on_stall = lambda: close_client(flow.client_conn.id)
            state.tee.client_backlog = lambda: client_backlog(flow.client_conn.id)
        elif isinstance(action, gate.Serve):
            self._to_backend(flow, state, action.plan)
            state.outcome = action.outcome
        elif isinstance(action, gate.Reply):
            flow.response = goblet_response(action.status, action.body, action.headers)
            if state.kind is not Kind.ENDPOINT and self.settings is not None:
                set_header(flow.response.headers, "X-Served-By", self.settings.instance)
            state.outcome = action.outcome or state.outcome
            state.reason = action.reason or state.reason

    def _served_by(self) -> dict[str, str]:
        return {"X-Served-By": self.settings.instance} if self.settings is not None else {}

    def _to_backend(self, flow: http.HTTPFlow, state: FlowState, plan: ServePlan) -> None:
        """Rewrite ``flow`` so mitmproxy fetches its answer (``plan``) from our backend."""
        assert self.rt is not None and state.repo is not None
        self.rt.store.touch(state.repo)
        to_backend(flow, self.rt, self._backend_clients, plan)
        flow.request.raw_content = b""
        state.outcome, state.plan = Outcome.CACHE, plan

    # -- response side -----------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Stream all bodies except the ref answers the response hook reads."""
        state, resp = self._flows.get(flow), flow.response
        self.early.unshow(flow)
        if self.lfs.responseheaders(flow, state):
            return
        if resp is None or (keep := outcomes.read_answer(state, resp.status_code)) is None:
            return
        if state is not None and self.settings is not None:
            set_header(resp.headers, "X-Served-By", self.settings.instance)
        if keep:
            return
        resp.stream = True
        if state is not None and state.outcome is Outcome.UPSTREAM:
            tee = state.tee if state.tee and state.tee.accepts(
                resp.status_code, resp.headers.get("content-type", ""),
                resp.headers.get("content-encoding")) else None
            resp.stream = (lambda d: state.count_bytes(tee.feed(d))) if tee else state.count_bytes

    async def response(self, flow: http.HTTPFlow) -> None:
        """Apply what upstream's answer proves (``policy/answers.py``); count and log."""
        self._owes_next(flow)
        state = self._flows.pop(flow, None)
        resp = flow.response
        if state is None or resp is None or state.kind is Kind.ENDPOINT or self.rt is None:
            return
        state.body_arrived()
        if state.tee is not None:
            state.tee.finish()
        if await self.lfs.response(flow, state):
            self._finish(flow, state)
            return
        assert self.settings is not None
        replaced = await self.rt.answers.answer(state, resp.status_code, resp.headers,
                                                resp.raw_content, self.settings.max_request_bytes)
        if replaced is not None:
            resp.content = replaced
        self._finish(flow, state)

    def error(self, flow: http.HTTPFlow) -> None:
        """Count and log a flow that ended without a (complete) response (it never marks
        the upstream down: the client may have caused it; only goblet's own attempts do)."""
        self._owes_next(flow)
        self.early.body_ended(flow, unshow=True)
        state = self._flows.pop(flow, None)
        if state is not None and state.kind is not Kind.ENDPOINT:
            state.body_arrived()
            if state.tee is not None:  # who cut it: the client if it is gone by now
                state.tee.cut(flow.error.msg if flow.error else "flow error",
                              client_gone=not flow.client_conn.connected)
            self.lfs.error(flow, state)
            if not state.timed_out:
                state.reason = flow.error.msg if flow.error else "flow error"
            gone = not flow.client_conn.connected and not closed_by_goblet(flow.client_conn.id)
            self._finish(flow, state, failed=True, client_gone=gone)

    def _finish(self, flow: http.HTTPFlow, state: FlowState, failed: bool = False,
                client_gone: bool = False) -> None:
        """Count the request in the metrics and write its access-log line."""
        if self.rt is None or self.settings is None:
            return
        self.rt.policy.release(state, ended=True)
        req, resp = flow.request, flow.response
        upstream = None
        if resp is not None and resp.timestamp_end and req.timestamp_end:
            upstream = max(0.0, resp.timestamp_end - req.timestamp_end)
        self.rt.recorder.finish(
            state, status=resp.status_code if resp else None, failed=failed,
            response_bytes=len(resp.raw_content or b"") if resp else None,
            url=state.repo.url if state.repo else self.rt.lfs.links.hide(  # (else as
                f"{req.scheme}://{req.pretty_host}{req.path.split('?', 1)[0]}"),  # received)
            timing=Timing(time.monotonic() - state.started, upstream),
            instance=self.settings.instance, client_gone=client_gone)


def make_addons() -> Sequence[object]:
    """The addon list for the ``mitmdump -s`` entry script."""
    return [Goblet()]
