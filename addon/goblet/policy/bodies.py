"""Whether goblet reads an upload-pack request body, and the body it reads.

goblet reads a body only to decide where the request goes, and holds at most
``cap`` bytes of it after decoding. mitmproxy streams (passes on unread) any
body whose raw size passes the cap; identity bodies are taken as they are;
gzip and deflate are decoded in ``executor`` (CPU work, never on the event
loop) and abandoned once they pass the cap. Outcomes, also the ``result``
label of ``goblet_request_bodies_total``:

- ``inspected``: here is the body;
- ``too_large``, ``not_decoded`` (``br``, ``zstd``…, which git never sends):
  the request passes through to the upstream uninspected, as it would
  without goblet;
- ``invalid``: a corrupt or truncated compressed body — refuse it with 400;
- ``busy`` (decided by the caller): the bodies held at once reached their
  budget; this one passes through uninspected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

from goblet.policy.flows import Kind
from goblet.protocol import encoding
from goblet.protocol.errors import ProtocolError

PASSED_ON = "request body over the inspection limit: passed through"
BUSY = "decoded request bodies held at their budget: passed through"
BUSY_RAW = "request bodies held at their budget: passed through"


@dataclass(frozen=True, slots=True)
class BodyVerdict:
    """What became of a body: ``result``, the ``body`` if read, a one-line ``reason``."""

    result: str
    body: bytes | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Intake:
    """How a classified request's body is received: ``stream`` passes it on unread,
    ``timed`` holds it under ``goblet_request_body_timeout``."""

    stream: bool
    timed: bool


def intake(kind: Kind, content_length: str, cap: int, streamed: bool, *,
           body: bool = False) -> Intake:
    """A body announced larger than ``cap`` is streamed (passed on uninspected); every
    other one mitmproxy holds for goblet (an upload-pack request's, or any other request
    that ``body`` says may carry one) must arrive within the body timeout.
    ``streamed``: mitmproxy already streams it (its own size rule)."""
    stream = streamed or (content_length.isdigit() and int(content_length) > cap)
    return Intake(stream, not stream and (kind is Kind.UPLOAD_PACK or body))


def may_have_body(http_version: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request may carry a body: it has a ``Transfer-Encoding``, or a
    ``Content-Length`` other than 0; an HTTP/2 or HTTP/3 request without
    ``Content-Length`` may have one too (it frames its body itself)."""
    length = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            return True
        if lowered == b"content-length":
            length = value.strip()
    if length is not None:
        return length != b"0"
    return not http_version.upper().startswith("HTTP/1")


class Discard:
    """A request ``stream`` callable for a body goblet never reads: it is dropped as it
    arrives, and ``over`` is called once when more than ``cap`` bytes came."""

    def __init__(self, cap: int, over: Callable[[], None]) -> None:
        self.cap = cap
        self.over = over
        self.bytes = 0

    def __call__(self, data: bytes) -> list[bytes]:
        """Nothing to send on."""
        before, self.bytes = self.bytes, self.bytes + len(data)
        if before <= self.cap < self.bytes:
            self.over()
        return []


def is_identity(enc: str | None) -> bool:
    """Whether a ``Content-Encoding`` value means no encoding at all."""
    return (enc or "").strip().lower() in ("", "identity")


async def read_body(raw: bytes | None, enc: str | None, cap: int,
                    executor: Executor) -> BodyVerdict:
    """The verdict on a request body (``raw`` is None when mitmproxy streamed it)."""
    if raw is None:
        return BodyVerdict("too_large", reason=PASSED_ON)
    if not encoding.inspectable(enc):
        return BodyVerdict("not_decoded",
                           reason="request body encoding not inspected: passed through")
    try:
        if is_identity(enc):
            body = encoding.decode_capped(raw, enc, cap)
        else:
            body = await asyncio.get_running_loop().run_in_executor(
                executor, encoding.decode_capped, raw, enc, cap)
    except encoding.BodyTooLarge:
        return BodyVerdict("too_large", reason=PASSED_ON)
    except ProtocolError as e:
        return BodyVerdict("invalid", reason=f"goblet: undecodable request body: {e.reason}")
    return BodyVerdict("inspected", body)


async def read_answer(raw: bytes | None, enc: str | None, cap: int,
                      executor: Executor) -> bytes | None:
    """The decoded body of a buffered upstream answer, or None (streamed, too large, bad)."""
    verdict = await read_body(raw, enc, cap, executor)
    return verdict.body
