"""Ask the upstream ourselves, so an outage can be answered from the cache.

mitmproxy answers a failed upstream connection with its own 502 page before
any addon hook can step in. In offline mode the ref requests (info/refs and
ls-refs, small answers) are therefore forwarded by goblet itself with
tornado's HTTP client, verifying TLS like mitmproxy does; pack downloads
still go through mitmproxy or the cache.

The client's request is replayed as it came: same method, path, headers
(hop-by-hop ones excepted) and raw, possibly gzip-encoded, body. Redirects
are not followed: they are answers, and reach the client as they are.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass

import certifi
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "proxy-connection",
})
MAX_ANSWER = 256 * 1024 * 1024


class UpstreamUnreachable(Exception):
    """No HTTP answer came: connection failure, TLS failure or timeout."""


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """The upstream's answer: status, headers (hop-by-hop removed) and raw body."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


def tls_context(ca_file: str | None, insecure: bool) -> ssl.SSLContext:
    """A client context trusting ``ca_file`` (else certifi's bundle, like mitmproxy)."""
    ctx = ssl.create_default_context(cafile=ca_file or certifi.where())
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Forwarder:
    """Replays requests to the upstream with a deadline."""

    def __init__(self, context: ssl.SSLContext, timeout: float) -> None:
        self.context = context
        self.timeout = timeout
        self.client = AsyncHTTPClient(force_instance=True, max_body_size=MAX_ANSWER,
                                      max_buffer_size=MAX_ANSWER)

    async def send(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes | None
    ) -> UpstreamAnswer:
        """Send the request; raise UpstreamUnreachable when no answer comes in time.

        Raises ValueError (whose message never holds a header value) for a
        header that cannot be sent as it is (CR, LF or NUL in it).
        """
        fields = HTTPHeaders()
        for k, v in headers:
            if any(c in v for c in "\r\n\0") or any(c in k for c in "\r\n\0: "):
                raise ValueError("a request header cannot be forwarded as it is")
            if k.lower() not in HOP_BY_HOP:
                fields.add(k, v)
        request = HTTPRequest(
            url, method=method, headers=fields,
            body=body if method == "POST" else None,
            follow_redirects=False, decompress_response=False, ssl_options=self.context,
            connect_timeout=min(10.0, self.timeout), request_timeout=self.timeout,
            allow_nonstandard_methods=True,
        )
        try:
            resp = await self.client.fetch(request, raise_error=False)
        except HTTPClientError as e:
            raise UpstreamUnreachable(str(e)) from None
        except (OSError, StreamClosedError) as e:
            raise UpstreamUnreachable(f"{e.__class__.__name__}: {e}") from None
        if resp.code == 599:
            raise UpstreamUnreachable(str(resp.error) if resp.error else "no answer")
        answer = [(k, v) for k, v in resp.headers.get_all() if k.lower() not in HOP_BY_HOP]
        return UpstreamAnswer(resp.code, resp.reason or "", answer, resp.body or b"")

    def close(self) -> None:
        """Release the client's connections."""
        self.client.close()
