"""What goblet remembers about one flow, and the names it gives kinds and outcomes.

``Kind`` is what the client asked for; ``Outcome`` who answered and how it
ended. The metric label sets (``observe/metrics``) are derived from them, so a
new kind or outcome cannot be logged without being countable.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Protocol

from goblet.auth.credentials import Credential
from goblet.cache.store import CacheRepo
from goblet.cache.teefill import TeeFill
from goblet.protocol.request import LsRefsRequest
from goblet.serve.files import FilePlan
from goblet.serve.plans import ServePlan


class Cancellable(Protocol):
    """A pending deadline."""

    def cancel(self) -> None: ...


class Kind(enum.Enum):
    """What a flow is, as goblet sees it."""

    INFO_REFS = "info_refs"
    LS_REFS = "ls_refs"
    FETCH = "fetch"
    UPLOAD_PACK = "upload_pack"  # an upload-pack POST not (yet) read
    PUSH = "push"
    OTHER = "other"
    INVALID = "invalid"  # refused with 400
    ENDPOINT = "endpoint"  # /metrics, /healthz, /readyz
    LFS_BATCH = "lfs_batch"  # POST …/info/lfs/objects/batch
    LFS_OBJECT = "lfs_object"  # GET of a goblet LFS link

    @property
    def metric(self) -> str:
        """The ``kind`` label of this flow's metrics."""
        return self.value if self in METRIC_KINDS else Kind.OTHER.value


METRIC_KINDS = (Kind.INFO_REFS, Kind.LS_REFS, Kind.FETCH, Kind.PUSH, Kind.LFS_BATCH,
                Kind.LFS_OBJECT, Kind.OTHER)


class Outcome(enum.Enum):
    """Who answered a git request, and how it ended."""

    CACHE = "cache"
    UPSTREAM = "upstream"
    DENIED = "denied"  # the upstream answered 401, 403 or 404
    OFFLINE = "offline"
    ERROR = "error"
    ABANDONED = "abandoned"  # the client went away before its whole answer was sent


@dataclass(slots=True)
class FlowState:
    """What goblet knows about one git flow; lives only in memory."""

    kind: Kind
    repo: CacheRepo | None = None
    tenant: str = ""
    credential: Credential = field(default_factory=Credential)
    version: int = 0
    ls_refs: LsRefsRequest | None = None
    body: bytes = b""  # the decoded upload-pack request body, once read
    held: int = 0  # bytes of it counted against the budget of held bodies
    raw_held: int = 0  # bytes of the body as received counted against theirs
    outcome: Outcome = Outcome.UPSTREAM
    reason: str = ""
    plan: ServePlan | FilePlan | None = None
    host: str = ""  # upstream host[:port] as in goblet_hosts
    upstream_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    tee: TeeFill | None = None  # a cold clone whose upstream answer fills the cache
    body_timer: Cancellable | None = None  # the deadline of a body goblet holds
    timed_out: bool = False
    last_byte: float = 0.0  # monotonic time the last byte of an upstream answer passed

    def count_bytes(self, data: bytes) -> bytes:
        """A response ``stream`` callable that counts what passes through."""
        self.upstream_bytes += len(data)
        self.last_byte = time.monotonic()
        return data

    def body_arrived(self) -> None:
        """The request body is complete: stop its timeout."""
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
