"""Fakes the policy tests share: the parts of FetchDecider and RepoStore a policy reads,
and a serve planner that records what it was asked for."""

from __future__ import annotations

from typing import Any

from goblet.auth.credentials import Credential
from goblet.auth.verdicts import VerdictCache
from goblet.cache.store import CacheRepo, RepoState
from goblet.decide import Decision, Route
from goblet.protocol.request import FetchRequest
from goblet.serve.plans import ServePlan


class Decider:
    """The parts of FetchDecider the policies read; decisions and offline answers as told.

    ``may``/``hidden``: the offline rule's answers; ``decision``: what ``decide`` says
    (its requests kept in ``asked``); fills started are kept in ``fills``.
    """

    def __init__(self, may: bool = False, hidden: tuple[str, ...] | None = (), *,
                 isolation: str = "shared", tee: bool = False) -> None:
        self.may, self.hidden = may, hidden
        self.verdicts = VerdictCache(60, keep=3600)
        self.offline_grace = 3600.0
        self.isolation = isolation
        self.tee = tee
        self.uncacheable: set[str] = set()
        self.heads: dict[str, str] = {}
        self.decision = Decision(Route.UPSTREAM, "not cached")
        self.asked: list[FetchRequest] = []
        self.fills: list[tuple[CacheRepo, Credential, str, str | None]] = []

    def may_serve_offline(self, tenant: str, repo: CacheRepo) -> bool:
        return self.may

    def offline_hidden_refs(self, tenant: str, repo: CacheRepo) -> tuple[str, ...] | None:
        return self.hidden

    async def decide(self, repo: CacheRepo, tenant: str, credential: Credential,
                     req: FetchRequest, host: str) -> Decision:
        self.asked.append(req)
        return self.decision

    def start_fill(self, repo: CacheRepo, credential: Credential, tenant: str,
                   head: str | None = None) -> None:
        self.fills.append((repo, credential, tenant, head))


class Store:
    """A RepoStore whose repos' last fill wrote ``snapshot`` (None: never filled)."""

    def __init__(self, snapshot: RepoState | None = None) -> None:
        self.snapshot = snapshot

    def state(self, repo: CacheRepo) -> RepoState | None:
        return self.snapshot


class Planner:
    """A serve planner: the ServePlan asked for, its keyword arguments kept in ``asked``."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    def __call__(self, repo: CacheRepo, body: bytes, git_protocol: str | None,
                 **kw: Any) -> ServePlan:
        self.asked.append(kw)
        fields = {k: v for k, v in kw.items() if k not in ("final", "identity")}
        return ServePlan(repo.path, body, git_protocol, repo.url, repo_key=repo.key, **fields)
