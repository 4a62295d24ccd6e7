"""Warming: keep a list of repos filled before anyone asks.

``goblet_warm_repos`` names a file with one ``https://host[:port]/path`` URL
per line (``#`` comments allowed). At start-up and every ``interval``
seconds each listed repo is filled into the shared partition, one at a time.
Credentials for those fills come from the ``goblet_warm_credentials`` file
(header lines such as ``Authorization: Bearer …``) or, without it, from the
``GOBLET_WARM_HEADER`` environment variable — never from argv, and they are
never logged. Serving a warmed repo still needs each client's own upstream
grant: warming moves data, not permissions.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from goblet.auth.credentials import Credential, credential_from_headers
from goblet.cache.fill import Filler, FillError
from goblet.cache.store import CacheRepo, RepoStore, canonical_url
from goblet.protocol.errors import ProtocolError
from goblet.protocol.routes import check_repo_path

log = logging.getLogger(__name__)

ENV_HEADER = "GOBLET_WARM_HEADER"


def parse_repo_url(url: str) -> tuple[str, int, str]:
    """``https://host[:port]/path`` → (host, port, path); ValueError if unusable."""
    parts = urlsplit(url.strip())
    shown = redact(url)
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        raise ValueError(f"not an https URL without credentials: {shown}")
    if parts.query or parts.fragment:
        raise ValueError(f"URL has a query or fragment: {shown}")
    try:
        path = check_repo_path(parts.path.rstrip("/"))
    except ProtocolError as e:
        raise ValueError(f"{shown}: {e.reason}") from None
    return parts.hostname, parts.port or 443, path


def redact(url: str) -> str:
    """A URL for messages: scheme, host and path only (no userinfo, query or fragment)."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def read_url_list(text: str) -> list[str]:
    """The URLs of a warm list (blank lines and ``#`` comments skipped)."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def parse_header_lines(lines: Iterable[str]) -> Credential:
    """``Name: value`` lines → a Credential (malformed lines are skipped)."""
    pairs = []
    for line in lines:
        name, sep, value = line.strip().partition(":")
        if sep and name.strip() and value.strip():
            pairs.append((name.strip(), value.strip()))
    return credential_from_headers(pairs)


def read_credential(credentials_file: Path | None) -> Credential:
    """Header lines from ``credentials_file``, else from ``$GOBLET_WARM_HEADER``, else anonymous.

    Raises OSError if the file cannot be read. Warming reads it at every round,
    ``goblet cache warm`` once.
    """
    if credentials_file is not None:
        return parse_header_lines(credentials_file.read_text("utf-8").splitlines())
    return parse_header_lines(os.environ.get(ENV_HEADER, "").splitlines())


class Warmer:
    """Fills the listed repos now and then."""

    def __init__(self, filler: Filler, store: RepoStore, urls_file: Path | None,
                 credentials_file: Path | None, interval: float, *,
                 anonymous: bool = False) -> None:
        self.anonymous = anonymous
        self.filler = filler
        self.store = store
        self.urls_file = urls_file
        self.credentials_file = credentials_file
        self.interval = interval

    def credential(self) -> Credential:
        """The warming credential, read fresh (so rotating the file needs no restart).

        With ``anonymous`` (isolation ``public``) it is always the anonymous
        credential: only repos the upstream serves to anyone may reach the disk.
        """
        if self.anonymous:
            return Credential()
        return read_credential(self.credentials_file)

    def repos(self) -> list[CacheRepo]:
        """The repos of the list that parse; bad lines are logged and skipped."""
        if self.urls_file is None:
            return []
        out = []
        for url in read_url_list(self.urls_file.read_text("utf-8")):
            try:
                host, port, path = parse_repo_url(url)
            except ValueError as e:
                log.warning("goblet_warm_repos: skipping %s", e)
                continue
            out.append(self.store.repo_for(canonical_url(host, port, path)))
        return out

    async def round(self) -> tuple[int, int]:
        """Fill every listed repo once; returns (ok, failed)."""
        ok = failed = 0
        try:
            repos, credential = self.repos(), self.credential()
        except OSError as e:
            log.warning("goblet warming skipped: %s", e)
            return 0, 0
        for repo in repos:
            try:
                await self.filler.start(repo, credential)
                ok += 1
            except FillError as e:
                failed += 1
                log.warning("warming %s failed: %s", repo.url, e.reason)
        return ok, failed

    async def run(self) -> None:
        """Warm at start-up and every ``interval`` seconds, until cancelled (with no
        list, just wait: a list set at run time is warmed at the next round)."""
        while True:
            if self.urls_file is not None:  # may be set or cleared at run time
                ok, failed = await self.round()
                log.info("warmed %d repo(s), %d failed", ok, failed)
            await asyncio.sleep(self.interval)
