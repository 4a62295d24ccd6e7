"""goblet's own requests to the upstream, and what they prove.

Three kinds, all sent by goblet's forwarder with the asking client's identity
headers (never anything else of the client's), all recorded in
``UpstreamState`` — the only source of "the upstream is unreachable":

- ``forward``: replay a client's ref request (offline mode), so an outage can
  be answered from the cache instead of by mitmproxy's 502 page;
- ``refs``: ``GET <repo>/info/refs?service=git-upload-pack`` (protocol v0, so
  the answer lists every ref the upstream shows this credential): a fresh
  grant and ref view, a denial, or an outage observed for this request;
- ``serves``: a protocol v2 ``fetch`` of ``want X`` / ``have X`` / ``done``
  for each object X: upstream answers ``packfile`` (with an empty pack) if it
  would serve X to this credential now, and ``ERR … not our ref`` if not.
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

ADVERTISEMENT_TYPE = "application/x-git-upload-pack-advertisement"
RESULT_TYPE = "application/x-git-upload-pack-result"
USER_AGENT = "git/goblet"
DENIALS = (401, 403, 404)


class Finding(enum.Enum):
    """What one of goblet's own ref requests found out."""

    GRANTED = "granted"
    DENIED = "denied"
    OUTAGE = "outage"  # no answer, or a 5xx answer to this very request


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
    wanted = RESULT_TYPE if ls_refs else ADVERTISEMENT_TYPE
    if status != 200 or content_type.split(";", maxsplit=1)[0].strip().lower() != wanted:
        return False
    try:
        if ls_refs:
            refs.parse_ls_refs(body)
        else:
            refs.parse_info_refs(body)
    except ProtocolError:
        return False
    return True


def identity_headers(credential: Credential) -> list[tuple[str, str]]:
    """The headers of goblet's own request on behalf of ``credential``."""
    return [("User-Agent", USER_AGENT), *credential.headers]


def serves_body(oids: Sequence[str]) -> bytes:
    """The v2 fetch asking whether the upstream would serve ``oids``."""
    lines = [pktline.encode_line("command=fetch"), pktline.encode_line("object-format=sha1"),
             pktline.DELIM]
    lines += [pktline.encode_line(f"want {oid}") for oid in oids]
    lines += [pktline.encode_line(f"have {oid}") for oid in oids]
    lines += [pktline.encode_line("done"), pktline.FLUSH]
    return b"".join(lines)


def served(status: int, body: bytes) -> bool:
    """Whether an answer to ``serves_body`` says yes: 200 and a ``packfile`` section first."""
    if status != 200:
        return False
    try:
        pkts = pktline.PktDecoder("upstream").feed(body[:65536])
    except ProtocolError:
        return False
    return bool(pkts) and pkts[0].line == b"packfile"


class UpstreamAsker:
    """Sends goblet's own requests and keeps ``UpstreamState`` in step with them."""

    def __init__(self, forwarder: Forwarder, state: UpstreamState) -> None:
        self.forwarder = forwarder
        self.state = state

    async def forward(self, host: str, method: str, url: str,
                      headers: Iterable[tuple[str, str]], body: bytes | None) -> UpstreamAnswer:
        """Replay a client's request; raises UpstreamUnreachable (and records it)."""
        try:
            answer = await self.forwarder.send(method, url, headers, body)
        except UpstreamUnreachable:
            self.state.unreachable(host)
            raise
        self.state.reachable(host)
        return answer

    async def refs(self, host: str, repo_url: str, credential: Credential) -> RefsProbe:
        """Ask for the repo's refs with ``credential`` (see the module docstring)."""
        try:
            answer = await self.forward(
                host, "GET", f"{repo_url}/info/refs?service=git-upload-pack",
                identity_headers(credential), None)
        except UpstreamUnreachable:
            return RefsProbe(Finding.OUTAGE)
        if answer.status >= 500:
            return RefsProbe(Finding.OUTAGE, status=answer.status)
        if answer.status in DENIALS:
            return RefsProbe(Finding.DENIED, status=answer.status,
                             challenge=_header(answer, "www-authenticate"))
        if not answer_is_grant(answer.status, _header(answer, "content-type") or "",
                               answer.body, ls_refs=False):
            return RefsProbe(Finding.DENIED, status=answer.status)
        return RefsProbe(Finding.GRANTED, refs.parse_info_refs(answer.body), answer.status)

    async def serves(self, host: str, repo_url: str, credential: Credential,
                     oids: Sequence[str]) -> bool | None:
        """True if the upstream would serve every one of ``oids`` to ``credential`` now,
        False if it refuses, None if it could not be asked (outage)."""
        headers = [*identity_headers(credential), ("Git-Protocol", "version=2"),
                   ("Content-Type", "application/x-git-upload-pack-request"),
                   ("Accept", RESULT_TYPE)]
        try:
            answer = await self.forward(host, "POST", f"{repo_url}/git-upload-pack", headers,
                                        serves_body(oids))
        except UpstreamUnreachable:
            return None
        if answer.status >= 500:
            return None
        return served(answer.status, answer.body)


def _header(answer: UpstreamAnswer, name: str) -> str | None:
    for key, value in answer.headers:
        if key.lower() == name:
            return value
    return None
