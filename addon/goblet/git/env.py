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
    such as ``GIT_PROTOCOL``; it cannot replace the variables set here.
    """
    entries = list(HARDENING) + list(config)
    env = dict(extra or {})
    env |= {
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
