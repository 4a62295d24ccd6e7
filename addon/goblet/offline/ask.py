"""goblet's own requests to the upstream, and what they prove.

Three kinds, all sent by goblet's forwarder with the asking client's identity
headers (never anything else of the client's), all recorded in
``UpstreamState`` — the only source of "the upstream is unreachable":

- ``forward``: replay a client's ref request (offline mode), so an outage can
  be answered from the cache instead of by mitmproxy's 502 page;
- ``refs``: ``GET <repo>/info/refs?service=git-upload-pack`` (protocol v0, so
  the answer lists every ref the upstream shows this credential): a fresh
  grant and ref view, a denial, or an outage observed for this request;
- ``serves``: a ``fetch`` of ``want X`` / ``have X`` / ``done`` for each
  object X, in the client's protocol version: upstream answers ``packfile``
  (v2) or ``ACK``/``NAK`` (v0) with an empty pack if it would serve X to this
  credential now, and ``ERR … not our ref`` if not;
- ``confirm_outage``: the same ``info/refs`` with no credential at all.

An outage is what goblet's own bytes met: no answer at all, or a 5xx, to a
request of goblet's own choosing. The failure of a request carrying the
client's headers or body (which the client chose, and could choose to make
the upstream fail or stall) counts only once ``confirm_outage`` sees the
upstream fail without them, twice.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from goblet.auth.credentials import Credential
from goblet.offline.forward import Forwarder, UpstreamAnswer, UpstreamUnreachable
from goblet.offline.state import UpstreamState
from goblet.protocol import pktline, refs
from goblet.protocol.errors import ProtocolError
from goblet.protocol.routes import RESULT_TYPE

USER_AGENT = "git/goblet"
INFO_REFS = "/info/refs?service=git-upload-pack"
DENIALS = (401, 403, 404)


class Finding(enum.Enum):
    """What one of goblet's own ref requests found out."""

    GRANTED = "granted"
    DENIED = "denied"
    OUTAGE = "outage"  # no answer, or a 5xx, and goblet's own request fails too
    UNKNOWN = "unknown"  # this request failed, but goblet's own request works


@dataclass(frozen=True, slots=True)
class RefsProbe:
    """The outcome of ``UpstreamAsker.refs``: a finding, and with a grant the refs."""

    finding: Finding
    advertisement: refs.RefAdvertisement | None = None
    status: int | None = None
    challenge: str | None = None


def answer_is_grant(status: int, content_type: str, body: bytes, *, ls_refs: bool) -> bool:
    """Whether a ref answer proves access: 200, git's content type, a body that parses.

    A 200 whose body is an ``ERR`` packet (or anything else that is not a ref
    answer) proves nothing.
    """
    return status == 200 and refs.parse_ref_answer(content_type, body, ls_refs=ls_refs) is not None


def identity_headers(credential: Credential) -> list[tuple[str, str]]:
    """The headers of goblet's own request on behalf of ``credential``."""
    return [("User-Agent", USER_AGENT), *credential.headers]


def serves_body(oids: Sequence[str], version: int = 2) -> bytes:
    """The fetch asking whether the upstream would serve ``oids``, in protocol ``version``.

    v2: ``command=fetch`` with ``want``/``have`` per object and ``done``.
    v0/v1: the stateless request ``want``… flush ``have``… ``done``, so the
    upstream applies its v0 rules (advertised tips, ``allow*SHA1InWant``).
    """
    wants = [pktline.encode_line(f"want {oid}") for oid in oids]
    haves = [pktline.encode_line(f"have {oid}") for oid in oids]
    if version != 2:
        return b"".join([*wants, pktline.FLUSH, *haves, pktline.encode_line("done")])
    lines = [pktline.encode_line("command=fetch"), pktline.encode_line("object-format=sha1"),
             pktline.DELIM, *wants, *haves, pktline.encode_line("done"), pktline.FLUSH]
    return b"".join(lines)


def served(status: int, body: bytes, version: int = 2) -> bool:
    """Whether an answer to ``serves_body`` says yes: 200 and, first, a ``packfile``
    section (v2) or an ``ACK``/``NAK`` line (v0/v1) — never an ``ERR`` packet."""
    if status != 200:
        return False
    try:  # only the first packet: in v0 a raw pack (not pkt-lines) may follow it
        size = int(body[:4], 16) if len(body) >= 4 else 0
        pkts = pktline.PktDecoder("upstream").feed(body[: max(size, 4)])
    except (ValueError, ProtocolError):
        return False
    if not pkts:
        return False
    first = pkts[0].line
    return first == b"packfile" if version == 2 else first.startswith((b"ACK ", b"NAK"))


class UpstreamAsker:
    """Sends goblet's own requests and keeps ``UpstreamState`` in step with them."""

    def __init__(self, forwarder: Forwarder, state: UpstreamState) -> None:
        self.forwarder = forwarder
        self.state = state

    async def forward(self, host: str, method: str, url: str,
                      headers: Iterable[tuple[str, str]], body: bytes | None) -> UpstreamAnswer:
        """Send a request shaped (headers, body) by a client; raises UpstreamUnreachable.

        Its failure is *not* recorded as an outage (the client chose its bytes and
        could make it fail or time out); callers confirm with ``confirm_outage``.
        Any answer shows the host reachable.
        """
        answer = await self.forwarder.send(method, url, headers, body)
        self.state.reachable(host)
        return answer

    async def confirm_outage(self, host: str, repo_url: str, attempts: int = 2) -> bool:
        """Whether the upstream fails requests of goblet's own choosing: ``info/refs`` of
        the repo with no credential at all, ``attempts`` times (a stalled event loop can
        make one time out). A failure of a client-shaped request counts as an outage
        only if this confirms it; then the host is recorded unreachable."""
        for _ in range(attempts):
            try:
                answer = await self.forwarder.send(
                    "GET", repo_url + INFO_REFS, [("User-Agent", USER_AGENT)], None)
            except UpstreamUnreachable:
                continue
            if answer.status < 500:
                self.state.reachable(host)
                return False
        self.state.unreachable(host)
        return True

    async def refs(self, host: str, repo_url: str, credential: Credential) -> RefsProbe:
        """Ask for the repo's refs with ``credential`` (see the module docstring)."""
        try:
            answer = await self.forward(
                host, "GET", repo_url + INFO_REFS,
                identity_headers(credential), None)
        except UpstreamUnreachable:
            answer = None
        if answer is None or answer.status >= 500:
            status = answer.status if answer is not None else None
            if await self.confirm_outage(host, repo_url):
                return RefsProbe(Finding.OUTAGE, status=status)
            return RefsProbe(Finding.UNKNOWN, status=status)
        if answer.status in DENIALS:
            return RefsProbe(Finding.DENIED, status=answer.status,
                             challenge=_header(answer, "www-authenticate"))
        if not answer_is_grant(answer.status, _header(answer, "content-type") or "",
                               answer.body, ls_refs=False):
            return RefsProbe(Finding.DENIED, status=answer.status)
        return RefsProbe(Finding.GRANTED, refs.parse_info_refs(answer.body), answer.status)

    async def serves(self, host: str, repo_url: str, credential: Credential,
                     oids: Sequence[str], version: int = 2) -> bool | None:
        """True if the upstream would serve every one of ``oids`` to ``credential`` now
        (asked in protocol ``version``, the client's), False if it refuses, None if it
        could not be asked (an outage goblet confirmed)."""
        headers = [*identity_headers(credential),
                   ("Content-Type", "application/x-git-upload-pack-request"),
                   ("Accept", RESULT_TYPE)]
        if version == 2:
            headers.append(("Git-Protocol", "version=2"))
        try:
            answer = await self.forward(host, "POST", f"{repo_url}/git-upload-pack", headers,
                                        serves_body(oids, version))
        except UpstreamUnreachable:
            answer = None
        if answer is None or answer.status >= 500:
            return None if await self.confirm_outage(host, repo_url) else False
        return served(answer.status, answer.body, version)


def _header(answer: UpstreamAnswer, name: str) -> str | None:
    for key, value in answer.headers:
        if key.lower() == name:
            return value
    return None
