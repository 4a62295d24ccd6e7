"""The Git LFS batch API, sans-IO: routes, and the download answer goblet rewrites.

Routes, for an LFS endpoint ``$REPO/info/lfs`` (git-lfs derives it from the
remote URL, ``.git`` appended if missing)::

    POST $REPO/info/lfs/objects/batch            -> BATCH (answer read, downloads rewritten;
                                                    an upload answer's actions untouched)
    GET  $REPO/info/lfs/goblet/<token>/<oid>     -> LINK  (a link goblet issued)
    anything else under $REPO/info/lfs/          -> OTHER (locks, verify, uploads: untouched)

A batch answer (``application/vnd.git-lfs+json``) is::

    {"transfer": "basic",
     "objects": [{"oid": "<sha256 hex>", "size": N, "authenticated": true,
                  "actions": {"download": {"href": URL, "header": {...},
                                           "expires_in": S, "expires_at": T}}}
                 | {"oid": ..., "size": N, "error": {"code": 404, "message": ...}}]}

``rewrite_answer`` (``read_answer``, the links, ``linked_answer``: the first and
last are CPU work a caller may run off the event loop) replaces the ``href`` of
each granted download with what its ``link`` callback returns, and drops the
action's ``header``, expiry and the object's ``authenticated`` flag: the
original href and headers reach the callback only. Objects with an error,
without a download action, or with an oid, size, href (``parse_href``) or
header that is not well-formed are left exactly as upstream sent them, as is an
answer for a transfer adapter other than ``basic``.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from goblet.protocol.errors import ProtocolError
from goblet.protocol.routes import check_repo_path

OID_RE = re.compile(r"[0-9a-f]{64}")
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")
LFS = "/info/lfs"
BATCH = "/objects/batch"
LINK = "/goblet/"
MAX_SIZE = 1 << 50  # larger "sizes" are not objects anyone stores
MAX_ANSWER = 8 << 20  # bytes of a batch answer goblet reads to rewrite (git-lfs asks for
# 100 objects at a time: a few hundred KiB); a bigger one passes on as it is
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HOST_RE = re.compile(r"[a-z0-9_]([a-z0-9_.-]{0,252})")
URL_CHARS_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII: no space, control, non-ASCII


class LfsKind(enum.Enum):
    """What an LFS request is."""

    BATCH = "batch"
    LINK = "link"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class LfsTarget:
    """A request under ``$REPO/info/lfs``: its kind, repo path and (LINK) token and oid."""

    kind: LfsKind
    repo_path: str
    token: str = ""
    oid: str = ""


@dataclass(frozen=True, slots=True)
class Download:
    """One download upstream granted: the object and where upstream serves it."""

    oid: str
    size: int
    href: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Href:
    """Where an href points, as goblet sends a request there: scheme, host (no brackets),
    port, path with query, and the ``Host`` header value."""

    scheme: str
    host: str
    port: int
    path: str
    host_header: str

    @property
    def origin(self) -> tuple[str, str, int]:
        """(scheme, host, port), to compare with the batch request's origin."""
        return self.scheme, self.host, self.port


def parse_href(href: str) -> Href | None:
    """``href`` as goblet would request it, or None when it is not a plain, well-formed
    absolute http(s) URL: printable ASCII only (no whitespace or control characters, no
    backslash), no user info, a host name or IP address, a port in 1-65535."""
    if not URL_CHARS_RE.fullmatch(href) or "\\" in href:
        return None
    try:
        url = urlsplit(href)
        port = url.port
    except ValueError:  # a bad port or IPv6 literal
        return None
    scheme, netloc = url.scheme.lower(), url.netloc
    if scheme not in ("http", "https") or not netloc or "@" in netloc:
        return None
    host = (url.hostname or "").lower()
    if netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    elif not HOST_RE.fullmatch(host) or ":" in host:
        return None
    if port == 0:
        return None
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    if not path.startswith("/"):
        return None
    return Href(scheme, host, port or (443 if scheme == "https" else 80), path, netloc)


def classify(method: str, path: str) -> LfsTarget | None:
    """The LFS route of ``method`` + ``path`` (query included), or None when the path is
    not under an LFS endpoint. Raises ProtocolError for an unsafe repo path or a
    malformed goblet link (in any spelling: ``names_a_link``)."""
    route = _classify(method, path)
    if (route is None or route.kind is LfsKind.OTHER) and names_a_link(path):
        raise ProtocolError("malformed goblet LFS link")  # (its token is not passed on)
    return route


def _classify(method: str, path: str) -> LfsTarget | None:
    target, _, query = path.partition("?")
    repo, sep, rest = target.partition(LFS)
    if not sep or (rest and not rest.startswith("/")):
        return None
    repo = check_repo_path(repo)
    if method == "POST" and rest == BATCH and not query:
        return LfsTarget(LfsKind.BATCH, repo)
    if rest.startswith(LINK):
        token, _, oid = rest[len(LINK):].partition("/")
        if method not in ("GET", "HEAD") or query or not TOKEN_RE.fullmatch(token) \
                or not OID_RE.fullmatch(oid):
            raise ProtocolError("malformed goblet LFS link")
        return LfsTarget(LfsKind.LINK, repo, token, oid)
    return LfsTarget(LfsKind.OTHER, repo)


_LINK_SPELLED = re.compile(
    r"(?i)/info(?:/|%2f)+lfs(?:/|%2f)+goblet(?:/|%2f)+(?:%[0-9a-f]{2}|[A-Za-z0-9_-]){20,}")


def names_a_link(path: str) -> bool:
    """Whether ``path`` spells a goblet link's prefix and something like a token in any
    way (another case, doubled slashes, ``%2F``, escaped letters): one ``classify`` does
    not read as a link is refused, never passed upstream with the token in it."""
    return bool(_LINK_SPELLED.search(path)
                or ("%" in path and _LINK_SPELLED.search(unquote(path))))


def link_path(repo_path: str, token: str, oid: str) -> str:
    """The path of a goblet link (what ``classify`` reads back as LINK)."""
    return f"{repo_path}{LFS}{LINK}{token}/{oid}"


def _headers(value: object) -> tuple[tuple[str, str], ...] | None:
    """An action's ``header`` object as (name, value) pairs, or None unless every name is
    an HTTP token and every value is sendable (no control characters, valid UTF-8)."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        return None
    pairs = tuple((k, v) for k, v in value.items() if isinstance(k, str) and isinstance(v, str))
    if len(pairs) != len(value):
        return None
    for name, val in pairs:
        if not HEADER_NAME_RE.fullmatch(name) or any(
                (c < " " and c != "\t") or c == "\x7f" for c in val):
            return None
        try:
            val.encode()
        except UnicodeEncodeError:  # a lone surrogate from a JSON escape
            return None
    return pairs


def granted_download(obj: object) -> Download | None:
    """The download upstream granted in one object of a batch answer, if well-formed."""
    if not isinstance(obj, dict) or "error" in obj:
        return None
    oid, size, actions = obj.get("oid"), obj.get("size"), obj.get("actions")
    if not isinstance(oid, str) or not OID_RE.fullmatch(oid):
        return None
    if type(size) is not int or not 0 <= size <= MAX_SIZE or not isinstance(actions, dict):
        return None
    action = actions.get("download")
    if not isinstance(action, dict) or not isinstance(action.get("href"), str):
        return None
    href: str = action["href"]
    headers = _headers(action.get("header"))
    if headers is None or parse_href(href) is None:
        return None
    return Download(oid, size, href, headers)


@dataclass(frozen=True, slots=True)
class BatchAnswer:
    """A parsed batch answer (``read_answer``): the JSON document and each object in it
    that grants a well-formed download, with that download."""

    document: dict[str, Any]
    granted: tuple[tuple[dict[str, Any], Download], ...]


def read_answer(body: bytes) -> BatchAnswer | None:
    """Parse a batch answer; None for a transfer adapter other than ``basic`` (left as it
    is). CPU work in proportion to ``body``: thread-safe, touches nothing shared.

    Raises ProtocolError (culprit ``upstream``) when ``body`` is not a batch answer.
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("LFS batch answer is not JSON", "upstream") from None
    if not isinstance(document, dict) or not isinstance(document.get("objects"), list):
        raise ProtocolError("LFS batch answer has no object list", "upstream")
    if document.get("transfer", "basic") != "basic":
        return None
    return BatchAnswer(document, tuple((obj, download) for obj in document["objects"]
                                       if (download := granted_download(obj)) is not None))


def linked_answer(answer: BatchAnswer, hrefs: Sequence[str | None]) -> bytes | None:
    """``answer`` with the download of its ``granted[i]`` pointing at ``hrefs[i]`` (None:
    left as it is), as bytes; None when nothing changed. Consumes ``answer`` (its document
    is changed in place); thread-safe otherwise."""
    changed = False
    for (obj, _), href in zip(answer.granted, hrefs, strict=True):
        if href is None:
            continue
        obj.pop("authenticated", None)
        obj["actions"]["download"] = {"href": href}
        changed = True
    return json.dumps(answer.document, separators=(",", ":")).encode() if changed else None


def rewrite_answer(body: bytes, link: Callable[[Download], str | None]) -> bytes | None:
    """``body`` with each granted download pointing at ``link(download)`` (objects whose
    callback returns None are left as they are); None when nothing was rewritten. The
    three steps in one: ``read_answer``, ``link`` per download, ``linked_answer``.

    Raises ProtocolError (culprit ``upstream``) when ``body`` is not a batch answer.
    """
    answer = read_answer(body)
    if answer is None:
        return None
    return linked_answer(answer, [link(download) for _, download in answer.granted])
