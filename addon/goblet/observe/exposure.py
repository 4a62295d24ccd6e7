"""Who may use goblet as a proxy, and what to do with requests addressed to goblet itself.

Pure functions; the addon hands them mitmproxy's options and a flow's facts.

**Open proxy.** mitmproxy relays ``CONNECT`` and absolute-form requests to any
host, internal services and cloud metadata addresses included, and by default
asks clients for no credentials. goblet therefore refuses to start when a
relaying listener is bound beyond loopback while no client authentication
(mitmproxy's ``proxyauth``) guards it, unless ``goblet_allow_open_proxy=on``
says this is intended (a pod-local sidecar, a container whose port is
published on loopback only, a network policy in front): then it logs a
warning instead.

**Requests addressed to goblet.** The observability endpoints answer on the
proxy port when a plain-HTTP request names this machine's address (Host
``127.0.0.1:8080``, a pod IP). A request whose Host is a DNS name of this
machine looks exactly like one to be forwarded; forwarding it would make
goblet connect to itself, which would forward it again, without end. Every
plain-HTTP request goblet forwards therefore carries this process's name in
a ``Via`` header (which RFC 9110 asks proxies to add, to detect such loops),
and a request that arrives with that name has come back: it is answered
here, as an endpoint if it asks for one, else with ``508 Loop Detected``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
import socket
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any

from goblet.observe.endpoints import PATHS
from goblet.options import OPTIONS, parse_bool

OPTION = next(spec for spec in OPTIONS if spec.name == "goblet_allow_open_proxy")
# mitmproxy options that decide whether goblet is reachable as an open proxy
EXPOSURE_OPTIONS = frozenset({"mode", "listen_host", "listen_port", "proxyauth", OPTION.name,
                              "goblet_prefix_port"})

# Modes whose listeners relay to a fixed target only (not an open proxy).
_FIXED_TARGET = frozenset({"reverse"})
# Modes without a listening socket of their own.
_NO_SOCKET = frozenset({"local", "tun"})
# Modes whose relaying mitmproxy's proxyauth guards (CONNECT, absolute-form, SOCKS5).
_AUTHENTICATED = frozenset({"regular", "upstream", "socks5"})
_DEFAULT_PORTS = {"socks5": 1080, "dns": 53, "wireguard": 51820}

# This process's name in Via headers: random, so that it names no host and two
# goblets (or two processes of one host) never take each other's requests for
# their own.
HOP = "goblet-" + secrets.token_hex(6)
LOOP_MESSAGE = (b"goblet: this request is addressed to goblet itself and came back to it; "
                b"nothing to forward it to\n")


@dataclass(frozen=True, slots=True)
class Listener:
    """One mitmproxy server: its mode and the address it binds ('' = every interface)."""

    mode: str
    host: str
    port: int | None

    def __str__(self) -> str:
        host = self.host or "*"
        host = f"[{host}]" if ":" in host else host
        return f"{self.mode}@{host}:{self.port}"


def listeners(modes: Sequence[str], listen_host: str | None,
              listen_port: int | None) -> list[Listener]:
    """The listeners mitmproxy starts for ``mode`` specs (``name[:data][@[host:]port]``).

    A spec without a host binds ``listen_host``; an empty host means every
    interface, as in mitmproxy. A port is read as mitmproxy reads it (``int``:
    ``+8080``, ``8_080`` and `` 8080`` are 8080); one it cannot read counts as
    port 0 on every interface, so that a spelling this code and mitmproxy read
    differently is judged open (fail closed).
    """
    out = []
    for spec in modes:
        head, _, at = spec.rpartition("@")
        if not head:
            head, at = at, ""
        mode = head.partition(":")[0].lower()
        host: str | None = None
        port: int | None = None
        if at:
            host, sep, port_text = at.rpartition(":")
            if not sep:
                host, port_text = None, at
            try:
                port = int(port_text)
            except ValueError:
                host, port = "", 0
        if mode in _NO_SOCKET:
            continue
        if port is None:
            port = listen_port if listen_port is not None else _DEFAULT_PORTS.get(mode, 8080)
        out.append(Listener(mode, (listen_host or "") if host is None else host, port))
    return out


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` stays on this machine's loopback.

    ``''`` (every interface) and host names other than ``localhost`` count as
    beyond loopback: a name can resolve to anything.
    """
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def authenticates(proxyauth: str | None) -> bool:
    """Whether mitmproxy's ``proxyauth`` asks clients for credentials it checks.

    ``any`` accepts every user name and password, and a single ``user:`` with an
    empty password (``:`` too) anyone who sends that name: that asks, but checks
    nothing.
    """
    value = (proxyauth or "").strip()
    return bool(value) and value != "any" and not _no_password(proxyauth or "")


def _no_password(proxyauth: str) -> bool:
    """Whether ``proxyauth`` (as given: mitmproxy does not strip it) is mitmproxy's
    single ``user:password`` form with a blank password (not an htpasswd file, not
    LDAP)."""
    if proxyauth.startswith(("@", "ldap")):  # (mitmproxy's own tests, in its order)
        return False
    return not proxyauth.partition(":")[2].strip()


def open_listeners(found: Iterable[Listener], proxyauth: str | None,
                   prefix_port: int = 0) -> list[Listener]:
    """The listeners that relay for anyone who reaches them beyond loopback.

    goblet's path-prefix listener (``regular@<goblet_prefix_port>``) answers
    only ``/<goblet host>/<repo>`` URLs and refuses CONNECT: it relays nowhere else.
    """
    guarded = authenticates(proxyauth)
    return [
        lst for lst in found
        if lst.mode not in _FIXED_TARGET and not is_loopback(lst.host)
        and not (guarded and lst.mode in _AUTHENTICATED)
        and not (prefix_port and lst.mode == "regular" and lst.port == prefix_port)
    ]


@dataclass(frozen=True, slots=True)
class StartVerdict:
    """What start-up does about exposure: go on, warn, or refuse (with ``message``)."""

    refuse: bool = False
    message: str = ""


def start_verdict(found: Sequence[Listener], proxyauth: str | None,
                  allow_open_proxy: str, prefix_port: int = 0) -> StartVerdict:
    """Refuse an open proxy unless ``goblet_allow_open_proxy=on``; then warn.

    Raises ValueError for a bad ``goblet_allow_open_proxy`` value.
    """
    allow = parse_bool(OPTION.name, allow_open_proxy)
    exposed = open_listeners(found, proxyauth, prefix_port)
    if not exposed:
        return StartVerdict()
    where = ", ".join(str(lst) for lst in exposed)
    value = (proxyauth or "").strip()
    auth = "no proxyauth" if not value else "proxyauth=any checks no password" \
        if value == "any" else "a proxyauth user with an empty password checks no password"
    if allow:
        return StartVerdict(message=(
            f"goblet: open proxy on {where} ({auth}): anyone who can reach it can relay "
            f"through it to any host, as goblet_allow_open_proxy=on allows "
            f"(docs/operations/exposure.md)"))
    return StartVerdict(refuse=True, message=(
        f"goblet: refusing to start: {where} listens beyond loopback with {auth}, so anyone "
        f"who reaches it could relay through it to any host; listen on 127.0.0.1, set "
        f"proxyauth, or --set goblet_allow_open_proxy=on if a network boundary makes that "
        f"safe (docs/operations/exposure.md)"))


def start_verdict_for(options: Any, *, listening: bool = True) -> StartVerdict:
    """``start_verdict`` from a mitmproxy options object; a bad value refuses too.

    ``listening``: whether mitmproxy runs its proxy servers at all (an addon
    test harness does not, and nothing can reach it).
    """
    if not listening:
        return StartVerdict()
    try:
        return start_verdict(
            listeners(list(getattr(options, "mode", ["regular"])),
                      getattr(options, "listen_host", ""),
                      getattr(options, "listen_port", None)),
            getattr(options, "proxyauth", None),
            str(getattr(options, OPTION.name, OPTION.default)),
            _port(getattr(options, "goblet_prefix_port", "0")),
        )
    except ValueError as e:
        return StartVerdict(refuse=True, message=f"goblet: {e}")


def _port(value: object) -> int:
    text = str(value).strip()
    return int(text) if text.isdigit() else 0


class Destination(Enum):
    """Where a request arriving on a proxy port goes."""

    ENDPOINT = "endpoint"  # answered here: /metrics, /healthz, /readyz
    LOOP = "loop"  # addressed to goblet and came back: answered 508 here
    RELAY = "relay"  # plain HTTP for another server: forwarded, marked with our Via
    OTHER = "other"  # not plain HTTP: none of this module's business


@dataclass(frozen=True, slots=True)
class PlainRequest:
    """What routing needs to know of a request."""

    scheme: str
    method: str
    path: str
    host: str
    port: int
    via: tuple[str, ...] = ()


_VIA_COMMENT = re.compile(r"\([^()]*\)")


def via_names(values: Iterable[str]) -> set[str]:
    """The ``received-by`` names of Via header values (``1.1 name (comment), …``)."""
    names = set()
    for value in values:
        for entry in _VIA_COMMENT.sub(" ", value).split(","):
            parts = entry.split()
            if len(parts) >= 2:
                names.add(parts[1])
    return names


def add_via(values: Iterable[str], hop: str = HOP) -> str:
    """The Via header value with this process appended."""
    present = ", ".join(v.strip() for v in values if v.strip())
    return f"{present}, 1.1 {hop}" if present else f"1.1 {hop}"


def route(req: PlainRequest, *, proxy_ports: AbstractSet[int], is_local: Callable[[str], bool],
          hop: str = HOP) -> Destination:
    """Where ``req`` goes.

    An endpoint request is a GET or HEAD of an endpoint path over plain HTTP
    that either names a proxy port at an address of this machine, or carries
    our Via name (it was forwarded by us and came back: its Host resolves to
    us). A request for another path that came back is a loop. Other plain
    HTTP is relayed and marked.
    """
    if req.scheme != "http":
        return Destination.OTHER
    came_back = hop in via_names(req.via)
    if req.method in ("GET", "HEAD") and req.path.split("?", 1)[0] in PATHS and (
            came_back or (req.port in proxy_ports and is_local(req.host))):
        return Destination.ENDPOINT
    return Destination.LOOP if came_back else Destination.RELAY


@lru_cache(maxsize=256)
def is_local_address(host: str) -> bool:
    """Whether ``host`` (a name or an address literal) names this machine: a socket can
    bind to it. Only literals and ``localhost`` are checked; names are not resolved."""
    if host in ("localhost", "127.0.0.1", "::1"):
        return True
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM,
                                   flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        return False
    for family, _, _, _, sockaddr in infos:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((sockaddr[0], 0))
                return True
            except OSError:
                continue
    return False


def startup_warnings(options: Any, *, listening: bool = True) -> list[str]:
    """Warnings to log once goblet runs: an open proxy the operator allowed, HTTP/2."""
    out = []
    verdict = start_verdict_for(options, listening=listening)
    if verdict.message and not verdict.refuse:
        out.append(verdict.message)
    if getattr(options, "http2", False):
        out.append("goblet: http2 is on; mitmproxy 11.0's h2 has a header-injection advisory, "
                   "consider --set http2=false (docs/architecture.md#http2)")
    return out


def internal_address(ip: str) -> bool:
    """Whether ``ip`` is this host's own or a link-local address (loopback, unspecified,
    169.254.0.0/16 with the cloud metadata service, fe80::/10), which a proxy must not
    relay clients to: they reach services that trust being local."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback or addr.is_link_local or addr.is_unspecified


async def resolve_destination(host: str, port: int) -> tuple[str | None, bool]:
    """Look ``host`` up once: the address to connect to (pinned, so no second lookup can
    answer differently) and whether any of its addresses is internal (then the relay
    is refused). (None, False) when it does not resolve: the connection fails by itself."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None, False
    addresses = [str(sockaddr[0]) for *_, sockaddr in infos]
    return (addresses[0] if addresses else None), any(internal_address(a) for a in addresses)


@dataclass(frozen=True, slots=True)
class Connect:
    """What to do with a connection mitmproxy is about to open for a client: refuse it
    (``error``), or connect to ``address`` (a pinned lookup), or leave it (both None)."""

    error: str | None = None
    address: tuple[str, int] | None = None


async def connect_verdict(host: str, port: int, *, hosts: frozenset[tuple[str, int]],
                          backend: tuple[str, int] | None, ours: bool,
                          proxy_ports: AbstractSet[int]) -> Connect:
    """Goblet hosts are connected as named; goblet's own backend only for a client whose
    flow goblet rewrote to it (``ours``); anything else only if none of its addresses is
    internal, and then to the address looked up (so DNS cannot answer differently twice).
    goblet's own proxy ports are the exception: a request relayed there comes back to
    goblet, which answers it as an endpoint or refuses the loop (see ``route``).
    """
    if (host.lower(), port) in hosts:
        return Connect()
    if (host, port) == backend:
        return Connect() if ours else Connect(error="goblet: this address is goblet's own")
    pinned, internal = await resolve_destination(host, port)
    if internal and port not in proxy_ports:
        return Connect(error=f"goblet: {host} is a loopback or link-local address")
    return Connect(address=(pinned, port) if pinned else None)
