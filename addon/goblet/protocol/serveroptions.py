"""Server options a client sends goblet itself, sans-IO.

Protocol v2 carries server options as capability lines of a command request
(gitprotocol-v2(5))::

    capability-list = *capability
    capability      = PKT-LINE(key[=value] LF)
    ; "server-option=" option, sent by ``git fetch -o option``,
    ; ``git clone --server-option=option`` or ``git ls-remote -o option``

Options named ``goblet-…`` are goblet's own::

    goblet-option   = "goblet-max-age=" 1*9DIGIT   ; refs at most this many seconds old

Every other option belongs to the upstream: a request that carries one is
never answered from the cache (the option may change the upstream's
answer), and goblet never rewrites a request body, so the upstream gets them
as the client sent them. Unknown ``goblet-…`` options are ignored (a newer
client may know more of them than this goblet).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from goblet.protocol.errors import ProtocolError, excerpt

PREFIX = "goblet-"
MAX_AGE = "goblet-max-age"
_SECONDS = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What the client asked goblet for, and whether the upstream got options of its own.

    ``max_age``: the oldest refs (seconds) the client accepts; None if it did
    not say. ``foreign``: server options that are not goblet's (kept in order).
    """

    max_age: int | None = None
    foreign: tuple[str, ...] = ()


def parse(options: Iterable[str]) -> ClientOptions:
    """Read server option values (what follows ``server-option=``).

    Several ``goblet-max-age`` values: the smallest wins (a client can only
    ask for fresher refs). Raises ProtocolError (the client's fault) for a
    ``goblet-max-age`` that is not a whole number of seconds.
    """
    max_age: int | None = None
    foreign: list[str] = []
    for option in options:
        if not option.startswith(PREFIX):
            foreign.append(option)
            continue
        name, sep, value = option.partition("=")
        if name != MAX_AGE:
            continue
        if not sep or not _SECONDS.fullmatch(value):
            raise ProtocolError(f"server option {excerpt(option.encode())!r}: "
                                f"{MAX_AGE} takes whole seconds, e.g. {MAX_AGE}=0")
        age = int(value)
        max_age = age if max_age is None else min(max_age, age)
    return ClientOptions(max_age, tuple(foreign))
