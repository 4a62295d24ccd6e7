"""The connection-level hooks: first-request deadlines, relays goblet refuses, TLS
it leaves alone, and the path-prefix port's refusal of tunnels; and the open-proxy
check of the listening options (``guard_exposure``).

A mixin of the addon class (mitmproxy finds hooks by method name on one
object); the decisions it applies live in ``observe/exposure.py``,
``policy/requests.py`` and ``policy/deadlines.py``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

from mitmproxy import connection, ctx, exceptions, http, tcp, tls
from mitmproxy.proxy import server_hooks

from goblet import options as opts
from goblet.addon import dispatch, headlimit
from goblet.observe import exposure, redact
from goblet.observe.access import AccessLog
from goblet.policy import requests
from goblet.policy.deadlines import Deadlines
from goblet.runtime import Runtime

TEXT = {"Content-Type": "text/plain; charset=utf-8"}
_NOT_RELAYED = "goblet_not_relayed"  # flow.metadata key of a raw tunnel goblet closed
log = logging.getLogger("goblet")


def guard_exposure(o: Any, *, started: bool, listening: bool) -> bool:
    """The open-proxy check (``observe/exposure.py``) of mitmproxy options ``o``: True if
    goblet may go on. Once started, a refused change raises OptionsError (mitmproxy keeps
    the old values). During start-up a refusal is one error line and mitmproxy's
    ``server`` turned off, so nothing is bound and its start-up error check exits with
    status 1 (raising would print a traceback, and the script loads while mitmproxy
    already binds its listeners)."""
    verdict = exposure.start_verdict_for(o, listening=listening)
    if not verdict.refuse:
        return True
    if started:
        raise exceptions.OptionsError(verdict.message)
    log.error("%s", verdict.message)
    if "server" in o:
        o.update(server=False)
    return False


class ConnectionHooks:
    """Hooks on client and server connections, before any HTTP request is read."""

    settings: opts.Settings | None
    rt: Runtime | None
    access: AccessLog
    _dispatch_refused: str | None = None  # why goblet's dispatch was refused, once said
    _heads: Deadlines[str]
    _backend_clients: set[str]  # client connections whose requests goblet answers

    @staticmethod
    def install_guards() -> None:
        """Process-wide guards goblet puts in place as it loads: header lines kept out
        of mitmproxy's log (``observe/redact.py``) and the bound on request heads
        (``headlimit.py``; if it cannot be put in place, that is logged once)."""
        redact.install()
        why = headlimit.install()
        if why is not None:
            log.warning("goblet: request heads are not bounded (%s)", why)

    def apply(self, settings: opts.Settings) -> None:
        """Put process-wide settings in place: the access log's format and the hook
        dispatch (``dispatch.py``; a warning says why if it cannot be replaced)."""
        self.access.configure(settings.log_format)
        if not settings.fast_dispatch:
            dispatch.uninstall()
        elif not dispatch.installed() and (why := dispatch.install()) is not None \
                and why != self._dispatch_refused:
            log.warning("goblet: mitmproxy's own hook dispatch stays (%s)", why)
            self._dispatch_refused = why

    def client_connected(self, client: connection.Client) -> None:
        """A new client owes its first request head (``policy/deadlines.py``)."""
        self._heads.arm(client.id)

    def client_disconnected(self, client: connection.Client) -> None:
        """Nothing is owed by a client that is gone, or relayed as TCP or a websocket."""
        self._heads.cancel(client.id)
        self._backend_clients.discard(client.id)

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Refuse to relay clients to this host's own or link-local addresses unless
        ``goblet_relay_internal`` (``observe/exposure.py``)."""
        s, server = self.settings, data.server
        if s is None or server.address is None or s.relay_internal:
            return
        got = await exposure.connect_verdict(
            str(server.address[0]), server.address[1], hosts=s.hosts,
            backend=("127.0.0.1", self.rt.backend.port) if self.rt else None,
            ours=data.client.id in self._backend_clients, proxy_ports=proxy_ports())
        server.error, server.address = got.error, got.address or server.address

    def tcp_start(self, flow: tcp.TCPFlow | http.HTTPFlow) -> None:
        """A connection relayed as TCP (or, ``websocket_start``, a websocket) owes nothing.
        Raw TCP to a goblet host — a tunnel whose first bytes mitmproxy did not take for
        HTTP — would pass every check goblet makes on requests: it is closed, and
        ``tcp_message`` relays none of its bytes."""
        self._heads.cancel(flow.client_conn.id)
        if not isinstance(flow, tcp.TCPFlow) or self.settings is None:
            return
        names = _names(flow.client_conn.sni, flow.server_conn.address)
        if requests.intercepts(names, self.settings.hosts):
            flow.metadata[_NOT_RELAYED] = True
            log.warning("goblet: a tunnel to %s:%d that is not HTTP: closed, nothing relayed",
                        *names[0])
            close_client(flow.client_conn.id)

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        """Nothing of a tunnel ``tcp_start`` closed is relayed (its messages are emptied
        before mitmproxy sends them on)."""
        if flow.metadata.get(_NOT_RELAYED) and flow.messages:
            flow.messages[-1].content = b""

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        """A websocket owes no request head."""
        self._heads.cancel(flow.client_conn.id)

    def _owes_next(self, flow: http.HTTPFlow) -> None:
        if flow.client_conn.timestamp_end is None:
            self._heads.arm(flow.client_conn.id)  # a kept-alive client owes its next head

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Relay TLS to hosts we do not cache without intercepting it."""
        if self.settings is None:
            return
        names = _names(data.client_hello.sni, data.context.server.address)
        if not requests.intercepts(names, self.settings.hosts):
            data.ignore_connection = True  # an opaque relay owes goblet no request
            self._heads.cancel(data.context.client.id)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """The path-prefix port serves path-prefix URLs only: no tunnels."""
        self._heads.arm(flow.client_conn.id)  # the tunnel's first request is owed now
        if self._on_prefix_port(flow):
            flow.response = http.Response.make(
                405, b"goblet: this port serves http://<goblet>/<host>/<repo> URLs, "
                     b"not CONNECT\n", TEXT)

    def _not_started(self, flow: http.HTTPFlow) -> None:
        """A request that arrives before goblet's runtime is up (or after it failed to
        start): passed on untouched on a proxy port, refused with 503 on the path-prefix
        port, which never relays (it is exempt from the open-proxy check for that)."""
        if not self._on_prefix_port(flow):
            flow.request.stream = True
            return
        flow.response = http.Response.make(503, b"goblet: not ready yet, try again\n", {
            **TEXT, "Retry-After": "1", "Connection": "close"})

    def _on_prefix_port(self, flow: http.HTTPFlow) -> bool:
        sockname = flow.client_conn.sockname
        return bool(self.settings and self.settings.prefix_port and sockname
                    and sockname[1] == self.settings.prefix_port)


def _names(sni: str | None, address: tuple[str, int] | None) -> list[tuple[str, int]]:
    """The (name, port) pairs a tunnel goes to: its TLS server name and its address."""
    port = address[1] if address else 443
    return [(n, port) for n in (sni, address[0] if address else None) if n]


_PORTS_EVERY = 1.0  # seconds proxy_ports trusts its last look
_ports: tuple[float, frozenset[int]] = (-_PORTS_EVERY, frozenset())


def proxy_ports() -> frozenset[int]:
    """The ports mitmproxy listens on (looked up at most once a second: a look asks the
    kernel for every listening socket's address)."""
    global _ports  # noqa: PLW0603 (one process, one proxyserver)
    now = time.monotonic()
    if now - _ports[0] >= _PORTS_EVERY:
        server = ctx.master.addons.get("proxyserver")
        _ports = (now, frozenset(addr[1] for addr in server.listen_addrs())
                  if server else frozenset())
    return _ports[1]


_CLOSED_KEPT = 10_000  # client ids close_client remembers (newest; ids are never reused)
_closed: OrderedDict[str, None] = OrderedDict()


def closed_by_goblet(client_id: str) -> bool:
    """Whether goblet closed this client connection itself (``close_client``): its flows
    did not end by the client's doing."""
    return client_id in _closed


def close_client(client_id: str) -> None:
    """Close a client connection now (mitmproxy has no public call for it)."""
    _closed[client_id] = None
    while len(_closed) > _CLOSED_KEPT:
        _closed.popitem(last=False)
    handler = getattr(ctx.master.addons.get("proxyserver"), "connections", {}).get(client_id)
    if handler is not None:
        handler.close_connection(handler.client)


def client_backlog(client_id: str) -> int:
    """Bytes the proxy holds for a client connection that it has not taken yet (0 if
    unknown): mitmproxy reads an upstream answer no faster than its client takes it."""
    handler = getattr(ctx.master.addons.get("proxyserver"), "connections", {}).get(client_id)
    io = getattr(handler, "transports", {}).get(getattr(handler, "client", None))
    transport = getattr(getattr(io, "writer", None), "transport", None)
    size = getattr(transport, "get_write_buffer_size", None)
    return int(size()) if callable(size) else 0
