"""Git repos whose files are Git LFS pointers, and the git config a git-lfs client needs.

:func:`make_lfs_repo` creates a bare repo at ``path`` with one commit on ``main``: a
``.gitattributes`` sending ``*.bin`` through the LFS filter and, for each ``name → content``,
the LFS pointer of ``content`` (the objects themselves go to the LFS server). The git used is
isolated from every system and global config.

:func:`lfs_config` is the ``-c`` list for a clone with the real ``git-lfs`` (Debian's
package): the filter (no ``git lfs install`` needed), the LFS endpoint and the credential as
an ``http.extraHeader``, which git and git-lfs both send.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

ATTRIBUTES = "*.bin filter=lfs diff=lfs merge=lfs -text\n"


def pointer(content: bytes) -> bytes:
    """The LFS pointer file of ``content``."""
    oid = hashlib.sha256(content).hexdigest()
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\n"
            f"size {len(content)}\n").encode()


def _git(*args: str, cwd: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd),
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "LANG": "C",
           "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                   timeout=60)


def make_lfs_repo(path: Path, files: dict[str, bytes]) -> None:
    """Create the bare repo ``path`` holding the pointers of ``files`` (see module doc)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _git("init", "-q", "-b", "main", ".", cwd=work)
        (work / ".gitattributes").write_text(ATTRIBUTES)
        (work / "README").write_text("lfs test repo\n")
        for name, content in files.items():
            (work / name).write_bytes(pointer(content))
        _git("add", "-A", cwd=work)
        _git("commit", "-q", "-m", "lfs files", cwd=work)
        _git("init", "-q", "--bare", "-b", "main", str(path), cwd=work)
        _git("push", "-q", str(path), "main", cwd=work)


def lfs_config(lfs_url: str, authorization: str | None) -> list[str]:
    """``-c`` values for a git-lfs clone with ``lfs_url`` and an Authorization header."""
    config = [
        "filter.lfs.process=git-lfs filter-process",
        "filter.lfs.smudge=git-lfs smudge -- %f",
        "filter.lfs.clean=git-lfs clean -- %f",
        "filter.lfs.required=true",
        f"lfs.url={lfs_url}",
        "lfs.concurrenttransfers=2",
    ]
    if authorization:
        config.append(f"http.extraHeader=Authorization: {authorization}")
    return config
