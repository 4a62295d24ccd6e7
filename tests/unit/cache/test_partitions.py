"""The partition bound picks the least recently used copies of the same URL."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from goblet.cache.partitions import PartitionLimiter, excess
from goblet.cache.store import ACCESS_FILE, CacheRepo, RepoInfo, RepoStore
from goblet.git.runner import GitRunner

URL = "https://h/r.git"


def info(key: str, url: str = URL, partition: str = "tenant", access: float = 0.0) -> RepoInfo:
    return RepoInfo(key, Path(key), url, partition, 0.0, access)


def test_nothing_to_do_within_the_bound() -> None:
    repo = CacheRepo(URL, "k3", Path("k3"), "tenant:x")
    assert excess([info("k1"), info("k2"), info("k3")], repo, 3) == []
    assert excess([info("k1"), info("k2"), info("k3")], repo, 0) == []  # 0: no bound


def test_oldest_others_go_first_and_never_the_new_one() -> None:
    repo = CacheRepo(URL, "new", Path("new"), "tenant:x")
    infos = [info("a", access=5), info("b", access=1), info("c", access=3),
             info("new", access=0), info("shared", partition="shared", access=0),
             info("elsewhere", url="https://h/other.git", access=0),
             info("u", partition="user", access=2)]
    got = [i.key for i in excess(infos, repo, 2)]
    assert got == ["b", "u", "c"]


def test_new_copies_are_admitted_below_the_bound_or_when_the_oldest_is_idle(
        tmp_path: Path) -> None:
    store = RepoStore(tmp_path, GitRunner(home=tmp_path / "home"))
    store.prepare()
    refused: list[int] = []
    limiter = PartitionLimiter(store, None, 2,  # type: ignore[arg-type] (never evicts here)
                               on_refuse=lambda: refused.append(1), grace=600)
    asyncio.run(limiter.load())  # nothing on disk yet

    def copy(key: str, idle: float) -> None:
        path = store.repos_dir / f"{key}.git"
        path.mkdir()
        (path / ACCESS_FILE).touch()
        then = time.time() - idle
        os.utime(path / ACCESS_FILE, (then, then))
        limiter.after_fill_noted(CacheRepo(URL, key, path, f"tenant:{key}"))

    new = CacheRepo(URL, "new", store.repos_dir / "new.git", "tenant:new")
    assert limiter.admit(new)
    copy("a", idle=30)
    assert limiter.admit(new)
    copy("b", idle=900)
    assert limiter.admit(new)  # the bound is reached, but b is idle past the grace
    os.utime(store.repos_dir / "b.git" / ACCESS_FILE)  # b is in use again
    assert not limiter.admit(new) and refused == [1]
    assert limiter.admit(CacheRepo(URL, "s", tmp_path / "s", ""))  # the shared copy: no bound
