"""The per-install secret that keys tenant ids."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET_BYTES = 32


def load_or_create_secret(path: Path) -> bytes:
    """Return the secret stored at ``path``, creating it (mode 0600) if absent.

    Creation is atomic (``O_EXCL``), so processes sharing a cache directory
    agree on one secret. Raises OSError if the file cannot be read or written,
    and ValueError if an existing file is too short or readable by others.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o077
        if mode:
            raise ValueError(f"{path} is readable by other users; chmod 600 it") from None
        data = path.read_bytes()
        if len(data) < SECRET_BYTES:
            raise ValueError(f"{path} holds a truncated secret; delete it") from None
        return data[:SECRET_BYTES]
    try:
        value = secrets.token_bytes(SECRET_BYTES)
        os.write(fd, value)
        os.fsync(fd)
    finally:
        os.close(fd)
    return value
