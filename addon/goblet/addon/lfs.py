"""The mitmproxy side of LFS: claim LFS flows, apply ``policy/lfs.py`` to them.

The addon calls one method per hook; each returns whether the flow was an
LFS flow this module handled. Batch requests go upstream unread (with the
client's own headers, asking for an unencoded answer) and their 200 answers
are read and rewritten. A link request needs no body, so it is decided as
soon as its head arrives (``requestheaders``): refused (also when it
announces a body), rewritten to the loopback backend (stored object), or
rewritten to the upstream's href with only the headers upstream gave for it
(plus the client's own credential when the href is on the batch request's
own origin and upstream gave no ``Authorization``, as git-lfs itself would
send it); whatever body it still carries is dropped unread. The request to
the href is built whole before the flow changes; in that case the request's
visible URL is put back (token hidden) once the upstream answered, so no log
line shows the href. Locks, verify, uploads and everything else under
``info/lfs`` are left to the addon's ordinary pass-through.

Fail-closed: an unexpected error while a link request is decided becomes a
502 refusal (one line, never a traceback, never a forwarded request); one
while an answer is handled aborts the client's connection and stores
nothing.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mitmproxy import ctx, http

from goblet.addon.early import to_backend
from goblet.auth.credentials import credential_from_headers
from goblet.auth.partition import partition, proxy_logins_verified
from goblet.cache.store import canonical_url
from goblet.lfs import batch
from goblet.lfs.links import Refusal
from goblet.lfs.serve import HeldAnswer, Transfer
from goblet.lfs.store import LfsScope
from goblet.policy import bodies, requests
from goblet.policy.flows import FlowState, Kind, Outcome
from goblet.policy.gate import Reply, refuse
from goblet.policy.lfs import HELD_ANSWER_CAP, OBJECT_TYPE, FromStore, href_request
from goblet.protocol.errors import ProtocolError

if TYPE_CHECKING:
    from goblet.runtime import Runtime

log = logging.getLogger("goblet")

HIDDEN = "-"  # what logs show instead of a link's token
TEXT = (("Content-Type", "text/plain; charset=utf-8"),)


@dataclass(slots=True)
class LfsFlow:
    """What this module remembers about one LFS flow."""

    base: str = ""  # the client's URL up to the repo path
    route: batch.LfsTarget | None = None
    shown: tuple[str, str, int, str] | None = None  # scheme, host, port, path for logs
    scope: LfsScope | None = None  # where the store keeps what this API grants the tenant
    transfer: Transfer | None = None
    read: bool = field(default=False)


class LfsFlows:
    """The LFS hooks (see the module docstring)."""

    def __init__(self, runtime: Callable[[], Runtime | None],
                 backend_clients: set[str]) -> None:
        self._rt = runtime
        self._backend_clients = backend_clients
        self._flows: weakref.WeakKeyDictionary[http.HTTPFlow, LfsFlow] = (
            weakref.WeakKeyDictionary())

    def requestheaders(self, flow: http.HTTPFlow, seen_url: str | None,
                       proxy_login: tuple[str, str] | None
                       ) -> tuple[FlowState, Reply | None] | None:
        """Claim an LFS batch or link request to a goblet host (``seen_url``: the URL as
        the client sent it, None if it is the request's) and decide a link at once: its
        FlowState and goblet's own answer if it has one (a refusal), or None for any other
        request. A link that is followed points at the backend or the href when this
        returns."""
        try:
            state = self._claim(flow, seen_url, proxy_login)
            if state is None:
                return None
            if state.kind is Kind.INVALID:
                return state, refuse(400, f"goblet: {state.reason}")
            if state.kind is not Kind.LFS_OBJECT:
                return state, None
        except Exception as e:  # noqa: BLE001 (fail closed: never forward what failed)
            return FlowState(Kind.INVALID), self._failed(flow, "LFS request", e)
        try:
            return state, self._link(flow, state)
        except Exception as e:  # noqa: BLE001 (fail closed: never forward what failed)
            return state, self._failed(flow, "LFS link", e)

    def _failed(self, flow: http.HTTPFlow, what: str, e: Exception) -> Reply:
        """The 502 refusal of a request this module failed to handle (one log line)."""
        self._flows.pop(flow, None)
        log.warning("goblet: %s not handled (%s): refused", what, e.__class__.__name__)
        return refuse(502, f"goblet: {what} could not be handled ({e.__class__.__name__}): "
                           "refused")

    def _claim(self, flow: http.HTTPFlow, seen_url: str | None,
               proxy_login: tuple[str, str] | None) -> FlowState | None:
        rt, req = self._rt(), flow.request
        if rt is None:
            return None
        host, links = req.host.lower(), rt.lfs.links
        ours = rt.settings.lfs and req.scheme == "https" and (host, req.port) in \
            rt.settings.hosts and requests.host_header_matches(req.host_header, host, req.port)
        try:
            route = batch.classify(req.method, req.path) if ours else None
            # A live token anywhere but in its own link's place (a mangled link, LFS
            # turned off since it was issued...) is refused: it never goes upstream.
            if links.live_in(route.repo_path if route is not None and
                             route.kind is batch.LfsKind.LINK else req.path)[1]:
                raise ProtocolError("a goblet LFS link token outside its link")
            if route is None or route.kind is batch.LfsKind.OTHER:
                return None
            requests.check_binding(requests.RequestFacts(
                req.method, req.scheme, req.host, req.port, req.path, req.host_header,
                req.authority, flow.server_conn.address, flow.client_conn.sni))
            requests.check_headers(req.headers.fields)
        except ProtocolError as e:  # refused: its flow shows no live token either
            req.path = links.hide(req.path)  # (mitmproxy's flow printout)
            return FlowState(Kind.INVALID, reason=f"bad LFS request: {e.reason}")
        credential = credential_from_headers(req.headers.items(multi=True), proxy_login)
        url = canonical_url(host, req.port, route.repo_path)
        state = FlowState(Kind.LFS_BATCH if route.kind is batch.LfsKind.BATCH else Kind.LFS_OBJECT,
                          repo=rt.store.repo_for(url), tenant=rt.keyer.tenant_id(credential),
                          credential=credential, host=url.split("/", 3)[2])
        seen_url = seen_url or req.url
        base = seen_url[:-len(req.path)] if seen_url.endswith(req.path) else (
            f"https://{req.host_header}")
        scope = LfsScope(state.host, partition(
            rt.settings.isolation, credential, state.tenant, rt.keyer,
            verified_proxy_user=proxy_logins_verified(getattr(ctx.options, "proxyauth", None))))
        self._flows[flow] = LfsFlow(base=base, route=route, scope=scope)
        if route.kind is batch.LfsKind.BATCH:
            req.stream = True  # the request goes upstream unread
            req.headers["Accept-Encoding"] = "identity"
        return state

    def _link(self, flow: http.HTTPFlow, state: FlowState) -> Reply | None:
        """Refuse a link request, or point it at the backend or the href."""
        info, rt = self._flows[flow], self._rt()
        assert rt is not None and info.route is not None and info.scope is not None
        req, route, scope = flow.request, info.route, info.scope
        info.shown = (req.scheme, req.host, req.port,
                      batch.link_path(route.repo_path, HIDDEN, route.oid))
        if bodies.may_have_body("HTTP/1.1", req.headers.fields):  # announced one
            reason = "goblet: an LFS link request carries no body"
            state.outcome, state.reason = Outcome.ERROR, reason
            return Reply(400, (reason + "\n").encode(), TEXT, Outcome.ERROR, reason)
        action = rt.lfs.link(state, route.token, route.oid, scope)
        if isinstance(action, Refusal):
            headers: tuple[tuple[str, str], ...] = TEXT
            if action.status == 401:
                headers += (("WWW-Authenticate", 'Basic realm="goblet LFS"'),)
            return Reply(action.status, (action.reason + "\n").encode(), headers,
                         Outcome.DENIED, action.reason)
        if isinstance(action, FromStore):
            to_backend(flow, rt, self._backend_clients, action.plan)
            state.outcome, state.plan = Outcome.CACHE, action.plan
            return None
        download = action.grant.download
        agent = next((value for name, value in req.headers.fields
                      if name.lower() == b"user-agent"), b"goblet")
        out = href_request(download, state.credential.headers, agent,
                           ("https", req.host.lower(), req.port))
        oid, size = download.oid, download.size
        info.transfer = Transfer(oid, size, (lambda: rt.lfs.writer(scope, oid, size))
                                 if req.method == "GET" else None)
        req.scheme, req.host, req.port, req.path = out.scheme, out.host, out.port, out.path
        req.headers = http.Headers(list(out.headers))
        state.reason = "from upstream"
        return None

    async def request(self, flow: http.HTTPFlow, state: FlowState) -> bool:
        """True if ``state`` is an LFS flow (decided at ``requestheaders`` already)."""
        info = self._flows.get(flow)
        return info is not None and info.route is not None

    def responseheaders(self, flow: http.HTTPFlow, state: FlowState | None) -> bool:
        """Keep a batch answer to read it; stream objects (through the transfer); True if
        ``state`` is an LFS flow."""
        try:
            return self._responseheaders(flow, state)
        except Exception as e:  # noqa: BLE001 (fail closed: abort, store nothing)
            self._abort(flow, state, e)
            return True

    async def response(self, flow: http.HTTPFlow, state: FlowState | None) -> bool:
        """Rewrite a batch answer; store (or refuse to finish) an object; True if ``state``
        is an LFS flow."""
        try:
            return await self._response(flow, state)
        except Exception as e:  # noqa: BLE001 (fail closed: abort, store nothing)
            self._abort(flow, state, e)
            return True

    def _abort(self, flow: http.HTTPFlow, state: FlowState | None, e: Exception) -> None:
        """An LFS answer this module failed to handle: abort the client's connection and
        keep nothing (one log line)."""
        info = self._flows.pop(flow, None)
        log.warning("goblet: LFS answer not handled (%s): connection aborted",
                    e.__class__.__name__)
        if info is not None and info.transfer is not None:
            info.transfer.finish(False)
        if state is not None:
            state.outcome = Outcome.ERROR
            state.reason = f"LFS answer not handled ({e.__class__.__name__}): aborted"
        if flow.killable:
            flow.kill()

    def _responseheaders(self, flow: http.HTTPFlow, state: FlowState | None) -> bool:
        info, resp, rt = self._flows.get(flow), flow.response, self._rt()
        if info is None or state is None or resp is None or rt is None:
            return False
        if state.kind is Kind.LFS_BATCH:
            length = resp.headers.get("content-length")
            cap = min(rt.settings.max_request_bytes, batch.MAX_ANSWER)
            plain = bodies.is_identity(resp.headers.get("content-encoding"))
            if not plain and resp.status_code == 200:  # (goblet asked for none)
                state.reason = "LFS batch answer passed on as it is: encoded"
            info.read = resp.status_code == 200 and plain and length is not None and \
                length.isdigit() and int(length) <= cap
            if info.read:
                return True
            resp.stream = state.count_bytes
            if resp.status_code == 200 and plain and length is None and info.route is not None:
                route, base, ctype = info.route, info.base, resp.headers.get("content-type", "")
                resp.stream = HeldAnswer(min(cap, HELD_ANSWER_CAP), lambda body: (  # (inline)
                    rt.lfs.batch_answer(state, 200, ctype, body, base=base,
                                        repo_path=route.repo_path)))
            return True
        self._show(flow, info)
        if info.transfer is not None:
            transfer = info.transfer
            transfer.start(resp.status_code, resp.headers.get("content-encoding"))
            resp.stream = transfer.stream
            if resp.status_code == 200 and (transfer.active or flow.request.method == "HEAD"):
                resp.headers = http.Headers([  # the object: as the store answers it
                    (b"Content-Type", OBJECT_TYPE.encode()),
                    (b"Content-Length", str(transfer.size).encode())])
        elif state.kind is Kind.LFS_OBJECT and not resp.stream:
            resp.stream = True
        return True

    async def _response(self, flow: http.HTTPFlow, state: FlowState | None) -> bool:
        info, resp, rt = self._flows.pop(flow, None), flow.response, self._rt()
        if info is None or state is None or resp is None or rt is None:
            return False
        if state.kind is Kind.LFS_BATCH:
            if info.route is not None and (info.read or resp.status_code != 200):
                new = await rt.lfs.answer_off_loop(state, resp.status_code,
                                                   resp.headers.get("content-type", ""),
                                                   resp.raw_content or b"",  # (never encoded)
                                                   base=info.base,
                                                   repo_path=info.route.repo_path)
                if new is not None and flow.live and flow.response is resp:
                    resp.content = new
                    state.reason = "downloads linked to goblet"
            return True
        self._show(flow, info, done=True)
        m = rt.metrics
        if state.plan is not None:
            m.lfs_downloads.labels("cache").inc()
            m.lfs_bytes.labels("cache").inc(state.plan.stats.bytes_sent)
        elif (transfer := info.transfer) is not None:
            transfer.whole(resp.raw_content or b"")
            state.upstream_bytes = transfer.bytes
            m.lfs_bytes.labels("upstream").inc(transfer.bytes)
            if transfer.corrupt:
                m.lfs_downloads.labels("corrupt").inc()
                state.outcome = Outcome.ERROR
                state.reason = "object from upstream does not match its oid: not stored, " \
                               "connection aborted"
                flow.kill()
            elif transfer.active:
                m.lfs_downloads.labels("upstream").inc()
            stored = transfer.finish(not transfer.corrupt)
            if stored:
                state.reason = "from upstream, stored"
                rt.lifecycle.check_budget()  # the store grew: one budget pass soon
        return True

    def error(self, flow: http.HTTPFlow, state: FlowState | None) -> None:
        """A flow ended without a whole answer: nothing it brought is stored."""
        info = self._flows.pop(flow, None)
        if info is None or state is None:
            return
        self._show(flow, info, done=True)
        if info.transfer is not None:
            state.upstream_bytes = info.transfer.bytes
            info.transfer.finish(False)

    @staticmethod
    def _show(flow: http.HTTPFlow, info: LfsFlow, *, done: bool = False) -> None:
        """Put back the request's visible URL (token hidden) and, once the answer is
        ``done``, drop the href's headers: logs never show an href or its headers."""
        if info.shown is not None:
            req = flow.request
            req.scheme, req.host, req.port, req.path = info.shown
            if done and info.transfer is not None:
                req.headers = http.Headers([(b"Host", req.host.encode())])
