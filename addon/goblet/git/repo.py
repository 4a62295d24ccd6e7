"""A repo's own small files, read and written in process with GitPython: no git runs.

GitPython is used where git's files are small and simple and a child process
would only read or write one of them: the per-repo ``config`` (GitPython's
config writer takes ``config.lock`` as git does) and ``HEAD``. Everything else
runs real git through ``goblet.git.runner``, in the environment
``goblet.git.env`` builds from nothing. GitPython is imported here and nowhere
else, so that rule holds for it too:

- when imported, GitPython checks that git works by running ``git version``
  with the whole environment of the process. The import below points that
  check at an executable that does not exist (and tells GitPython not to
  mind), so no git starts;
- afterwards every command GitPython would run is pointed there as well: a
  GitPython call that needs git fails with ``GitCommandNotFound`` instead of
  running git with an inherited environment.

Refs with their object ids are not read here: GitPython resolves a packed ref
by reading ``packed-refs`` from the top each time (quadratic in the number of
packed refs: seconds for a few thousand, and maintenance packs every ref), so
``RepoStore.read_refs`` asks ``git for-each-ref`` instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

# Where GitPython's git is: nowhere. Only goblet.git.runner starts git.
NO_GIT = "/nonexistent/goblet-starts-git-only-through-goblet.git.runner"


@contextlib.contextmanager
def _no_git_at_import() -> Iterator[None]:
    """For the duration of the import: GitPython's ``git version`` check finds no git."""
    probe = {"GIT_PYTHON_GIT_EXECUTABLE": NO_GIT, "GIT_PYTHON_REFRESH": "quiet"}
    saved = {name: os.environ.get(name) for name in probe}
    os.environ.update(probe)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


with _no_git_at_import():
    import git as gitpython

gitpython.Git.GIT_PYTHON_GIT_EXECUTABLE = NO_GIT


def write_config(git_dir: Path, entries: Iterable[tuple[str, str, str]]) -> None:
    """Set each ``(section, key, value)`` in the repo's own ``config`` file.

    Raises OSError if the file cannot be locked (``config.lock`` exists),
    read or written.
    """
    try:
        with gitpython.GitConfigParser(str(git_dir / "config"), read_only=False,
                                       merge_includes=False) as config:
            for section, key, value in entries:
                config.set_value(section, key, value)
            config.write()  # here: on leaving the block a failed write is only logged
    except (gitpython.GitError, ValueError) as e:
        raise OSError(f"cannot write the config of {git_dir.name}: {e}") from e


def read_head(git_dir: Path) -> str | None:
    """The ref ``HEAD`` names (whether or not that ref exists yet).

    None if HEAD is detached, missing or unreadable. One level only: the
    target is not followed further (goblet's repos never chain symbolic refs).
    """
    try:
        with gitpython.Repo(git_dir, expand_vars=False) as repo:
            return str(repo.head.reference.path)
    except TypeError:  # HEAD holds an object id: detached
        return None
    except (gitpython.GitError, OSError, ValueError):
        return None
