"""The per-install secret that keys tenant ids."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET_BYTES = 32


def load_or_create_secret(path: Path) -> bytes:
    """Return the secret stored at ``path``, creating it (mode 0600) if absent.

    Creation is atomic (a complete file is hard-linked into place), so
    processes sharing a cache directory agree on one secret. Raises OSError if
    the file cannot be read or written, and ValueError if an existing file is
    too short or readable by others.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Write a complete candidate, then link it into place: link() never
        # replaces, so of several racing processes exactly one wins and the
        # others read the winner's (already complete) file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(SECRET_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    mode = path.stat().st_mode & 0o077
    if mode:
        raise ValueError(f"{path} is readable by other users; chmod 600 it")
    data = path.read_bytes()
    if len(data) < SECRET_BYTES:
        raise ValueError(f"{path} holds a truncated secret; delete it")
    return data[:SECRET_BYTES]
