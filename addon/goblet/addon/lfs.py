"""The mitmproxy side of LFS: claim LFS flows, apply ``policy/lfs.py`` to them.

The addon calls one method per hook; each returns whether the flow was an
LFS flow this module handled. Batch requests go upstream unread (with the
client's own headers, asking for an unencoded answer) and their 200 answers
are read and rewritten. Link requests are refused, rewritten to the
loopback backend (stored object), or rewritten to the upstream's href with
only the headers upstream gave for it (plus the client's own credential when
the href is on the batch request's own origin and upstream gave no
``Authorization``, as git-lfs itself would send it); in that last case the request's
visible URL is put back (token hidden) once the upstream answered, so no log
line shows the href. Locks, verify, uploads and everything else under
``info/lfs`` are left to the addon's ordinary pass-through.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mitmproxy import http

from goblet.auth.credentials import credential_from_headers
from goblet.cache.store import canonical_url
from goblet.lfs import batch
from goblet.lfs.links import Refusal
from goblet.lfs.serve import HeldAnswer, Transfer
from goblet.policy import requests
from goblet.policy.flows import FlowState, Kind, Outcome
from goblet.policy.lfs import FromStore, same_origin_credential
from goblet.protocol.errors import ProtocolError
from goblet.serve.plans import TOKEN_HEADER

if TYPE_CHECKING:
    from goblet.runtime import Runtime

HIDDEN = "-"  # what logs show instead of a link's token


@dataclass(slots=True)
class LfsFlow:
    """What this module remembers about one LFS flow."""

    base: str = ""  # the client's URL up to the repo path
    route: batch.LfsTarget | None = None
    shown: tuple[str, str, int, str] | None = None  # scheme, host, port, path for logs
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

    def claim(self, flow: http.HTTPFlow, seen_url: str,
              proxy_login: tuple[str, str] | None) -> FlowState | None:
        """The FlowState of an LFS batch or link request to a goblet host (``seen_url``:
        the URL as the client sent it), or None for any other request."""
        rt, req = self._rt(), flow.request
        if rt is None or not rt.settings.lfs or req.scheme != "https":
            return None
        host = req.host.lower()
        if (host, req.port) not in rt.settings.hosts or not requests.host_header_matches(
                req.host_header, host, req.port):
            return None
        try:
            route = batch.classify(req.method, req.path)
            if route is None or route.kind is batch.LfsKind.OTHER:
                return None
            requests.check_binding(requests.RequestFacts(
                req.method, req.scheme, req.host, req.port, req.path, req.host_header,
                req.authority, flow.server_conn.address, flow.client_conn.sni))
            requests.check_headers(req.headers.fields)
        except ProtocolError as e:
            return FlowState(Kind.INVALID, reason=f"bad LFS request: {e.reason}")
        credential = credential_from_headers(req.headers.items(multi=True), proxy_login)
        url = canonical_url(host, req.port, route.repo_path)
        state = FlowState(Kind.LFS_BATCH if route.kind is batch.LfsKind.BATCH else Kind.LFS_OBJECT,
                          repo=rt.store.repo_for(url), tenant=rt.keyer.tenant_id(credential),
                          credential=credential, host=url.split("/", 3)[2])
        base = seen_url[:-len(req.path)] if seen_url.endswith(req.path) else (
            f"https://{req.host_header}")
        self._flows[flow] = LfsFlow(base=base, route=route)
        if route.kind is batch.LfsKind.BATCH:
            req.stream = True  # the request goes upstream unread
            req.headers["Accept-Encoding"] = "identity"
        return state

    async def request(self, flow: http.HTTPFlow, state: FlowState) -> bool:
        """Answer or rewrite a link request; True if ``state`` is an LFS flow."""
        info, rt = self._flows.get(flow), self._rt()
        if info is None or rt is None or info.route is None:
            return False
        if state.kind is not Kind.LFS_OBJECT:
            return True
        req, route = flow.request, info.route
        info.shown = (req.scheme, req.host, req.port,
                      batch.link_path(route.repo_path, HIDDEN, route.oid))
        action = rt.lfs.link(state, route.token, route.oid)
        if isinstance(action, Refusal):
            headers = [(b"Content-Type", b"text/plain; charset=utf-8")]
            if action.status == 401:
                headers.append((b"WWW-Authenticate", b'Basic realm="goblet LFS"'))
            flow.response = http.Response.make(action.status, (action.reason + "\n").encode(),
                                               headers)
            state.outcome, state.reason = Outcome.DENIED, action.reason
        elif isinstance(action, FromStore):
            self._backend_clients.add(flow.client_conn.id)
            token = rt.plans.register(action.plan)
            port = rt.backend.port
            req.scheme, req.host, req.port = "http", "127.0.0.1", port
            req.headers = http.Headers([(b"Host", f"127.0.0.1:{port}".encode()),
                                        (b"Content-Length", b"0"),
                                        (TOKEN_HEADER.encode(), token.encode())])
            req.raw_content = b""
            state.outcome, state.plan = Outcome.CACHE, action.plan
        else:
            download = action.grant.download
            writer = rt.lfs_store.writer(download.oid, download.size) \
                if req.method == "GET" else None
            info.transfer = Transfer(writer)
            href = urlsplit(download.href)
            href_port = href.port or (443 if href.scheme == "https" else 80)
            own = same_origin_credential(download.headers, state.credential.headers,
                                         (href.scheme, (href.hostname or "").lower(), href_port),
                                         ("https", req.host.lower(), req.port))
            agent = req.headers.get("user-agent", "goblet")
            req.scheme, req.host = href.scheme, href.hostname or ""
            req.port = href_port
            req.path = href.path + (f"?{href.query}" if href.query else "")
            req.headers = http.Headers([(b"Host", href.netloc.rpartition("@")[2].encode()),
                                        (b"User-Agent", agent.encode()),
                                        (b"Accept-Encoding", b"identity")])
            for name, value in (*download.headers, *own):
                req.headers.add(name, value)
            req.raw_content = b""
            state.reason = "from upstream"
        return True

    def responseheaders(self, flow: http.HTTPFlow, state: FlowState | None) -> bool:
        """Keep a batch answer to read it; stream objects (through the transfer); True if
        ``state`` is an LFS flow."""
        info, resp, rt = self._flows.get(flow), flow.response, self._rt()
        if info is None or state is None or resp is None or rt is None:
            return False
        if state.kind is Kind.LFS_BATCH:
            length = resp.headers.get("content-length")
            cap = rt.settings.max_request_bytes
            info.read = resp.status_code == 200 and length is not None and \
                length.isdigit() and int(length) <= cap
            if info.read:
                return True
            resp.stream = state.count_bytes
            if resp.status_code == 200 and length is None and info.route is not None:
                route, base, ctype = info.route, info.base, resp.headers.get("content-type", "")
                resp.stream = HeldAnswer(cap, lambda body: rt.lfs.batch_answer(
                    state, 200, ctype, body, base=base, repo_path=route.repo_path))
            return True
        self._show(flow, info)
        if info.transfer is not None:
            transfer = info.transfer
            transfer.start(resp.status_code, resp.headers.get("content-encoding"))
            resp.stream = transfer.stream
        elif state.kind is Kind.LFS_OBJECT and not resp.stream:
            resp.stream = True
        return True

    def response(self, flow: http.HTTPFlow, state: FlowState | None) -> bool:
        """Rewrite a batch answer; store (or refuse to finish) an object; True if ``state``
        is an LFS flow."""
        info, resp, rt = self._flows.pop(flow, None), flow.response, self._rt()
        if info is None or state is None or resp is None or rt is None:
            return False
        if state.kind is Kind.LFS_BATCH:
            if info.route is not None and (info.read or resp.status_code != 200):
                new = rt.lfs.batch_answer(state, resp.status_code,
                                          resp.headers.get("content-type", ""),
                                          resp.get_content(strict=False) or b"",
                                          base=info.base,
                                          repo_path=info.route.repo_path)
                if new is not None:
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
