"""Which requests goblet handles, and which it refuses before reading them.

A request is a git request goblet may cache when it is ``https``, names a
host of ``goblet_hosts`` and a git smart-HTTP route (``protocol/routes.py``)
and its ``Host`` header names the same host. Requests that read refs or packs
must also be bound to their tunnel: inside a ``CONNECT`` tunnel the request
target's authority (absolute form) and the TLS server name must be the
tunnel's host, or the verdict, the cache repo and the host the request is
sent to could differ. A header holding CR, LF or NUL (an obs-fold
continuation line), or a ``Transfer-Encoding`` other than plain ``chunked``
(which mitmproxy and the upstream could read differently), is refused without
repeating it (it may be a credential). A query string other than git's own
(``service=git-upload-pack`` on ``info/refs``, none on ``git-upload-pack``)
may carry a credential the upstream reads (``?access_token=``) that the
tenant id cannot see: such requests are not goblet's, they pass through
uncached and record no verdict. Pushes pass through untouched whatever they
look like.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from urllib.parse import parse_qsl

from goblet.observe import exposure
from goblet.observe.endpoints import PATHS as ENDPOINT_PATHS
from goblet.options import parse_host
from goblet.policy.flows import Kind
from goblet.protocol import routes
from goblet.protocol.errors import ProtocolError

Hosts = frozenset[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the addon read from a request before its body."""

    method: str
    scheme: str
    host: str
    port: int
    path: str
    host_header: str | None = None
    authority: str = ""  # an absolute-form authority mitmproxy kept (inside a tunnel)
    tunnel: tuple[str, int] | None = None  # the CONNECT target, inside a tunnel
    sni: str | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Classified:
    """A git request to a goblet host: its kind, repo path, or why it is refused."""

    kind: Kind
    repo_path: str = ""
    problem: str = ""  # for Kind.INVALID: the one-line reason (never a header value)


def intercepts(names: Iterable[tuple[str, int]], hosts: Hosts) -> bool:
    """Whether a TLS connection naming any of ``names`` (SNI, address) is intercepted."""
    return any((host.lower(), port) in hosts for host, port in names)


def classify(facts: RequestFacts, hosts: Hosts) -> Classified | None:
    """The git route of a request to a goblet host, or None for anything else."""
    host = facts.host.lower()
    if facts.scheme != "https" or (host, facts.port) not in hosts:
        return None
    if not host_header_matches(facts.host_header, host, facts.port):
        return None  # Host disagrees with the connection: never cached, passed on
    try:
        route = routes.classify(facts.method, facts.path)
    except ProtocolError as e:
        return Classified(Kind.INVALID, problem=f"bad repository path: {e.reason}")
    if route.kind is routes.Service.OTHER:
        return Classified(Kind.OTHER)  # web pages, LFS, API calls: passed on, logged
    if route.kind is routes.Service.PUSH:
        return Classified(Kind.PUSH, route.repo_path)
    if not git_query(route.kind, facts.path):
        return Classified(Kind.OTHER, route.repo_path,
                          problem="a query string git does not send: passed through uncached")
    try:
        check_binding(facts)
        check_headers(facts.headers)
    except ProtocolError as e:
        return Classified(Kind.INVALID, problem=f"bad request: {e.reason}")
    kind = Kind.INFO_REFS if route.kind is routes.Service.INFO_REFS else Kind.UPLOAD_PACK
    return Classified(kind, route.repo_path)


def git_query(kind: routes.Service, path: str) -> bool:
    """Whether a request's query string is exactly what git sends for ``kind``."""
    _, _, query = path.partition("?")
    if kind is routes.Service.INFO_REFS:
        return parse_qsl(query, keep_blank_values=True) == [("service", "git-upload-pack")]
    return not query and "?" not in path


def host_header_matches(header: str | None, host: str, port: int) -> bool:
    """Whether a Host header names ``host:port`` (the port may be left out for 443)."""
    value = (header or "").lower()
    host = host.lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name == host and (rest == f":{port}" or (not rest and port == 443))
    return value == f"{host}:{port}" or (value == host and port == 443)


def check_binding(facts: RequestFacts) -> None:
    """Raise ProtocolError unless the request names the host its tunnel goes to."""
    here = (facts.host.lower().rstrip("."), facts.port)
    if facts.authority:
        try:
            named = parse_host(facts.authority)
        except ValueError:
            raise ProtocolError("malformed request target authority") from None
        if named != here:
            raise ProtocolError("request target does not match the CONNECT host")
    if facts.tunnel is not None and (facts.tunnel[0].lower().rstrip("."), facts.tunnel[1]) != here:
        raise ProtocolError("request target does not match the CONNECT host")
    if facts.sni and facts.sni.lower().rstrip(".") != here[0]:
        raise ProtocolError("TLS server name does not match the request's host")


_BREAKS = re.compile(rb"[\r\n\0]")


def check_headers(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Raise ProtocolError if a header name or value holds CR, LF or NUL."""
    for name, value in headers:
        if _BREAKS.search(value) or _BREAKS.search(name):
            raise ProtocolError("malformed (folded or multi-line) request header")
        if name.lower() == b"transfer-encoding" and value.strip().lower() != b"chunked":
            raise ProtocolError("unsupported Transfer-Encoding")


def prefix_target(path: str, hosts: Hosts) -> tuple[str, int, str] | str:
    """A path-prefix URL ``/<host>/<path>`` as (host, port, path), or why it is refused.

    The prefix port is never an open proxy: only hosts of ``goblet_hosts``.
    """
    split = routes.split_prefix(path)
    if split is None:
        return "path-prefix URLs look like /<host>/<repo>/…"
    try:
        host, port = parse_host(split[0])
    except ValueError:
        return "path-prefix URLs look like /<host>/<repo>/…"
    if (host, port) not in hosts:
        return "this host is not served here (goblet_hosts)"
    return host, port, split[1]


@dataclass(frozen=True, slots=True)
class Door:
    """What happens to a request before it is classified: answered as an endpoint, or
    with ``reply`` (status, one-line body), or rewritten to a path-prefix ``target``
    (host, port, path), and (relayed plain HTTP) given a ``via`` header."""

    endpoint: bool = False
    reply: tuple[int, bytes] | None = None
    target: tuple[str, int, str] | None = None
    via: str | None = None


def front_door(plain: exposure.PlainRequest, *, prefix_port: bool, hosts: Hosts,
               proxy_ports: AbstractSet[int], is_local: Callable[[str], bool]) -> Door:
    """Endpoints and loops (``observe/exposure.py``) on the proxy ports; path-prefix
    URLs, which name only goblet hosts, on the prefix port."""
    if prefix_port:
        if plain.path.split("?", 1)[0] in ENDPOINT_PATHS:
            return Door(endpoint=True)
        target = prefix_target(plain.path, hosts)
        if isinstance(target, str):
            return Door(reply=(404, f"goblet: {target}\n".encode()))
        return Door(target=target)
    route = exposure.route(plain, proxy_ports=proxy_ports, is_local=is_local)
    if route is exposure.Destination.ENDPOINT:
        return Door(endpoint=True)
    if route is exposure.Destination.LOOP:
        return Door(reply=(508, exposure.LOOP_MESSAGE))
    if route is exposure.Destination.RELAY:
        return Door(via=exposure.add_via(plain.via))
    return Door()
