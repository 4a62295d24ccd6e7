"""Serve plans: what the backend should run for one flow, found by an opaque token.

The addon decides *what* to serve while it still holds the flow (repo,
request body, protocol); it registers that as a ServePlan and rewrites the
flow to the backend with the token. The token is 256 random bits, single use
and short-lived, so nothing in the backend's request (no path, no header but
the token) can choose a repo.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from goblet.protocol.request import UNREADABLE_VERSION, protocol_version
from goblet.protocol.routes import ADVERTISEMENT_TYPE, RESULT_TYPE

if TYPE_CHECKING:
    from goblet.serve.files import FilePlan

TOKEN_HEADER = "X-Goblet-Serve-Token"  # noqa: S105 (a header name)
_GIT_PROTOCOL = re.compile(r"[A-Za-z0-9._=:-]{1,256}")


@dataclass(slots=True)
class ServeStats:
    """Filled in by the backend while it serves; read by the addon afterwards."""

    bytes_sent: int = 0
    returncode: int | None = None
    complete: bool = False
    error: str | None = None
    cache_role: str = "bypass"  # pack cache: bypass, produce, follow or hit


@dataclass(frozen=True, slots=True)
class ServePlan:
    """One ``upload-pack --stateless-rpc`` run: repo, stdin and GIT_PROTOCOL.

    ``advertise`` runs ``--advertise-refs`` (an info/refs answer, offline)
    and sends ``prefix`` first; ``notice``, if set, is shown to the user as a
    ``remote:`` line inside a side-band answer; ``hidden_refs`` are left out
    of ref answers (``uploadpack.hideRefs``); with ``tags`` set, upload-pack runs in a
    throwaway view of the repo whose only refs are those tags (``serve/tagview.py``),
    so ``include-tag`` follows no other (when no view can be made: ``untagged``, the
    body without ``include-tag`` of a request whose client backfills tags, if set).
    """

    repo_dir: Path
    body: bytes
    git_protocol: str | None
    label: str
    advertise: bool = False
    prefix: bytes = b""
    notice: str | None = None
    hidden_refs: tuple[str, ...] = ()  # refs upload-pack must not advertise (offline answers)
    drop_head_symref: bool = False  # and HEAD's target must not be named in the capabilities
    tags: frozenset[tuple[str, str]] | None = None  # (refname, oid): the only refs it runs with
    untagged: bytes | None = None  # with tags: the body to run in the repo if no view can be made
    cache_key: str | None = None  # pack-cache key, for final fetch requests only
    repo_key: str = ""  # the cache repo's key, for "is anyone reading it" questions
    stats: ServeStats = field(default_factory=ServeStats)

    @property
    def content_type(self) -> str:
        """The Content-Type git expects for this answer."""
        return ADVERTISEMENT_TYPE if self.advertise else RESULT_TYPE


@dataclass(frozen=True, slots=True)
class ReplyPlan:
    """A short answer of goblet's own (a refusal) for a request whose body goblet will
    not read: the flow goes to the backend while mitmproxy discards the body, so the
    answer needs no buffered body first."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    stats: ServeStats = field(default_factory=ServeStats)


def clean_git_protocol(value: str | None) -> str | None:
    """The Git-Protocol header value if it is well-formed (``key[=value]`` list), else None."""
    if value is None or not _GIT_PROTOCOL.fullmatch(value):
        return None
    return value


def served_version(value: str | None) -> int:
    """The protocol version an upload-pack goblet runs for a client's Git-Protocol header
    ``value`` answers in (it is given ``clean_git_protocol(value)``): what goblet must read
    the request as, and answer for. ``UNREADABLE_VERSION`` for a header it would not pass
    on (the client asked for something goblet's upload-pack would not know of): such a
    request is the upstream's to answer."""
    clean = clean_git_protocol(value)
    if clean is None and value:
        return UNREADABLE_VERSION
    return protocol_version(clean)


class PlanRegistry:
    """Token → ServePlan, each usable once, forgotten after ``ttl`` seconds.

    A registered ServePlan counts as reading its repo (``pending``) until it is taken or
    expires, so that nothing removes the repo between the decision to serve from it and
    the backend's start."""

    def __init__(self, ttl: float = 120.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._plans: dict[str, tuple[float, ServePlan | FilePlan | ReplyPlan]] = {}

    def __len__(self) -> int:
        return len(self._plans)

    def register(self, plan: ServePlan | FilePlan | ReplyPlan) -> str:
        """Store ``plan`` and return its fresh token."""
        self._expire()
        token = secrets.token_urlsafe(32)
        self._plans[token] = (self._clock() + self._ttl, plan)
        return token

    def take(self, token: str | None) -> ServePlan | FilePlan | ReplyPlan | None:
        """Remove and return the plan of ``token``, or None if unknown or expired."""
        if not token:
            return None
        entry = self._plans.pop(token, None)
        if entry is None or entry[0] < self._clock():
            return None
        return entry[1]

    def pending(self, repo_key: str) -> bool:
        """Whether a ServePlan of the repo ``repo_key`` waits for the backend (a look at
        every plan in flight: asked by eviction, not per request)."""
        now = self._clock()
        return any(exp >= now and isinstance(plan, ServePlan) and plan.repo_key == repo_key
                   for exp, plan in self._plans.values())

    def _expire(self) -> None:
        now = self._clock()
        for token in [t for t, (exp, _) in self._plans.items() if exp < now]:
            del self._plans[token]
