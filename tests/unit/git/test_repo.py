"""goblet.git.repo: GitPython reads and writes a repo's small files, and git never runs.

- ``write_config`` writes what real git then reads, under git's own lock;
- ``read_head`` agrees with ``git symbolic-ref -q HEAD`` on every shape of HEAD;
- nothing GitPython does starts a process with the inherited environment:
  with ``subprocess.Popen`` made to fail, reading and writing still work; in
  a fresh interpreter with a sentinel variable in its environment and a git
  on PATH that records every run, importing goblet and creating, configuring
  and reading a repo runs git only with the hardened environment, and a
  GitPython command that would need git fails instead of running one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from goblet.git import repo as git_repo
from goblet.git.repo import read_head, write_config

from tests.support.repos import git, list_refs

ADDON = Path(git_repo.__file__).resolve().parents[2]


def git_config(repo: Path, key: str) -> str:
    return git("config", "--file", str(repo / "config"), "--get", key, cwd=repo)


# ------------------------------------------------------------------ config


def test_write_config_keeps_what_is_there_and_changes_only_what_it_sets(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "r.git"
    git("init", "-q", "--bare", str(repo), cwd=tmp_path)
    git("config", "--file", str(repo / "config"), "remote.origin.url", "https://x/y", cwd=repo)
    write_config(repo, [("gc", "auto", "0"), ("uploadpack", "allowFilter", "true"),
                        ("gc", "auto", "1")])
    assert git_config(repo, "gc.auto") == "1"  # the last value set wins, once
    assert git("config", "--file", str(repo / "config"), "--get-all", "gc.auto",
               cwd=repo) == "1"
    assert git_config(repo, "uploadpack.allowfilter") == "true"
    assert git_config(repo, "remote.origin.url") == "https://x/y"


def test_write_config_respects_gits_lock(tmp_path: Path) -> None:
    repo = tmp_path / "r.git"
    git("init", "-q", "--bare", str(repo), cwd=tmp_path)
    before = (repo / "config").read_bytes()
    (repo / "config.lock").write_text("")  # a git config writer is at work
    with pytest.raises(OSError, match="lock"):
        write_config(repo, [("gc", "auto", "0")])
    assert (repo / "config").read_bytes() == before
    assert (repo / "config.lock").exists()  # not ours to remove


def test_write_config_of_no_repo_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        write_config(tmp_path / "missing.git", [("gc", "auto", "0")])


# ------------------------------------------------------------------ HEAD


def symbolic_ref(repo: Path) -> str | None:
    res = subprocess.run(["git", "--git-dir", str(repo), "symbolic-ref", "-q", "HEAD"],
                         capture_output=True, text=True, check=False,
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                              "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"})
    return res.stdout.strip() if res.returncode == 0 else None


@pytest.mark.parametrize(("head", "expected"), [
    ("ref: refs/heads/main\n", "refs/heads/main"),
    ("ref: refs/heads/dev\n", "refs/heads/dev"),
    ("ref: refs/heads/unborn\n", "refs/heads/unborn"),  # names a branch that does not exist
    ("ref: refs/heads/main", "refs/heads/main"),  # no newline
], ids=["main", "dev", "unborn", "no-newline"])
def test_read_head_of_a_symbolic_head(bare: Path, head: str, expected: str) -> None:
    (bare / "HEAD").write_text(head)
    assert read_head(bare) == symbolic_ref(bare) == expected


def test_read_head_of_a_detached_head(bare: Path) -> None:
    (bare / "HEAD").write_text(list_refs(bare)["refs/heads/main"] + "\n")
    assert read_head(bare) is None and symbolic_ref(bare) is None


@pytest.mark.parametrize("content", [None, "", "garbage\n"], ids=["missing", "empty", "garbage"])
def test_read_head_of_a_broken_head_is_none(bare: Path, content: str | None) -> None:
    if content is None:
        (bare / "HEAD").unlink()
    else:
        (bare / "HEAD").write_text(content)
    assert read_head(bare) is None


def test_read_head_of_no_repo_is_none(tmp_path: Path) -> None:
    assert read_head(tmp_path / "missing.git") is None
    assert read_head(tmp_path) is None  # a directory that is no repo


# ------------------------------------------------------------------ no process


def test_reading_and_writing_start_no_process(bare: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        started.append(args)
        raise AssertionError("a process was started")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(os, "posix_spawn", refuse)
    monkeypatch.setattr(os, "fork", refuse)
    write_config(bare, [("gc", "auto", "0")])
    assert read_head(bare) == "refs/heads/main"
    assert started == []
    monkeypatch.undo()
    assert git_config(bare, "gc.auto") == "0"


def test_no_gitpython_command_can_run_git(bare: Path) -> None:
    gitpython = git_repo.gitpython
    with gitpython.Repo(bare) as repo, pytest.raises(gitpython.GitCommandNotFound):
        repo.git.version()


# A git that notes the sentinel it sees and its arguments, then runs the real git.
RECORDING_GIT = """#!/bin/sh
printf '%s|%s\\n' "${{GOBLET_SENTINEL-unset}}" "$*" >> '{log}'
exec '{git}' "$@"
"""

IN_FRESH_INTERPRETER = """
import asyncio, sys
from pathlib import Path
import goblet.addon  # everything the proxy imports, GitPython included
from goblet.cache.store import RepoStore
from goblet.git import repo as git_repo
from goblet.git.runner import GitRunner

root = Path(sys.argv[1])
store = RepoStore(root, GitRunner(home=root / "home"))
store.prepare()
path = store.tmp_dir / "new.git"
asyncio.run(store.init_bare(path))
print(asyncio.run(store.read_refs(path)))
with git_repo.gitpython.Repo(path) as repo:
    try:
        repo.git.version()
        print("gitpython ran git")
    except git_repo.gitpython.GitCommandNotFound:
        print("gitpython cannot run git")
"""


def test_a_fresh_proxy_process_runs_git_only_with_the_hardened_environment(
    tmp_path: Path,
) -> None:
    real_git = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True,
                              check=True).stdout.strip()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    log = tmp_path / "git.log"
    (fake_bin / "git").write_text(RECORDING_GIT.format(log=log, git=real_git))
    (fake_bin / "git").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "GOBLET_SENTINEL": "inherited", "PYTHONPATH": str(ADDON)}
    env.pop("GIT_PYTHON_GIT_EXECUTABLE", None)
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(IN_FRESH_INTERPRETER),
                          str(tmp_path / "cache")], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["({}, 'refs/heads/master')", "gitpython cannot run git"]
    runs = log.read_text().splitlines()
    assert [line.split("|")[1].split()[0] for line in runs] == ["init", "--git-dir"], runs
    assert all(line.startswith("unset|") for line in runs), runs  # all hardened


def imports_gitpython(path: Path) -> bool:
    pattern = re.compile(r"\s*(import git\b|from git(\.| ))")
    return any(pattern.match(line) for line in path.read_text("utf-8").splitlines())


def test_gitpython_is_imported_nowhere_else() -> None:
    """Any other import of GitPython would bypass the guard of goblet.git.repo."""
    here = Path(git_repo.__file__).resolve()
    sources = sorted((ADDON / "goblet").rglob("*.py"))
    assert imports_gitpython(here)
    assert [str(p.relative_to(ADDON)) for p in sources
            if p.resolve() != here and imports_gitpython(p)] == []
