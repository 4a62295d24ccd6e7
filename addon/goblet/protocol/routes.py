"""Classify a smart-HTTP request by method and path, sans-IO.

The routes git uses (gitprotocol-http(5)), for a repo at ``$REPO``::

    GET  $REPO/info/refs?service=git-upload-pack     -> INFO_REFS
    POST $REPO/git-upload-pack                       -> UPLOAD_PACK
    GET  $REPO/info/refs?service=git-receive-pack    -> PUSH
    POST $REPO/git-receive-pack                      -> PUSH
    anything else                                    -> OTHER

The repo path is kept exactly as the client sent it (no case folding, no
``.git`` stripping, no percent-decoding): the cache key is the very URL the
upstream authorised, so two spellings never share an entry. Spellings an HTTP
stack could rewrite on the way (dot segments, empty segments, encoded dots,
slashes or backslashes, control characters) and over-long paths are refused
with ProtocolError, because the upstream might read them as another repo.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_to_bytes

from goblet.protocol.errors import ProtocolError, excerpt

MAX_REPO_PATH = 1024

# The Content-Types of upload-pack's two answers (gitprotocol-http(5)).
ADVERTISEMENT_TYPE = "application/x-git-upload-pack-advertisement"  # GET info/refs
RESULT_TYPE = "application/x-git-upload-pack-result"  # POST git-upload-pack

_INFO_REFS = "/info/refs"
_UPLOAD_PACK = "/git-upload-pack"
_RECEIVE_PACK = "/git-receive-pack"
# RFC 3986 pchar minus nothing risky; '%' is checked separately below.
_PATH_CHARS = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%/-]+")
_BAD_ESCAPES = re.compile(r"%(2[eEfF]|5[cC]|0[0-9a-fA-F]|1[0-9a-fA-F]|7[fF]|00)")


class Service(enum.Enum):
    """What a request is, as far as caching goes."""

    INFO_REFS = "info_refs"
    UPLOAD_PACK = "upload_pack"
    PUSH = "push"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class GitTarget:
    """A classified request: its kind and, for git requests, the repo path."""

    kind: Service
    repo_path: str = ""


OTHER = GitTarget(Service.OTHER)


def classify(method: str, path: str) -> GitTarget:
    """Classify ``method`` + ``path`` (the raw request target, query included).

    Returns ``OTHER`` for anything that is not a git smart-HTTP request.
    Raises ProtocolError when it is a git request whose repo path is unsafe.
    """
    target, _, query = path.partition("?")
    if method == "GET" and target.endswith(_INFO_REFS):
        service = dict(parse_qsl(query)).get("service")
        repo = target[: -len(_INFO_REFS)]
        if service == "git-upload-pack":
            return GitTarget(Service.INFO_REFS, check_repo_path(repo))
        if service == "git-receive-pack":
            return GitTarget(Service.PUSH, repo)
        return OTHER
    if method == "POST" and target.endswith(_UPLOAD_PACK):
        return GitTarget(Service.UPLOAD_PACK, check_repo_path(target[: -len(_UPLOAD_PACK)]))
    if method == "POST" and target.endswith(_RECEIVE_PACK):
        return GitTarget(Service.PUSH, target[: -len(_RECEIVE_PACK)])
    return OTHER


@functools.lru_cache(maxsize=1024)  # (pure; only accepted paths, ≤ MAX_REPO_PATH, are kept)
def check_repo_path(repo: str) -> str:
    """Return ``repo`` unchanged if it is a safe, canonical repo path."""
    if not repo.startswith("/") or repo == "/":
        raise ProtocolError("repository path is empty")
    if len(repo) > MAX_REPO_PATH:
        raise ProtocolError(f"repository path longer than {MAX_REPO_PATH} characters")
    if not _PATH_CHARS.fullmatch(repo):
        raise ProtocolError(
            "invalid character in repository path "
            f"{excerpt(repo.encode('utf-8', 'backslashreplace'))!r}"
        )
    if _BAD_ESCAPES.search(repo) or re.search(r"%(?![0-9a-fA-F]{2})", repo):
        raise ProtocolError("percent-encoded dot, slash or control character in repository path")
    try:
        decoded = unquote_to_bytes(repo).decode("utf-8")  # strict: no overlong forms
    except UnicodeDecodeError:
        raise ProtocolError("percent-encoding in repository path is not valid UTF-8") from None
    for text in (repo, decoded):
        if any(s in ("", ".", "..") for s in text[1:].split("/")):
            raise ProtocolError("empty, '.' or '..' segment in repository path")
        if "\\" in text or any(not c.isprintable() for c in text):
            raise ProtocolError("backslash or control character in repository path")
    return repo


def split_prefix(path: str) -> tuple[str, str] | None:
    """Split a path-prefix target ``/<host>/<rest>`` into (host, ``/<rest>``).

    ``<host>`` may carry a port (``/git.internal:8443/…``). Returns None
    when there is no host segment or no rest.
    """
    if not path.startswith("/"):
        return None
    host, sep, rest = path[1:].partition("/")
    if not host or not sep or not rest:
        return None
    return host, "/" + rest
