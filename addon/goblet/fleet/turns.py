"""A turn at filling a repo, as ``FleetTier.turn`` hands it out (no IO here)."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field


class Role(enum.Enum):
    """What a ``turn`` makes of this instance for one fill."""

    LEADER = "leader"  # holds the lease: fills (from the store and the upstream), publishes
    FOLLOWER = "follower"  # another instance published meanwhile: restore, fetch the delta
    ALONE = "alone"  # no coordination (none configured, down, or waited too long)
    BUSY = "busy"  # ``wait=False`` and another instance holds the lease


@dataclass(slots=True)
class Turn:
    """One instance's turn at filling a repo."""

    role: Role
    token: int = 0
    lost: bool = False
    _renewer: asyncio.Task[None] | None = field(default=None, repr=False)
