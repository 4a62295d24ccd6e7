"""Push webhooks from GitHub and GitLab: mark a repo's refs stale at once.

Served on ``goblet_metrics_port`` only, at ``POST /webhooks/github`` and
``POST /webhooks/gitlab``, when ``goblet_webhook_secret_file`` names a file
with the shared secret (read at each request, so it can be rotated):

- GitHub: ``X-Hub-Signature-256: sha256=<hex>`` must be the HMAC-SHA256 of
  the raw body with the secret; ``X-GitHub-Event: push`` is acted on, any
  other event (``ping``…) is answered 200 and ignored.
- GitLab: ``X-Gitlab-Token`` must equal the secret; ``X-Gitlab-Event: Push
  Hook`` or ``Tag Push Hook`` is acted on.

Comparisons are constant-time. A missing or wrong signature gets 401, a body
over ``MAX_BODY`` bytes (or of no stated length) 413, unread, a signed body
that is not the JSON of a push 400; none of them changes anything. What the
head alone decides is decided before any of the body is read (``screen``): a
wrong GitLab token, a GitHub request without ``X-GitHub-Event`` or without a
well-formed ``X-Hub-Signature-256`` (``sha256=`` and 64 hex digits) get 401
at once, so a request that cannot be signed never holds a body budget. A push
marks the refs of the repo's https URLs (with and without ``.git``, path as
spelled and in lower case) stale (``policy/refcache.py``) if its host is one of
``goblet_hosts`` (another is answered 200 and ignored): the next ref
request for them goes upstream, whoever sends it. That is all a webhook can
do — make goblet ask the upstream sooner — so a replayed one is harmless,
and no answer says more than accepted or not.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from urllib.parse import urlsplit

from goblet.cache.store import canonical_url
from goblet.observe.endpoints import MAX_POST_BODY, Answer
from goblet.observe.metrics import Metrics

log = logging.getLogger(__name__)

PATHS = frozenset({"/webhooks/github", "/webhooks/gitlab"})
MAX_BODY = MAX_POST_BODY  # GitHub caps payloads at 25 MB, but a push's is far smaller
MAX_URL = 1024
LOG_EVERY = 10.0  # seconds between two "webhook refused" log lines
TEXT = "text/plain; charset=utf-8"
_GITHUB_PUSH = frozenset({"push"})
_GITLAB_PUSH = frozenset({"Push Hook", "Tag Push Hook"})
_SIGNATURE_SHAPE = re.compile(r"sha256=[0-9a-fA-F]{64}")


def github_signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is ``sha256=`` + the hex HMAC-SHA256 of ``body`` with ``secret``."""
    if not secret or header is None or not header.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().lower().encode())


def gitlab_token_ok(secret: bytes, header: str | None) -> bool:
    """Whether ``header`` is the shared token."""
    if not secret or header is None:
        return False
    return hmac.compare_digest(secret, header.encode("utf-8", "replace"))


def push_urls(payload: object, forge: str,
              hosts: AbstractSet[tuple[str, int]] | None = None) -> tuple[str, ...]:
    """The canonical https URLs (``https://host[:port]/path``, with and without ``.git``)
    of the repo a push payload names, on ``hosts`` (lower-case host, port) only if given;
    empty if it names none."""
    if not isinstance(payload, dict):
        return ()
    section = payload.get("repository" if forge == "github" else "project")
    fields = ("clone_url", "html_url") if forge == "github" else ("git_http_url", "web_url")
    found: list[str] = []
    for source in (section, payload.get("repository") if forge == "gitlab" else None):
        if not isinstance(source, dict):
            continue
        for name in fields:
            value = source.get(name)
            if isinstance(value, str):
                found += _variants(value, hosts)
    return tuple(dict.fromkeys(found))


def _variants(url: str, hosts: AbstractSet[tuple[str, int]] | None) -> list[str]:
    """``url`` as cache keys: with and without a trailing ``.git``, as spelled and with
    the path in lower case (forges ignore its case; clients may not); [] if not usable.
    Marking a URL no client uses costs nothing."""
    if len(url) > MAX_URL:
        return []
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        return []
    host, path = parts.hostname, parts.path.rstrip("/")
    if parts.scheme not in ("https", "http") or not host or not path.startswith("/"):
        return []
    if hosts is not None and (host, port) not in hosts:
        return []  # (not a host goblet caches: nothing of it to mark)
    bare = path.removesuffix(".git")
    return [canonical_url(host, port, p + suffix)
            for p in dict.fromkeys((bare, bare.lower())) for suffix in ("", ".git")]


class Webhooks:
    """Answers webhook requests (see the module docstring)."""

    def __init__(self, secret_file: Callable[[], Path | None],
                 mark_stale: Callable[[Iterable[str]], int], metrics: Metrics,
                 hosts: Callable[[], AbstractSet[tuple[str, int]]]) -> None:
        self.secret_file = secret_file
        self.mark_stale = mark_stale
        self.hosts = hosts  # goblet_hosts: only their repos are marked
        self.metrics = metrics
        self._last_log = -LOG_EVERY
        self._quiet = 0

    async def screen(self, path: str, headers: Mapping[str, str]) -> Answer | None:
        """The answer to ``POST path`` from its head alone (``headers`` by lower-case
        name), to be sent before any of the body is read; None when only the body can
        tell (GitHub signs the body). It is the answer ``answer`` would give to that
        head with any body: 503 without a usable secret, 401 for a wrong GitLab
        token or a GitHub request without ``X-GitHub-Event`` or a well-formed
        signature; None too for a path that is not a webhook's (``answer`` says 404)."""
        route = path.split("?", 1)[0]
        secret_file = self.secret_file()
        if route not in PATHS or secret_file is None:
            return None
        return self._head_refusal(route, await _read_secret(secret_file), headers)

    async def answer(self, path: str, headers: Mapping[str, str], body: bytes | None) -> Answer:
        """The answer to ``POST path`` (``headers`` by lower-case name; ``body`` None
        when it was larger than ``MAX_BODY`` or of no stated length). A head
        ``screen`` refuses gets the same refusal here."""
        route = path.split("?", 1)[0]
        secret_file = self.secret_file()
        if route not in PATHS or secret_file is None:
            return Answer(404, TEXT, b"not found\n")
        secret = await _read_secret(secret_file)
        refusal = self._head_refusal(route, secret, headers)
        if refusal is not None:
            return refusal
        if body is None:
            return self._refused(413, "payload too large")
        forge = route.rsplit("/", 1)[1]
        if forge == "github":
            if not github_signature_ok(secret, body, headers.get("x-hub-signature-256")):
                return self._refused(401, "bad or missing signature")
            event, pushes = headers.get("x-github-event", ""), _GITHUB_PUSH
        else:  # (GitLab's token was checked with the head)
            event, pushes = headers.get("x-gitlab-event", ""), _GITLAB_PUSH
        if event not in pushes:
            self.metrics.webhooks.labels("ignored").inc()
            return Answer(200, TEXT, b"ignored: not a push\n")
        try:
            payload = await asyncio.to_thread(json.loads, body)
        except (ValueError, RecursionError):
            return self._refused(400, "payload is not JSON")
        urls = push_urls(payload, forge, self.hosts())
        if not urls and not push_urls(payload, forge):
            return self._refused(400, "payload names no repository")
        if not urls:
            self.metrics.webhooks.labels("ignored").inc()
            return Answer(200, TEXT, b"ignored: not a repository on goblet_hosts\n")
        self.mark_stale(urls)
        self.metrics.webhooks.labels("accepted").inc()
        log.info("webhook: %s push, refs of %s marked stale", forge, urls[0])
        return Answer(200, TEXT, b"accepted\n")

    def wants(self, path: str) -> bool:
        """Whether a POST to ``path`` is a webhook goblet takes (its body is read only
        then): one of ``PATHS``, with a secret file configured."""
        return path.split("?", 1)[0] in PATHS and self.secret_file() is not None

    def _head_refusal(self, route: str, secret: bytes,
                      headers: Mapping[str, str]) -> Answer | None:
        """The refusal of what the head of a POST to the webhook ``route`` decides
        alone (see ``screen``), else None."""
        if not secret:
            return self._refused(503, "webhook secret unavailable")
        if route.endswith("/gitlab"):
            if not gitlab_token_ok(secret, headers.get("x-gitlab-token")):
                return self._refused(401, "bad or missing signature")
            return None
        signature = headers.get("x-hub-signature-256", "").strip()
        if not headers.get("x-github-event") or not _SIGNATURE_SHAPE.fullmatch(signature):
            return self._refused(401, "bad or missing signature")
        return None

    def _refused(self, status: int, reason: str) -> Answer:
        self.metrics.webhooks.labels("refused").inc()
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:  # refusals are anyone's to send: few lines
            more = f" ({self._quiet} more refused since the last line)" if self._quiet else ""
            log.info("webhook refused: %s%s", reason, more)
            self._last_log, self._quiet = now, 0
        else:
            self._quiet += 1
        return Answer(status, TEXT, f"{reason}\n".encode())


async def _read_secret(secret_file: Path) -> bytes:
    """The shared secret, stripped; b"" when the file is empty or unreadable (logged)."""
    try:
        return (await asyncio.to_thread(secret_file.read_bytes)).strip()
    except OSError as e:
        log.warning("webhook secret file unreadable: %s", e.strerror)
        return b""
