"""Configuration and GitHub-like access rules of the test upstream server.

The configuration is a JSON document (re-read from disk on every request)::

    {"users": {"alice": {"password": "alice-pw", "tokens": ["tok-alice"]}},
     "repos": {"private.git": {"public": false, "readers": ["alice"], "writers": ["alice"]}}}

Contract of :func:`authorize` (``Decision.status`` is the HTTP status to answer with; 200 means
"serve it", and ``Decision.user`` is then the authenticated user or ``None`` for anonymous):

* credentials are ``Basic user:password``, ``Basic any-name:token`` (the token identifies its
  owner) or ``Bearer token``; anything else in ``Authorization`` counts as bad credentials;
* bad credentials -> 401, whatever the repository;
* anonymous: read of a public repository -> 200; any other request -> 401;
* authenticated: read -> 200 if the repository is public or lists the user in ``readers``,
  else 404 (also for unknown repositories); write -> 200 if the user is in ``writers``,
  404 for unknown repositories, else 403.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REALM_HEADER = 'Basic realm="upstream"'


@dataclass(frozen=True)
class Decision:
    """Outcome of an access check: HTTP ``status`` (200 = allowed) and the resolved ``user``."""

    status: int
    user: str | None


class BadCredentials(Exception):
    """The request carried an ``Authorization`` header that identifies nobody."""


def load_config(path: Path) -> dict[str, Any]:
    """Read the JSON config; missing ``users``/``repos`` sections default to empty mappings."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    data.setdefault("users", {})
    data.setdefault("repos", {})
    return data


def _user_for_token(config: dict[str, Any], token: str) -> str | None:
    for name, entry in config["users"].items():
        if token and token in entry.get("tokens", []):
            return str(name)
    return None


def authenticate(config: dict[str, Any], authorization: str | None) -> str | None:
    """Return the user named by ``authorization``, ``None`` when absent.

    Raises :class:`BadCredentials` for a header that is present but does not identify a user
    (unknown user, wrong password, unknown token, unsupported scheme, malformed value).
    """
    if authorization is None or not authorization.strip():
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        user = _user_for_token(config, value)
        if user is None:
            raise BadCredentials
        return user
    if scheme.lower() != "basic":
        raise BadCredentials
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise BadCredentials from exc
    name, sep, secret = decoded.partition(":")
    if not sep:
        raise BadCredentials
    entry = config["users"].get(name)
    if entry is not None and secret and secret == entry.get("password"):
        return name
    user = _user_for_token(config, secret)
    if user is None:
        raise BadCredentials
    return user


def authorize(
    config: dict[str, Any], repo: str, *, write: bool, authorization: str | None
) -> Decision:
    """Apply the access rules in the module docstring to one git request on ``repo``."""
    try:
        user = authenticate(config, authorization)
    except BadCredentials:
        return Decision(401, None)
    rules: dict[str, Any] | None = config["repos"].get(repo)
    if user is None:
        if rules is not None and rules.get("public", False) and not write:
            return Decision(200, None)
        return Decision(401, None)
    if rules is None:
        return Decision(404, user)
    if write:
        return Decision(200 if user in rules.get("writers", []) else 403, user)
    readable = rules.get("public", False) or user in rules.get("readers", [])
    return Decision(200 if readable else 404, user)


def optional_user(config: dict[str, Any], authorization: str | None) -> str | None:
    """The authenticated user for non-git paths: bad or absent credentials give ``None``."""
    try:
        return authenticate(config, authorization)
    except BadCredentials:
        return None
