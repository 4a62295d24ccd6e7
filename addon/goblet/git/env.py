"""The hardened environment every git child process runs in.

This is rule 5 of docs/architecture.md ("Git runs hardened") in code.

The environment is built from nothing rather than filtered from ours, so no
proxy variable, ``GIT_*`` override, askpass helper or system/global config
can reach git. Configuration is passed with ``GIT_CONFIG_COUNT`` /
``GIT_CONFIG_KEY_n`` / ``GIT_CONFIG_VALUE_n``, which keeps secrets such as an
``http.extraHeader`` out of argv (``ps``) and off the disk.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

# Settings applied to every git we run, whatever it does.
HARDENING: tuple[tuple[str, str], ...] = (
    ("credential.helper", ""),
    ("core.askPass", ""),
    ("protocol.allow", "never"),
    ("protocol.https.allow", "always"),
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("http.followRedirects", "false"),
    ("transfer.credentialsInUrl", "die"),
)


# Marks every git child (and what git starts: git passes its environment on) with the
# process that started it, so what a killed goblet left running can be told apart from
# anything else (``cache/orphans.py``).
OWNER_VARIABLE = "GOBLET_OWNER"
_OWN_MARK: dict[int, str] = {}


def owner_mark(pid: int | None = None) -> str:
    """``<pid>:<start time>`` of process ``pid`` (this one by default): the start time
    (clock ticks after boot, ``/proc/<pid>/stat``) tells a reused pid apart; ``0`` where
    it cannot be read."""
    if pid is None:
        pid = os.getpid()
        if pid not in _OWN_MARK:  # (read once per process; a fork reads its own)
            _OWN_MARK.clear()
            _OWN_MARK[pid] = owner_mark(pid)
        return _OWN_MARK[pid]
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            started = f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "0"
    return f"{pid}:{started}"


def hardened_env(
    *,
    home: str,
    config: Sequence[tuple[str, str]] = (),
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Return a complete environment for a git child.

    ``home`` is an empty directory of ours (git reads ``$HOME/.gitconfig``
    otherwise). ``config`` entries come after HARDENING, so callers may add
    keys but the hardening is always present. ``extra`` adds plain variables
    such as ``GIT_PROTOCOL``; it cannot replace the variables set here. ``GOBLET_OWNER``
    marks the child as this process's (``owner_mark``).
    """
    entries = list(HARDENING) + list(config)
    env = dict(extra or {})
    env |= {
        OWNER_VARIABLE: owner_mark(),
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": home,
        "LANG": "C",
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",
        "SSH_ASKPASS": "",
        "GIT_CONFIG_COUNT": str(len(entries)),
    }
    for i, (key, value) in enumerate(entries):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env
