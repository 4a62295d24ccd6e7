"""RefAnswers: one real upload-pack run per question, replayed from memory, bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from goblet.git.runner import GitResult, GitRunner
from goblet.protocol import pktline
from goblet.serve.refanswers import TOO_LARGE, RefAnswers

from tests.support.repos import make_bare_repo

LS_REFS = (pktline.encode_line("command=ls-refs") + pktline.DELIM
           + pktline.encode_line("ref-prefix refs/heads/") + pktline.FLUSH)


class CountingRunner(GitRunner):
    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        super().__init__(home=home)
        self.runs = 0

    async def run(self, args: Any, **kw: Any) -> GitResult:
        self.runs += 1
        return await super().run(args, **kw)


def key(name: str = "k", hidden: tuple[str, ...] = ()) -> Any:
    return (name, "digest", "version=2", False, hidden, b"identity")


def test_one_run_per_key_shared_by_concurrent_askers(tmp_path: Path) -> None:
    repo = tmp_path / "r.git"
    make_bare_repo(repo, branches=("main", "dev"))
    runner = CountingRunner(tmp_path / "home")
    answers = RefAnswers(runner)

    async def go() -> list[object]:
        asks = [answers.answer(key(), repo, LS_REFS, "version=2", advertise=False, hidden=())
                for _ in range(5)]
        got = await asyncio.gather(*asks)
        hidden = await answers.answer(key(hidden=("refs/heads/dev",)), repo, LS_REFS,
                                      "version=2", advertise=False, hidden=("refs/heads/dev",))
        return [*got, hidden]

    *same, hidden = asyncio.run(go())
    assert runner.runs == 2 and len(answers) == 2
    assert all(a == same[0] for a in same) and isinstance(same[0], bytes)
    assert b"refs/heads/dev" in same[0] and b"refs/heads/main" in same[0]
    assert isinstance(hidden, bytes) and b"refs/heads/dev" not in hidden
    assert b"refs/heads/main" in hidden


def test_failures_and_large_answers_are_not_kept(tmp_path: Path) -> None:
    repo = tmp_path / "r.git"
    make_bare_repo(repo)
    runner = CountingRunner(tmp_path / "home")
    small = RefAnswers(runner, max_answer=10)
    assert asyncio.run(small.answer(key(), repo, LS_REFS, "version=2", advertise=False,
                                    hidden=())) is TOO_LARGE
    assert asyncio.run(small.answer(key(), tmp_path / "missing.git", LS_REFS, "version=2",
                                    advertise=False, hidden=())) is None
    assert len(small) == 0


def test_the_budget_drops_the_least_recently_used(tmp_path: Path) -> None:
    repo = tmp_path / "r.git"
    make_bare_repo(repo)
    answers = RefAnswers(CountingRunner(tmp_path / "home"), max_bytes=100)

    async def ask(name: str) -> object:
        return await answers.answer(key(name), repo, LS_REFS, "version=2", advertise=False,
                                    hidden=())

    one = asyncio.run(ask("a"))
    assert isinstance(one, bytes) and len(one) <= 100 < 2 * len(one)  # room for one answer
    asyncio.run(ask("b"))
    assert len(answers) == 1 and answers.bytes <= 100


class Subject:
    """Something a verdict is about (weakly referenced, as a credential's view is)."""


def test_a_remembered_verdict_lives_with_its_answer_and_its_subject(tmp_path: Path) -> None:
    repo = tmp_path / "r.git"
    make_bare_repo(repo)
    answers = RefAnswers(CountingRunner(tmp_path / "home"))
    body = asyncio.run(answers.answer(key(), repo, LS_REFS, "version=2", advertise=False,
                                      hidden=()))
    assert isinstance(body, bytes)
    one, other = Subject(), Subject()
    answers.remember(key(), body, one, True)
    assert answers.recall(key(), body, one) is True
    assert answers.recall(key(), body, other) is None  # another subject: not known
    assert answers.recall(key(), bytes(bytearray(body)), one) is None  # not the one held
    answers.remember(key("other"), body, one, True)  # not held under that key: ignored
    assert answers.recall(key("other"), body, one) is None
    del one
    assert answers.recall(key(), body, Subject()) is None  # gone with its subject
    answers.remember(key(), body, other, False)
    answers.forget(key())
    assert answers.recall(key(), body, other) is None and answers.bytes == 0
