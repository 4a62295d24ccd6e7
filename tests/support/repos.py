"""Deterministic git repository builders for tests.

Every git command here runs through :func:`git` with :func:`clean_env`: nothing comes from the
caller's environment or from system/global git config (``HOME`` is a private empty temp dir),
and authors, committers and dates are fixed, so the same arguments always produce the same
object ids. Histories are written with ``git fast-import`` (no work tree needed).

Shape of :func:`make_bare_repo`:

* the default branch gets ``commits`` commits; every other branch forks from the default
  branch's middle commit (index ``(commits - 1) // 2``) and adds ``max(1, commits // 2)``
  commits of its own;
* each commit rewrites ``README.md`` (small text, delta-friendly) and adds
  ``files_per_commit`` new files of ``blob_size`` pseudo-random (incompressible) bytes under
  ``data/<branch>/``, so pack size grows about linearly with
  ``commits * files_per_commit * blob_size``;
* the ``t``-th lightweight tag and the ``t``-th annotated tag point at default-branch commit
  ``max(0, commits - 1 - t)`` (the first at the tip, then walking back);
* commit ``n`` (counting all commits written, in order) is dated
  ``BASE_TIME + n * TIME_STEP`` UTC.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

AUTHOR_NAME = "Goblet Test"
AUTHOR_EMAIL = "goblet-test@example.invalid"
BASE_TIME = 1_700_000_000
TIME_STEP = 60
_home_dir: Path | None = None


class GitError(RuntimeError):
    """A git command exited non-zero; carries its arguments, exit code and stderr."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"git {' '.join(args)} failed ({returncode}): {stderr.strip()}")
        self.git_args = list(args)
        self.returncode = returncode
        self.stderr = stderr


def _private_home() -> Path:
    global _home_dir  # noqa: PLW0603 - one lazily created HOME per process
    if _home_dir is None:
        _home_dir = Path(tempfile.mkdtemp(prefix="goblet-repos-home-"))
        atexit.register(shutil.rmtree, _home_dir, True)
    return _home_dir


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The complete environment for builder git commands, plus ``extra``.

    Only ``PATH`` is inherited; ``HOME``/``XDG_CONFIG_HOME`` point at an empty private temp
    dir, system and global config are disabled, identities and dates are fixed.
    """
    home = str(_private_home())
    date = f"{BASE_TIME} +0000"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "XDG_CONFIG_HOME": home,
        "LANG": "C",
        "LC_ALL": "C",
        "TZ": "UTC",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": AUTHOR_NAME,
        "GIT_AUTHOR_EMAIL": AUTHOR_EMAIL,
        "GIT_AUTHOR_DATE": date,
        "GIT_COMMITTER_NAME": AUTHOR_NAME,
        "GIT_COMMITTER_EMAIL": AUTHOR_EMAIL,
        "GIT_COMMITTER_DATE": date,
    }
    if extra:
        env.update(extra)
    return env


def git(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
) -> str:
    """Run ``git *args`` in ``cwd`` with :func:`clean_env` (plus ``env``); return stdout
    without its trailing newline. Raises :class:`GitError` on a non-zero exit."""
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=clean_env(env),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise GitError(args, result.returncode, result.stderr.decode("utf-8", "replace"))
    return result.stdout.decode("utf-8", "replace").rstrip("\n")


def list_refs(repo: Path) -> dict[str, str]:
    """Map every ref of ``repo`` (bare or not) to the object id it stores."""
    out = git("for-each-ref", "--format=%(refname) %(objectname)", cwd=repo)
    refs: dict[str, str] = {}
    for line in out.splitlines():
        name, _, oid = line.partition(" ")
        refs[name] = oid
    return refs


class _Stream:
    """Accumulates a ``git fast-import`` command stream."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.next_mark = 1

    def data(self, payload: bytes) -> None:
        self.parts.append(b"data %d\n%s\n" % (len(payload), payload))

    def line(self, text: str) -> None:
        self.parts.append(text.encode() + b"\n")

    def commit(
        self,
        ref: str,
        when: int,
        message: str,
        parent: str | None,
        files: Mapping[str, bytes],
    ) -> str:
        """Append a commit; return its mark (``:<n>``)."""
        mark = f":{self.next_mark}"
        self.next_mark += 1
        ident = f"{AUTHOR_NAME} <{AUTHOR_EMAIL}> {when} +0000"
        self.line(f"commit {ref}")
        self.line(f"mark {mark}")
        self.line(f"author {ident}")
        self.line(f"committer {ident}")
        self.data(message.encode())
        if parent is not None:
            self.line(f"from {parent}")
        for path, content in sorted(files.items()):
            self.line(f"M 100644 inline {path}")
            self.data(content)
        self.line("")
        return mark

    def run(self, bare: Path) -> None:
        self.line("done")
        git("fast-import", "--quiet", "--done", cwd=bare, input=b"".join(self.parts))


def _commit_files(
    branch: str, index: int, files_per_commit: int, seed: int, blob_size: int
) -> dict[str, bytes]:
    slug = branch.replace("/", "_")
    files = {"README.md": f"# {branch}\n\ncommit {index} of branch {branch}\n".encode()}
    for j in range(files_per_commit):
        rng = random.Random(f"{seed}/{branch}/{index}/{j}")
        files[f"data/{slug}/c{index:05d}-f{j}.bin"] = rng.randbytes(blob_size)
    return files


def make_empty_bare_repo(path: Path, default_branch: str = "main") -> None:
    """Create an empty bare repo at ``path`` whose HEAD points at ``default_branch``.

    Like the big forges, it serves partial clones (``uploadpack.allowFilter``)
    and objects by id (``uploadpack.allowAnySHA1InWant``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    git(
        "init",
        "--quiet",
        "--bare",
        f"--initial-branch={default_branch}",
        str(path),
        cwd=path.parent,
    )
    git("config", "uploadpack.allowFilter", "true", cwd=path)
    git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=path)


def make_bare_repo(
    path: Path,
    *,
    commits: int = 5,
    files_per_commit: int = 3,
    branches: Sequence[str] = ("main",),
    tags: Sequence[str] = (),
    annotated_tags: Sequence[str] = (),
    default_branch: str = "main",
    seed: int = 0,
    blob_size: int = 200,
) -> None:
    """Create a bare repo at ``path`` with the history described in the module docstring.

    Raises ValueError if ``commits < 1``, ``default_branch`` is not in ``branches``, or a tag
    name is repeated. ``path`` must not exist yet or be empty.
    """
    if commits < 1:
        raise ValueError("commits must be >= 1")
    if default_branch not in branches:
        raise ValueError(f"default_branch {default_branch!r} not in branches {list(branches)}")
    all_tags = [*tags, *annotated_tags]
    if len(set(all_tags)) != len(all_tags):
        raise ValueError("tag names must be unique")
    make_empty_bare_repo(path, default_branch)
    stream = _Stream()
    clock = iter(range(BASE_TIME, BASE_TIME + 10**9, TIME_STEP))
    main_marks: list[str] = []
    parent: str | None = None
    for i in range(commits):
        files = _commit_files(default_branch, i, files_per_commit, seed, blob_size)
        message = f"{default_branch}: commit {i}\n"
        parent = stream.commit(f"refs/heads/{default_branch}", next(clock), message, parent, files)
        main_marks.append(parent)
    for branch in branches:
        if branch == default_branch:
            continue
        parent = main_marks[(commits - 1) // 2]
        for i in range(max(1, commits // 2)):
            files = _commit_files(branch, i, files_per_commit, seed, blob_size)
            parent = stream.commit(
                f"refs/heads/{branch}", next(clock), f"{branch}: commit {i}\n", parent, files
            )
    for t, name in enumerate(tags):
        stream.line(f"reset refs/tags/{name}")
        stream.line(f"from {main_marks[max(0, commits - 1 - t)]}")
        stream.line("")
    for t, name in enumerate(annotated_tags):
        stream.line(f"tag {name}")
        stream.line(f"from {main_marks[max(0, commits - 1 - t)]}")
        stream.line(f"tagger {AUTHOR_NAME} <{AUTHOR_EMAIL}> {next(clock)} +0000")
        stream.data(f"annotated tag {name}\n".encode())
    stream.run(path)


def add_commit(
    bare: Path,
    *,
    branch: str = "main",
    message: str = "Add commit",
    files: Mapping[str, bytes] | None = None,
) -> str:
    """Add one commit on ``branch`` of the bare repo ``bare`` and return its object id.

    The commit's parent is the branch tip; a missing branch starts from HEAD's commit, or as
    a root commit in an empty repo. ``files`` (path -> content) are added or overwritten on
    top of the parent tree; by default one file ``added/commit-<n>.txt`` holding the message,
    ``n`` being the branch's new commit count. The date is the parent's committer date plus
    ``TIME_STEP`` (``BASE_TIME`` for a root commit), so the result is deterministic.
    """
    parent: str | None = None
    for candidate in (f"refs/heads/{branch}", "HEAD"):
        try:
            parent = git("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}", cwd=bare)
            break
        except GitError:
            continue
    if parent is None:
        when, count = BASE_TIME, 0
    else:
        when = int(git("log", "-1", "--format=%ct", parent, cwd=bare)) + TIME_STEP
        count = int(git("rev-list", "--count", parent, cwd=bare))
    if files is None:
        files = {f"added/commit-{count + 1:05d}.txt": f"{message}\n".encode()}
    stream = _Stream()
    text = message if message.endswith("\n") else message + "\n"
    stream.commit(f"refs/heads/{branch}", when, text, parent, files)
    stream.run(bare)
    return git("rev-parse", f"refs/heads/{branch}", cwd=bare)
