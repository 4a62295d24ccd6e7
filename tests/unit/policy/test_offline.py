"""Offline answers to ref requests whose forwarding failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from goblet.cache.store import CacheRepo
from goblet.policy.flows import FlowState, Kind
from goblet.policy.offline import PassOn, Refuse, ServeOffline, offline_ref_answer

from tests.unit.policy.fakes import Decider

REPO = CacheRepo("https://h/r.git", "k", Path("/c/k.git"))


def answer(d: Decider, kind: Kind, version: int, failed: bool = False) -> Any:
    state = FlowState(kind, repo=REPO, tenant="t", version=version)
    return offline_ref_answer(d, state, "upstream unreachable: refused",  # type: ignore[arg-type]
                              failed_answer=failed)


@pytest.mark.parametrize(("kind", "version", "advertise", "preamble"), [
    (Kind.INFO_REFS, 0, True, True), (Kind.INFO_REFS, 1, True, True),
    (Kind.INFO_REFS, 2, True, False), (Kind.LS_REFS, 2, False, False),
])
def test_granted_tenants_are_answered_from_the_cache(kind: Kind, version: int,
                                                     advertise: bool, preamble: bool) -> None:
    got = answer(Decider(True, ("refs/heads/secret",)), kind, version)
    assert isinstance(got, ServeOffline) and got.advertise is advertise
    assert got.prefix.startswith(b"001e# service=git-upload-pack") is preamble
    capabilities_only = (kind, version) == (Kind.INFO_REFS, 2)
    assert got.hidden == (() if capabilities_only else ("refs/heads/secret",))


def test_without_the_tenants_refs_there_is_no_offline_ref_list() -> None:
    assert isinstance(answer(Decider(True, None), Kind.LS_REFS, 2), Refuse)
    assert isinstance(answer(Decider(True, None), Kind.INFO_REFS, 2), ServeOffline)


def test_the_last_refusal_is_repeated_with_its_challenge() -> None:
    d = Decider(False, ())
    d.verdicts.record("t", REPO.url, granted=False, status=401, challenge='Basic realm="x"')
    got = answer(d, Kind.INFO_REFS, 0, failed=True)
    assert got == Refuse(401, "goblet: upstream unreachable; its last answer was 401",
                         'Basic realm="x"')


def test_otherwise_the_failed_answer_or_a_502() -> None:
    assert answer(Decider(False, ()), Kind.INFO_REFS, 0, failed=True) == PassOn()
    got = answer(Decider(False, ()), Kind.INFO_REFS, 0)
    assert isinstance(got, Refuse) and got.status == 502 and "refused" in got.message
