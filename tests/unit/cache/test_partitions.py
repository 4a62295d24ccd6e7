"""The partition bound picks the least recently used copies of the same URL."""

from __future__ import annotations

from pathlib import Path

from goblet.cache.partitions import excess
from goblet.cache.store import CacheRepo, RepoInfo

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
