"""Answers goblet gives as soon as a request's head arrives, never holding its body.

A request goblet answers itself without needing its body (an invalid request, an LFS
link refusal, an endpoint or path-prefix refusal) must cost nothing whatever body it
carries. mitmproxy can only send an answer after the whole request body arrived, unless
the body is streamed, and a streamed request goes to a server. So a request without a
body gets its answer at once (``flow.response``); one that may carry one goes to goblet's
loopback backend, which answers from a single-use ``ReplyPlan``, while the body is
dropped as it arrives (``bodies.Discard``): the client's connection is closed after the
answer, once the body is over, past ``goblet_max_request_bytes`` or at
``goblet_request_body_timeout``. Flows followed elsewhere (an LFS link) may drop their
body the same way. The bodies goblet does hold (to read them) get their deadline here too.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from mitmproxy import http
from mitmproxy.net.http import status_codes

from goblet.addon.connections import close_client
from goblet.policy import bodies
from goblet.policy.deadlines import Deadlines
from goblet.policy.flows import FlowState
from goblet.serve.files import FilePlan
from goblet.serve.plans import TOKEN_HEADER, ReplyPlan, ServePlan

if TYPE_CHECKING:
    from goblet.runtime import Runtime


def to_backend(flow: http.HTTPFlow, rt: Runtime, backend_clients: set[str],
               plan: ServePlan | FilePlan | ReplyPlan) -> None:
    """Rewrite ``flow`` so mitmproxy fetches its answer (``plan``) from goblet's loopback
    backend: nothing but the plan's single-use token goes there."""
    backend_clients.add(flow.client_conn.id)
    token, port, req = rt.plans.register(plan), rt.backend.port, flow.request
    req.scheme, req.host, req.port = "http", "127.0.0.1", port
    req.headers = http.Headers([(b"Host", f"127.0.0.1:{port}".encode()),
                                (b"Content-Length", b"0"),
                                (TOKEN_HEADER.encode(), token.encode())])


class EarlyAnswers:
    """Early answers and dropped bodies (see the module docstring)."""

    def __init__(self, runtime: Callable[[], Runtime | None],
                 backend_clients: set[str]) -> None:
        self._rt = runtime
        self._backend_clients = backend_clients
        # the URL (scheme, host, port, path) of flows answered through the backend
        self._shown: weakref.WeakKeyDictionary[http.HTTPFlow, tuple[str, str, int, str]] = (
            weakref.WeakKeyDictionary())
        # the deadlines of bodies dropped unread (they end with the body, not the answer)
        self._drops: weakref.WeakKeyDictionary[http.HTTPFlow, asyncio.TimerHandle] = (
            weakref.WeakKeyDictionary())
        # the deadlines of bodies goblet holds to read them
        self._held: Deadlines[_HeldBody] = Deadlines(self._held_seconds, self._held_passed)

    def reply(self, flow: http.HTTPFlow, status: int, content: bytes,
              headers: Sequence[tuple[str, str]], *, body: bool) -> None:
        """Answer ``flow`` now with ``status``, ``content`` and ``headers`` (``body``: the
        request may carry a body, which is then dropped)."""
        rt, req = self._rt(), flow.request
        assert rt is not None
        if not body:
            flow.response = goblet_response(status, content, headers)
            return
        self._shown.setdefault(flow, (req.scheme, req.host, req.port, req.path))
        to_backend(flow, rt, self._backend_clients,
                   ReplyPlan(status, content, tuple(header_fields(headers))))
        self.discard(flow, timed=True)

    def discard(self, flow: http.HTTPFlow, *, timed: bool) -> None:
        """Drop whatever body ``flow`` carries as it arrives (mitmproxy sends the request
        on at once), within the size cap and (``timed``) the body timeout."""
        rt = self._rt()
        assert rt is not None
        flow.request.stream = bodies.Discard(rt.settings.max_request_bytes,
                                             lambda: close_client(flow.client_conn.id))
        if timed:
            self._drops[flow] = asyncio.get_running_loop().call_later(
                rt.settings.request_body_timeout, self._timed_out, flow)

    def time_held(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Give a body goblet does hold (an upload-pack request's, to read it) its
        deadline: if it has not arrived by then, and was not passed on meanwhile, the
        client's connection is closed."""
        held = _HeldBody(flow, state, self._held)
        self._held.arm(held)
        state.body_timer = held

    def _held_seconds(self) -> float:
        rt = self._rt()
        return rt.settings.request_body_timeout if rt is not None else 60.0

    def _held_passed(self, held: _HeldBody) -> None:
        state, rt = held.state, self._rt()
        if state.body_timer is not held or held.flow.request.stream or rt is None:
            return  # (a body passed on upstream owes goblet nothing)
        state.body_timer, state.timed_out = None, True
        state.reason = "request body not received in time (goblet_request_body_timeout)"
        rt.metrics.of(rt.metrics.request_bodies, "timeout").inc()
        close_client(held.flow.client_conn.id)

    def answered(self, flow: http.HTTPFlow) -> bool:
        """Whether ``flow`` was answered through the backend (nothing more to decide)."""
        return flow in self._shown

    def body_ended(self, flow: http.HTTPFlow, *, unshow: bool = False) -> None:
        """The dropped body has ended (or, ``unshow``, its flow): no deadline any more."""
        if (timer := self._drops.pop(flow, None)) is not None:
            timer.cancel()
        if unshow:
            self.unshow(flow)

    def unshow(self, flow: http.HTTPFlow) -> bool:
        """Put back the URL of a flow answered through the backend (for logs), and have
        the client's connection closed after the answer; False if it was not one."""
        if (shown := self._shown.pop(flow, None)) is None:
            return False
        req = flow.request
        req.scheme, req.host, req.port, req.path = shown
        if flow.response is not None:
            flow.response.headers["Connection"] = "close"
        return True

    def _timed_out(self, flow: http.HTTPFlow) -> None:
        rt = self._rt()
        if self._drops.pop(flow, None) is not None and rt is not None:
            rt.metrics.request_bodies.labels("timeout").inc()
            close_client(flow.client_conn.id)


class _HeldBody:
    """The pending deadline of one held body (``FlowState.body_timer``)."""

    __slots__ = ("_deadlines", "flow", "state")

    def __init__(self, flow: http.HTTPFlow, state: FlowState,
                 deadlines: Deadlines[_HeldBody]) -> None:
        self.flow, self.state, self._deadlines = flow, state, deadlines

    def cancel(self) -> None:
        self._deadlines.cancel(self)


def goblet_response(status: int, body: bytes, headers: Sequence[tuple[str, str]]) -> http.Response:
    """A mitmproxy response with these headers (Content-Length set) and body, sent as it is
    (built directly: ``Response.make`` would run the body through content encoding).

    Its data is filled in without the per-field type checks mitmproxy runs on each new
    message (they cost about 20 µs; every value here has its type by construction, and
    a unit test compares the result with one built the checked way)."""
    fields = header_fields(headers)
    fields.append((b"Content-Length", str(len(body)).encode()))
    now = time.time()
    data = http.ResponseData.__new__(http.ResponseData)
    data.__dict__.update(http_version=b"HTTP/1.1", headers=http.Headers(fields), content=body,
                         trailers=None, timestamp_start=now, timestamp_end=now,
                         status_code=status,
                         reason=status_codes.RESPONSES.get(status, "").encode())
    response = http.Response.__new__(http.Response)
    response.data = data
    return response


def set_header(headers: http.Headers, name: str, value: str) -> None:
    """Set header ``name`` (ASCII) to ``value``: appended unless the answer has it (cheaper
    than ``headers[name] = value``, which rebuilds every field)."""
    low = name.lower().encode()
    if any(field.lower() == low for field, _ in headers.fields):
        headers[name] = value
    else:
        headers.fields = (*headers.fields, (name.encode(), value.encode("utf-8",
                                                                         "surrogateescape")))


def header_fields(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """goblet's answer headers as wire fields, without Content-Length or Transfer-Encoding
    (whoever sends the answer frames its body)."""
    return [(k.encode(), v.encode("latin-1", "replace")) for k, v in headers
            if k.lower() not in ("content-length", "transfer-encoding")]
