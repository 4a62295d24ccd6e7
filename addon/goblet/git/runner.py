"""The seam through which goblet runs git: every child process starts here.

Tests may substitute a GitRunner; production code never calls subprocess
directly. Arguments are always a list (never a shell string) and never carry
a credential: those travel in the environment built by ``goblet.git.env``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from goblet.git.env import hardened_env

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
CANNOT_RUN = frozenset({126, 127})  # exit status of a child whose git could not be executed
_STDERR_KEEP = 16 * 1024


@dataclass(frozen=True, slots=True)
class GitResult:
    """Exit status and captured output of one git run."""

    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        """True iff git exited with status 0."""
        return self.returncode == 0

    def stderr_line(self) -> str:
        """The most telling stderr line (the last ``fatal:``/``error:`` one), trimmed."""
        lines = [ln.strip() for ln in self.stderr.decode("utf-8", "replace").splitlines()]
        lines = [ln for ln in lines if ln]
        for ln in reversed(lines):
            if ln.startswith(("fatal:", "error:")):
                return ln[:300]
        return lines[-1][:300] if lines else f"git exited with status {self.returncode}"


class GitTimeout(Exception):
    """A git child ran past its deadline and was killed."""


class GitRunner:
    """Runs git with the hardened environment.

    ``base_config`` is added to every call (e.g. ``http.sslCAInfo``).
    """

    def __init__(
        self,
        *,
        home: Path,
        git: str = "git",
        base_config: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.git = git
        self.home = home
        self.base_config = tuple(base_config)
        launcher()  # (checked now, not at the first child a client waits for)

    def env(
        self, config: Sequence[tuple[str, str]] = (), extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The environment for one call: hardening + base config + ``config``."""
        return hardened_env(
            home=str(self.home), config=self.base_config + tuple(config), extra=extra
        )

    async def run(
        self,
        args: Sequence[str],
        *,
        git_dir: Path | None = None,
        stdin: bytes | None = None,
        config: Sequence[tuple[str, str]] = (),
        extra_env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_stderr: Callable[[str], None] | None = None,
    ) -> GitResult:
        """Run ``git [--git-dir DIR] ARGS`` to completion and capture its output.

        ``on_stderr``, if given, receives each stderr line as it arrives
        (progress lines end in CR and are delivered one by one). Raises
        GitTimeout (after killing and reaping the child) when ``timeout``
        seconds pass. Raises OSError if the child cannot be started; a git that cannot be
        executed is a child that exits with a status in ``CANNOT_RUN`` (it starts
        through ``setpriv``).
        """
        proc = await self.spawn(args, git_dir=git_dir, config=config, extra_env=extra_env)
        try:
            if on_stderr is None:
                out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
            else:
                out, err = await asyncio.wait_for(_stream_stderr(proc, stdin, on_stderr),
                                                  timeout)
        except (TimeoutError, asyncio.CancelledError) as e:
            await kill_and_reap(proc)
            if isinstance(e, TimeoutError):
                raise GitTimeout(f"git {args[0]} timed out after {timeout:.0f}s") from None
            raise
        assert proc.returncode is not None
        return GitResult(proc.returncode, out, err[-_STDERR_KEEP:])

    async def spawn(
        self,
        args: Sequence[str],
        *,
        git_dir: Path | None = None,
        config: Sequence[tuple[str, str]] = (),
        extra_env: Mapping[str, str] | None = None,
        nice: int = 0,
    ) -> asyncio.subprocess.Process:
        """Start git with all three standard streams piped; the caller reaps it.

        ``nice`` lowers the child's CPU priority (background work that must not slow
        the clients being served). The child gets SIGKILL when the proxy dies, even
        by SIGKILL: it starts through ``launch_prefix`` (``setpriv``), or, where that
        cannot be had, through a pre-exec hook (``_die_with_parent``)."""
        prefix = launch_prefix(args)
        argv = [*prefix, self.git]
        if git_dir is not None:
            argv += ["--git-dir", str(git_dir)]
        argv += list(args)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env(config, extra_env),
            cwd=str(git_dir) if git_dir is not None else str(self.home),
            limit=READ_CHUNK,
            start_new_session=True,  # its own process group: killed as a whole
            preexec_fn=None if prefix else _die_with_parent(nice),
        )
        if prefix and nice:  # (the whole group: git and what it has started so far)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.setpriority(os.PRIO_PGRP, proc.pid,
                               min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))
        return proc


# The git commands that write nothing anywhere: a child that outlives a killed proxy by
# the moment before its parent-death signal is set only reads, and ends with its pipes.
READERS = frozenset({"upload-pack", "cat-file", "rev-list", "for-each-ref", "rev-parse",
                     "show-ref", "ls-remote", "count-objects", "fsck", "version", "--version"})

# Run by sh after setpriv has set the signal: the command only if the proxy that started
# it ($1) is still its parent (one killed before that would never send the signal).
ALIVE_CHECK = '[ "$PPID" = "$1" ] || exit 125; shift; exec "$@"'
SH = "/bin/sh"


def launch_prefix(args: Sequence[str]) -> tuple[str, ...]:
    """What ``git ARGS`` is started through: ``launcher()``, for a command that writes
    followed by ``sh`` checking that the proxy is still alive once the signal is set;
    ``()`` where there is no launcher (the pre-exec hook then)."""
    base = launcher()
    if not base or (args and args[0] in READERS):
        return base
    return _alive_checked(base)


def _alive_checked(base: tuple[str, ...]) -> tuple[str, ...]:
    """``base`` followed by ``ALIVE_CHECK`` for this process."""
    return (*base, SH, "-c", ALIVE_CHECK, "goblet-git", str(os.getpid()))


@functools.cache
def launcher() -> tuple[str, ...]:
    """util-linux's ``setpriv`` giving the child SIGKILL as parent-death signal, or ``()``
    where there is no such ``setpriv`` or no ``/bin/sh`` (then a pre-exec hook sets the
    signal and checks the parent, ``_die_with_parent``).

    Why not always the hook: a Python pre-exec function makes ``subprocess`` fork the
    whole proxy (page tables of a process of a few hundred MB) and run Python in the
    child before ``exec``, while the event loop waits: ~10-16 ms per child measured,
    against under 1 ms with the ``vfork`` it uses otherwise. ``setpriv`` sets the
    signal a few milliseconds after the start and checks nothing, so a command that
    writes runs under ``ALIVE_CHECK`` too (one more exec, in the child). Checked once,
    by running it, so a ``setpriv`` without ``--pdeathsig`` (util-linux before 2.33) is
    not used.
    """
    if _prctl() is None:
        return ()  # (no Linux: no parent-death signal either way)
    path, ok = shutil.which("setpriv"), False
    if path is not None:
        prefix = (path, "--pdeathsig", "KILL", "--")
        try:
            ok = subprocess.run([*_alive_checked(prefix), path, "--version"],
                                stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
                                check=False).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
    if not ok:
        log.warning("goblet: no setpriv that sets a parent-death signal (util-linux) or no "
                    "%s: every git child starts through a pre-exec hook, which forks the "
                    "proxy", SH)
        return ()
    return prefix


_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once (None where there is none)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return fn


def _die_with_parent(nice: int = 0) -> Callable[[], None] | None:
    """A pre-exec hook that makes the child get SIGKILL when goblet dies (Linux), and
    lowers its priority by ``nice``.

    Without it a ``git fetch`` outlives a killed proxy (it runs in its own
    session) and keeps writing into the cache after its writer lock is gone,
    while the restarted proxy takes its files for crash residue.
    """
    prctl = _prctl()
    if prctl is None and not nice:
        return None
    parent = os.getpid()

    def hook() -> None:
        if nice:
            os.nice(nice)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)

    return hook


async def _stream_stderr(proc: asyncio.subprocess.Process, stdin: bytes | None,
                         on_stderr: Callable[[str], None]) -> tuple[bytes, bytes]:
    """Like ``communicate`` but hands stderr lines to ``on_stderr`` as they come."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    if stdin:
        proc.stdin.write(stdin)
        await proc.stdin.drain()
    proc.stdin.close()
    out_task = asyncio.ensure_future(proc.stdout.read())
    kept = b""
    pending = b""
    while chunk := await proc.stderr.read(READ_CHUNK):
        kept = (kept + chunk)[-_STDERR_KEEP:]
        pending += chunk
        *lines, pending = re.split(rb"[\r\n]", pending)
        for line in lines:
            if line.strip():
                on_stderr(line.decode("utf-8", "replace"))
    if pending.strip():
        on_stderr(pending.decode("utf-8", "replace"))
    out = await out_task
    await proc.wait()
    return out, kept


async def kill_and_reap(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc`` and its process group, then wait for it, so nothing is left.

    Children of git (``pack-objects`` under ``upload-pack``, ``index-pack``
    under ``fetch``) share its process group (see ``spawn``), so they die
    with it instead of computing on as orphans.
    """
    if proc.returncode is None:  # once reaped, its pid may belong to someone else
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
