"""Hand-made HTTPS requests through the proxy, for what the git client never sends."""

from __future__ import annotations

import http.client
import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RawResponse:
    """Status, headers (lower-cased names) and body of one response."""

    status: int
    headers: dict[str, str]
    body: bytes


def request(
    *,
    proxy_port: int | None,
    ca_file: Path,
    host: str,
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30,
) -> RawResponse:
    """Send one request to https://host:port (through the proxy when ``proxy_port`` is set)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if proxy_port is None:
        conn = http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
    else:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", proxy_port, context=context, timeout=timeout
        )
        conn.set_tunnel(host, port)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return RawResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def pkt(line: str | bytes) -> bytes:
    """One pkt-line (adds LF to str input)."""
    data = line.encode() + b"\n" if isinstance(line, str) else line
    return b"%04x" % (len(data) + 4) + data


def v2_fetch_body(*wants: str, extra: tuple[str, ...] = ()) -> bytes:
    """A protocol v2 ``command=fetch`` body as git 2.39 sends it."""
    return (
        pkt(b"command=fetch") + pkt("agent=git/2.39.5") + pkt("object-format=sha1") + b"0001"
        + pkt("thin-pack") + pkt("ofs-delta") + b"".join(pkt(f"want {w}") for w in wants)
        + b"".join(pkt(e) for e in extra) + pkt("done") + b"0000"
    )


def v2_ls_refs_body(prefixes: tuple[str, ...] = ("HEAD", "refs/heads/")) -> bytes:
    """A protocol v2 ``command=ls-refs`` body asking for ``prefixes``."""
    return (
        pkt(b"command=ls-refs") + pkt("agent=git/2.39.5") + pkt("object-format=sha1") + b"0001"
        + pkt("peel") + pkt("symrefs") + b"".join(pkt(f"ref-prefix {p}") for p in prefixes)
        + b"0000"
    )
