"""The LFS policy: which downloads get goblet links, and how a link is answered.

- A batch answer (``lfs/batch.py``) is read only when the upstream answered
  200 with the LFS media type; each download it grants gets a link bound to
  the asking tenant, the repo URL and the oid (``lfs/links.py``), valid for
  ``goblet_lfs_link_ttl``. The batch request itself went upstream with the
  client's own credential: the upstream decides, object by object. A refusal
  (401, 403, 404) revokes the tenant's links into that repo at once, as does
  a refusal of a git ref request for the same repo URL (the verdict cache). In
  ``public`` isolation only anonymous batch answers are linked, so only
  objects anyone may read are stored. Stored objects are kept per LFS API
  (the goblet host the batch request went to) and per partition
  (``lfs/store.py``): in ``shared`` isolation one copy serves every tenant
  that API grants the object to; in ``tenant`` and ``user`` isolation each
  partition has its own copies (at most ``goblet_max_partitions`` of one
  object).
- The href is fetched with upstream's headers for it, and with the client's
  own credential only on the batch request's very origin when upstream gave no
  ``Authorization`` (``same_origin_credential``).
- A link is honoured only for the same tenant, repo and oid before it
  expires: from the store when the object is there, else from the upstream's
  href (with the headers upstream gave, never the client's), stored on the way
  if it verifies. Anything else gets a one-line refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from goblet.auth.credentials import ANONYMOUS
from goblet.lfs import batch
from goblet.lfs.links import UNKNOWN, Grant, LinkTable, Refusal
from goblet.lfs.store import LfsScope, LfsStore, ObjectWriter
from goblet.observe.metrics import Metrics
from goblet.options import Settings
from goblet.policy.flows import FlowState
from goblet.policy.offload import INLINE_ANSWER_BYTES, run_sized
from goblet.protocol.errors import ProtocolError
from goblet.serve.files import FilePlan

MEDIA_TYPE = "application/vnd.git-lfs+json"
OBJECT_TYPE = "application/octet-stream"
# A batch answer without Content-Length is held and rewritten inline (a response stream
# callback cannot wait for a thread): at most this big, about 13 ms of JSON work. git-lfs
# asks for 100 objects at a time, a few dozen KiB; a bigger one passes on as it is.
HELD_ANSWER_CAP = 256 << 10
LINK_SLICE = 256  # links issued per turn of the event loop (about 5 µs each)


@dataclass(frozen=True, slots=True)
class FromStore:
    """Answer the link from the store."""

    plan: FilePlan


@dataclass(frozen=True, slots=True)
class FromUpstream:
    """Fetch the object from the upstream's href (and store it if it verifies)."""

    grant: Grant


LinkAction = FromStore | FromUpstream | Refusal


class LfsPolicy:
    """Rewrites batch answers and answers links, from the running parts."""

    def __init__(self, settings: Callable[[], Settings], store: LfsStore, metrics: Metrics, *,
                 links: LinkTable | None = None,
                 denied_at: Callable[[str, str], float | None] = lambda tenant, url: None,
                 inspector: Executor | None = None) -> None:
        """``denied_at(tenant, repo_url)``: when the upstream last refused that tenant the
        repo (a git ref request's 401/403/404, on the links' clock), if it did;
        ``inspector``: the threads large batch answers are parsed in."""
        self.settings = settings
        self.inspector = inspector or ThreadPoolExecutor(max_workers=1)
        self.store = store
        self.metrics = metrics
        self.links = links or LinkTable(settings().lfs_link_ttl)
        self.denied_at = denied_at

    @property
    def enabled(self) -> bool:
        """Whether goblet rewrites batch answers (``goblet_lfs``)."""
        return self.settings().lfs

    def batch_answer(self, state: FlowState, status: int, content_type: str, body: bytes, *,
                     base: str, repo_path: str) -> bytes | None:
        """The replacement of a batch answer, or None to pass it on as it is. ``base`` is
        the client's URL up to the repo path (its scheme and host, or path prefix). All
        inline: for answers of at most ``HELD_ANSWER_CAP`` bytes (``answer_off_loop``
        for bigger ones)."""
        link = self._linker(state, status, content_type, base=base, repo_path=repo_path)
        try:
            return batch.rewrite_answer(body, link) if link is not None else None
        except ProtocolError as e:
            state.reason = f"LFS batch answer passed on as it is: {e.reason}"
            return None

    async def answer_off_loop(self, state: FlowState, status: int, content_type: str,
                              body: bytes, *, base: str, repo_path: str) -> bytes | None:
        """``batch_answer``, with the JSON work on a body over ``INLINE_ANSWER_BYTES``
        (parsing and writing it: about 50 ms per MiB) in the inspector threads. The links
        are issued on the event loop, ``LINK_SLICE`` at a time with a turn of the loop in
        between; an answer whose tenant was refused the repo meanwhile, or whose links
        settings changed, passes on unlinked."""
        if self._linker(state, status, content_type, base=base, repo_path=repo_path) is None:
            return None
        arrived, size = self.links.now(), len(body)
        try:
            answer = await run_sized(self.inspector, size, INLINE_ANSWER_BYTES,
                                     batch.read_answer, body)
        except ProtocolError as e:
            state.reason = f"LFS batch answer passed on as it is: {e.reason}"
            return None
        hrefs: list[str | None] = []
        for i, (_, download) in enumerate(answer.granted if answer is not None else ()):
            if i % LINK_SLICE == 0:
                if i:
                    await asyncio.sleep(0)
                got = self._linker(state, status, content_type, base=base, repo_path=repo_path)
                if got is None or self._refused_since(state, arrived):
                    return None  # (links issued so far are revoked, or expire unused)
                link = got
            hrefs.append(link(download))
        if answer is None or not hrefs:
            return None
        return await run_sized(self.inspector, size, INLINE_ANSWER_BYTES, batch.linked_answer,
                               answer, hrefs)

    def _refused_since(self, state: FlowState, since: float) -> bool:
        """Whether the upstream refused ``state``'s tenant the repo at or after ``since``
        (a batch answer's refusal, or a git request's)."""
        assert state.repo is not None
        denied = self.denied_at(state.tenant, state.repo.url)
        return self.links.revoked_since(state.tenant, state.repo.url, since) or (
            denied is not None and denied >= since)

    def _linker(self, state: FlowState, status: int, content_type: str, *, base: str,
                repo_path: str) -> Callable[[batch.Download], str] | None:
        """How a download of this batch answer gets its goblet link; None if the answer is
        passed on as it is (a refusal revokes the tenant's links into the repo first)."""
        if state.repo is None:
            return None
        if status in (401, 403, 404):
            self.links.revoke(state.tenant, state.repo.url)  # refused now: no older link works
            return None
        s = self.settings()
        if not s.lfs or status != 200 or (s.isolation == "public" and state.tenant != ANONYMOUS):
            return None  # public isolation: only what anyone may read reaches the disk
        if content_type.split(";", 1)[0].strip().lower() not in (MEDIA_TYPE, "application/json"):
            return None
        self.links.ttl = s.lfs_link_ttl
        url, tenant = state.repo.url, state.tenant

        def link(download: batch.Download) -> str:
            token = self.links.issue(tenant, url, download)
            self.metrics.lfs_links.inc()
            return base + batch.link_path(repo_path, token, download.oid)
        return link

    def link(self, state: FlowState, token: str, oid: str, scope: LfsScope) -> LinkAction:
        """What answers a link request of ``state``'s tenant (``scope``: where the store
        keeps what that LFS API grants within the tenant's partition)."""
        assert state.repo is not None
        got = self.links.check(token, tenant=state.tenant, repo_url=state.repo.url, oid=oid)
        denied = self.denied_at(state.tenant, state.repo.url)
        if isinstance(got, Grant) and denied is not None and denied >= got.issued:
            got = UNKNOWN  # the upstream refused this tenant the repo since: revoked
        if isinstance(got, Refusal):
            self.metrics.lfs_downloads.labels("refused").inc()
            return got
        size = got.download.size
        if self.store.has(scope, oid, size):
            self.store.touch(scope, oid)
            return FromStore(FilePlan(self.store.path_for(scope, oid), size, OBJECT_TYPE,
                                      label=f"lfs {oid[:12]}"))
        return FromUpstream(got)

    def writer(self, scope: LfsScope, oid: str, size: int) -> ObjectWriter | None:
        """Where a download of ``oid`` (``size`` bytes, as the grant says) is written to
        ``scope``, or None when it is streamed and not kept: another download of it is
        being written already; it is bigger than ``goblet_cache_max_bytes``; keeping it
        would leave less than ``goblet_min_free_bytes`` free; or, in ``tenant`` and
        ``user`` isolation, ``goblet_max_partitions`` partitions keep it already."""
        s = self.settings()
        bound = s.max_partitions
        if scope.partition and bound and self.store.copies(scope, oid) >= bound:
            return None
        return self.store.open_writer(scope, oid, size, max_bytes=s.cache_max_bytes,
                                      min_free=s.min_free_bytes)


@dataclass(frozen=True, slots=True)
class HrefRequest:
    """The whole request goblet sends to an upstream's href (built before the flow is
    touched, so a failure leaves the flow as it was)."""

    scheme: str
    host: str
    port: int
    path: str
    headers: tuple[tuple[bytes, bytes], ...]


def href_request(download: batch.Download, credential: tuple[tuple[str, str], ...],
                 user_agent: bytes, batch_origin: tuple[str, str, int]) -> HrefRequest:
    """The request for ``download``'s href: upstream's headers for it, the client's
    ``user_agent`` (bytes as received), and the client's ``credential`` headers only as
    ``same_origin_credential`` allows. Raises ValueError for an href goblet does not send
    requests to."""
    target = batch.parse_href(download.href)
    if target is None:
        raise ValueError("the upstream's download href is not a well-formed URL")
    own = same_origin_credential(download.headers, credential, target.origin, batch_origin)
    headers = [(b"Host", target.host_header.encode("ascii")), (b"User-Agent", user_agent),
               (b"Accept-Encoding", b"identity")]
    headers += [(name.encode("ascii"), value.encode("utf-8", "surrogateescape"))
                for name, value in (*download.headers, *own)]
    return HrefRequest(target.scheme, target.host, target.port, target.path, tuple(headers))


def same_origin_credential(action_headers: tuple[tuple[str, str], ...],
                           credential: tuple[tuple[str, str], ...],
                           href: tuple[str, str, int], batch: tuple[str, str, int]
                           ) -> tuple[tuple[str, str], ...]:
    """The client's own credential headers for an href, as git-lfs would send them: only
    when the href is on the very origin (scheme, host, port) the batch request went to
    and upstream's action names no ``Authorization`` of its own; else none."""
    if href != batch or any(name.lower() == "authorization" for name, _ in action_headers):
        return ()
    return credential
