"""Ref answers from the cache, made once and replayed from memory.

A ref answer (a v2 capability advertisement or an ``ls-refs`` answer) is
small and the same for every client asking the same question of the same
refs, but running ``git upload-pack`` for each costs a process start — more
than asking the upstream. So ``RefAnswers`` runs it once per key and keeps
the bytes: the key names the cache repo, its refs (the state digest), the
hidden refs, ``GIT_PROTOCOL`` and the request (``cache_identity``: without
``agent=``/``session-id=``). Concurrent misses of one key share one run.

Bounded: answers over ``max_answer`` bytes are not kept (``TOO_LARGE``: the
caller streams one through the backend instead), and the least recently used
answers are dropped beyond ``max_bytes`` in all (answers and the requests in
their keys). A run that fails gives None.

A caller may ``remember`` a verdict it reached about a held answer and some
object (e.g. that it lists only refs a credential's view holds); the verdict is
dropped with the answer, held only while that object lives (a weak reference),
and at most ``MAX_CHECKS`` are kept per answer.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

from goblet.git.runner import GitRunner, GitTimeout

log = logging.getLogger(__name__)

MAX_BYTES = 32 * 1024 * 1024
MAX_ANSWER = 4 * 1024 * 1024
TIMEOUT = 30.0

MAX_CHECKS = 16

Key = tuple[str, str, str, bool, tuple[str, ...], bytes]


class TooLarge(enum.Enum):
    """The answer is larger than ``max_answer``."""

    TOO_LARGE = "too large"


TOO_LARGE = TooLarge.TOO_LARGE
Made = bytes | TooLarge | None


class RefAnswers:
    """An LRU of ref answers by key (see the module docstring)."""

    def __init__(self, git: GitRunner, *, max_bytes: int = MAX_BYTES,
                 max_answer: int = MAX_ANSWER) -> None:
        self.git = git
        self.max_bytes = max_bytes
        self.max_answer = max_answer
        self.bytes = 0
        self._answers: OrderedDict[Key, bytes] = OrderedDict()
        self._running: dict[Key, asyncio.Future[Made]] = {}
        self._checks: dict[Key, dict[int, tuple[weakref.ref[Any], bool]]] = {}

    def __len__(self) -> int:
        return len(self._answers)

    async def answer(self, key: Key, repo_dir: Path, body: bytes, git_protocol: str | None, *,
                     advertise: bool, hidden: tuple[str, ...]) -> Made:
        """The answer of ``upload-pack`` on ``repo_dir`` to ``body`` (``--advertise-refs``
        if ``advertise``, ``hidden`` refs hidden); None if it failed, ``TOO_LARGE``."""
        got = self._answers.get(key)
        if got is not None:
            self._answers.move_to_end(key)
            return got
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Made] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            made = await self._make(repo_dir, body, git_protocol, advertise, hidden)
            future.set_result(made)
        except BaseException:
            future.set_result(None)
            raise
        finally:
            del self._running[key]
        if isinstance(made, bytes):
            self._keep(key, made)
        return made

    async def _make(self, repo_dir: Path, body: bytes, git_protocol: str | None,
                    advertise: bool, hidden: tuple[str, ...]) -> Made:
        args = ["upload-pack", "--stateless-rpc", *(["--advertise-refs"] if advertise else []),
                str(repo_dir)]
        try:
            res = await self.git.run(
                args, stdin=body, timeout=TIMEOUT,
                extra_env={"GIT_PROTOCOL": git_protocol} if git_protocol else None,
                config=[("uploadpack.hideRefs", ref) for ref in hidden])
        except (OSError, GitTimeout) as e:
            log.warning("ref answer from %s failed: %s", repo_dir.name, e)
            return None
        if not res.ok or not res.stdout:
            log.warning("ref answer from %s failed: %s", repo_dir.name, res.stderr_line())
            return None
        return TOO_LARGE if len(res.stdout) > self.max_answer else res.stdout

    def forget(self, key: Key) -> None:
        """Drop the answer of ``key`` (its user found it unfit)."""
        dropped = self._answers.pop(key, None)
        if dropped is not None:
            self._dropped(key, dropped)

    def recall(self, key: Key, answer: bytes, subject: object) -> bool | None:
        """The verdict ``remember`` stored for ``answer`` (still held under ``key``) and
        this very ``subject``, else None."""
        if self._answers.get(key) is not answer:
            return None
        got = self._checks.get(key, {}).get(id(subject))
        return got[1] if got is not None and got[0]() is subject else None

    def remember(self, key: Key, answer: bytes, subject: object, verdict: bool) -> None:
        """Store ``verdict`` about ``answer`` (if still held under ``key``) and ``subject``
        (weakly referenced)."""
        if self._answers.get(key) is not answer:
            return
        checks = self._checks.setdefault(key, {})
        if len(checks) >= MAX_CHECKS:
            checks.clear()
        checks[id(subject)] = (weakref.ref(subject), verdict)

    def _keep(self, key: Key, answer: bytes) -> None:
        self._answers[key] = answer
        self.bytes += len(answer) + len(key[-1])
        while self.bytes > self.max_bytes and self._answers:
            old, dropped = self._answers.popitem(last=False)
            self._dropped(old, dropped)

    def _dropped(self, key: Key, answer: bytes) -> None:
        self.bytes -= len(answer) + len(key[-1])
        self._checks.pop(key, None)
