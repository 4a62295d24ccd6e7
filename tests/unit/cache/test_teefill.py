"""Tee fills: who ended one (client, upstream, this host), and when one gives up its copy.

``overdue`` and ``cut_by`` are pure; the TeeFill tests run a real one (real store, locks
and git on a temporary cache dir) with nothing but the answer faked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from goblet.auth.verdicts import RefView
from goblet.cache import teefill
from goblet.cache.fill import FailureKind, Filler, FillError, result_of
from goblet.cache.locks import RepoLocks
from goblet.cache.store import CacheRepo, RepoStore
from goblet.cache.teefill import INCOMING, Pace, TeeFill, cut_by, eligible, overdue
from goblet.git import runner
from goblet.git.runner import GitRunner
from goblet.protocol import pktline
from goblet.protocol.request import FetchRequest

URL = "https://git.example/org/cold.git"
MAIN, V1 = "1" * 40, "2" * 40
VIEW = RefView.of({"HEAD": MAIN, "refs/heads/main": MAIN, "refs/tags/v1": V1}, {},
                  complete=True)
CLONE = FetchRequest(2, (MAIN, V1), (), (), True, ())


def pace(*, elapsed: float = 10, interval: float = 5, moved: int = 0, idle: float = 0,
         backlog: int = 0) -> Pace:
    return Pace(elapsed, interval, moved, idle, backlog)


# ----------------------------------------------------------------- pure rules


def test_an_answer_broken_off_with_the_client_gone_is_the_clients_doing() -> None:
    assert cut_by(client_gone=True) is FailureKind.CLIENT
    assert cut_by(client_gone=False) is FailureKind.UPSTREAM
    assert result_of(FailureKind.CLIENT) == "abandoned"
    assert result_of(FailureKind.UPSTREAM) == "upstream_error"


def test_a_client_reading_slower_than_the_least_rate_loses_the_copy_not_its_answer() -> None:
    got = overdue(pace(moved=4999, backlog=65536), window=5, max_seconds=3600)
    assert got is not None and got.kind is FailureKind.CLIENT and not got.close_client
    assert "less than 1000 bytes/s" in got.reason


def test_a_steady_slow_reader_draining_its_backlog_keeps_the_copy() -> None:
    """The proxy reads the upstream in bursts once a client's backlog drains: a client
    taking 6 KB/s off a 64 KiB backlog moves no upstream bytes for seconds, yet reads."""
    assert overdue(pace(moved=0, backlog=35_536, idle=5), window=5, max_seconds=3600) \
        is not None  # (what it took unknown: as before, the upstream bytes count)
    steady = Pace(10, 5, 0, 5, 35_536, taken=30_000)  # 64 KiB → 35,536 B in 5 s
    assert overdue(steady, window=5, max_seconds=3600) is None
    stuck = Pace(10, 5, 0, 5, 65_536, taken=4_999)  # under 1000 B/s
    got = overdue(stuck, window=5, max_seconds=3600)
    assert got is not None and got.kind is FailureKind.CLIENT and not got.close_client


def test_a_client_keeping_up_with_a_slow_upstream_is_not_blamed() -> None:
    # Nothing waits for the client: a slow upstream (a pack being computed) is let be...
    assert overdue(pace(moved=10, idle=4), window=5, max_seconds=3600) is None
    # ... and so is a busy client that takes enough.
    assert overdue(pace(moved=5000, backlog=65536), window=5, max_seconds=3600) is None


def test_an_upstream_that_sends_nothing_ends_the_clients_connection_too() -> None:
    got = overdue(pace(idle=5), window=5, max_seconds=3600)
    assert got is not None and got.kind is FailureKind.UPSTREAM and got.close_client
    assert got.reason == "no data from the upstream for 5s"
    # Silence while bytes wait for the client is the client's doing: its answer goes on.
    got = overdue(pace(idle=5, backlog=100), window=5, max_seconds=3600)
    assert got is not None and got.kind is FailureKind.CLIENT and not got.close_client


@pytest.mark.parametrize(("backlog", "kind"), [(1, FailureKind.CLIENT),
                                               (0, FailureKind.UPSTREAM)])
def test_the_deadline_blames_whoever_the_answer_waits_for(backlog: int,
                                                         kind: FailureKind) -> None:
    got = overdue(pace(elapsed=3600, moved=10**9, backlog=backlog), window=5, max_seconds=3600)
    assert got is not None and got.kind is kind and not got.close_client
    assert got.reason.startswith("answer not complete after 3600s")


def test_only_a_full_clone_whose_upstream_head_is_known_is_teed() -> None:
    assert eligible(CLONE, VIEW, "refs/heads/main")
    assert not eligible(CLONE, VIEW, None)  # HEAD would stay git init's: fill instead
    assert not eligible(FetchRequest(0, (MAIN, V1), (), (), True, ()), VIEW, "refs/heads/main")


# ----------------------------------------------------------------- a real tee fill


class Observer:
    """Records what the tee fill reports."""

    def __init__(self) -> None:
        self.results: list[tuple[str, str]] = []

    def fill_started(self, repo: CacheRepo) -> None:
        pass

    def fill_finished(self, repo: CacheRepo, result: str, seconds: float, bytes_in: int,
                      reason: str) -> None:
        self.results.append((result, reason))


class Rig:
    """A cache dir, a filler on it, and the cold repo a tee fill makes."""

    def __init__(self, root: Path, *, stall: float = 1.0, max_seconds: float = 3600) -> None:
        (root / "home").mkdir(parents=True)
        self.store = RepoStore(root / "cache", GitRunner(home=root / "home"))
        self.store.prepare()
        self.locks = RepoLocks(self.store.lock_dir, poll=0.01)
        self.observer = Observer()
        self.filler = Filler(self.store, self.locks, self.store.git, stall_timeout=stall,
                             max_seconds=max_seconds, observer=self.observer)
        self.repo = self.store.repo_for(URL)

    async def tee(self) -> TeeFill:
        tee = await TeeFill.start(self.filler, self.repo, VIEW, "refs/heads/main")
        assert isinstance(tee, TeeFill) and await tee.begin()
        assert list(self.store.tmp_dir.glob("*.git"))
        return tee

    async def ended(self, tee: TeeFill) -> FillError:
        with pytest.raises(FillError) as caught:
            await asyncio.wait_for(tee.task, 10)
        assert list(self.store.tmp_dir.iterdir()) == []  # temporary repo and claim gone
        assert not self.store.exists(self.repo)
        async with self.locks.writer(self.repo.key, timeout=0):  # released
            pass
        return caught.value


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield Rig(tmp_path)


def test_a_client_gone_mid_answer_ends_the_fill_as_abandoned(rig: Rig) -> None:
    async def scenario() -> FillError:
        tee = await rig.tee()
        tee.feed(b"0008NAK\n")
        tee.cut("Client disconnected.", client_gone=True)
        tee.finish()  # (a later ending changes nothing)
        return await rig.ended(tee)

    e = asyncio.run(scenario())
    assert isinstance(e, FillError) and e.kind is FailureKind.CLIENT
    assert rig.observer.results == [("abandoned", "Client disconnected.")]


def test_an_upstream_cut_mid_answer_is_the_upstreams(rig: Rig) -> None:
    async def scenario() -> FillError:
        tee = await rig.tee()
        tee.cut("server closed connection", client_gone=False)
        return await rig.ended(tee)

    e = asyncio.run(scenario())
    assert isinstance(e, FillError) and e.kind is FailureKind.UPSTREAM
    assert rig.observer.results == [("upstream_error", "server closed connection")]


def test_a_refusal_of_the_clients_credential_is_denied(rig: Rig) -> None:
    async def scenario() -> FillError:
        tee = await rig.tee()
        assert not tee.accepts(403, "text/plain", None)
        return await rig.ended(tee)

    e = asyncio.run(scenario())
    assert isinstance(e, FillError) and e.kind is FailureKind.DENIED
    assert rig.observer.results == [("denied", "the upstream answered 403 text/plain")]


def test_a_copy_that_cannot_be_stored_is_given_up_at_once_while_the_answer_flows(
        rig: Rig) -> None:
    async def scenario() -> FillError:
        tee = await rig.tee()
        assert tee._file is not None
        tee._file.close()
        tee._file = _Broken()  # the disk refuses the next write  # type: ignore[assignment]
        chunk = b"000dpackfile\n" + b"0009\x01PACK"
        assert tee.feed(chunk) == chunk
        e = await rig.ended(tee)  # before the answer ended
        assert tee.feed(b"more") == b"more"  # the client's answer still flows
        return e

    e = asyncio.run(scenario())
    assert isinstance(e, FillError) and e.kind is FailureKind.LOCAL
    assert rig.observer.results[0][0] == "local_error"


@pytest.mark.parametrize("way", ["setpriv", "hook"])
def test_an_index_pack_that_cannot_run_is_a_local_error(
        rig: Rig, way: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A git that cannot be executed (exit 127 through setpriv and sh, OSError through
    the pre-exec hook) is goblet's trouble, not a pack the upstream got wrong."""
    if way == "hook":
        monkeypatch.setattr(runner, "launcher", lambda: ())
    async def scenario() -> FillError:
        tee = await rig.tee()
        target = next(rig.store.tmp_dir.glob("*.git"))
        (target / INCOMING).write_bytes(b"")  # (nothing to write: only its status tells)
        rig.filler.git.git = str(rig.store.root / "no-such-git")
        with pytest.raises(FillError) as caught:
            await tee._index_pack(target)
        tee.cut("over", client_gone=True)
        await rig.ended(tee)
        return caught.value

    e = asyncio.run(scenario())
    assert e.kind is FailureKind.LOCAL and "index-pack" in str(e)


class _Broken:
    closed = True

    def write(self, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        pass


def test_a_slow_reader_loses_the_copy_within_a_window_and_keeps_its_connection(
        rig: Rig) -> None:
    stalls: list[bool] = []

    async def scenario() -> FillError:
        tee = await rig.tee()
        tee.on_stall = lambda: stalls.append(True)
        tee.client_backlog = lambda: 65536  # the answer waits for the client
        tee.feed(b"0008NAK\n")
        return await rig.ended(tee)

    e = asyncio.run(scenario())
    assert isinstance(e, FillError) and e.kind is FailureKind.CLIENT
    assert stalls == []
    assert rig.observer.results[0][0] == "abandoned"


def test_a_steady_slow_reader_keeps_the_copy_while_no_upstream_bytes_pass(
        rig: Rig) -> None:
    """The proxy reads the upstream again only once the client drained its backlog: a
    client taking 3 KB/s of it passes windows without one upstream byte, and reads."""

    async def scenario() -> tuple[bool, FillError]:
        tee = await rig.tee()
        tee.feed(b"0008NAK\n" + pktline.encode_data(b"\x02" + b"." * 60_000))  # a burst
        loop, start = asyncio.get_running_loop(), asyncio.get_running_loop().time()
        tee.client_backlog = lambda: max(0, 60_000 - int(3000 * (loop.time() - start)))
        await asyncio.sleep(3.5)  # three windows of 1 s: no byte from the upstream
        alive = not tee.task.done()
        tee.cut("client gone", client_gone=True)
        return alive, await rig.ended(tee)

    alive, e = asyncio.run(scenario())
    assert alive, rig.observer.results
    assert e.kind is FailureKind.CLIENT and rig.observer.results[0][0] == "abandoned"


@pytest.mark.parametrize(("backlogs", "bound"), [
    ([65536] * 8, True),  # held back at every sample
    ([65536, 65536, 0] * 3, False),  # drained between samples: it keeps up
    ([100] * 8, False),  # a few bytes in flight are no holding back
])
def test_a_client_holding_the_answer_back_is_told_to_whoever_waits(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, backlogs: list[int], bound: bool) -> None:
    monkeypatch.setattr(teefill, "SAMPLE_SECONDS", 0.01)
    taken: list[int] = []

    def backlog() -> int:
        taken.append(backlogs[len(taken)] if len(taken) < len(backlogs) else 0)
        return taken[-1]

    async def scenario() -> bool:
        tee = await rig.tee()
        tee.client_backlog = backlog
        for _ in range(1000):  # every sample taken (or the event set)
            if len(taken) >= len(backlogs) or tee.client_bound.is_set():
                break
            await asyncio.sleep(0.01)
        seen = tee.client_bound.is_set()
        tee.cut("Client disconnected.", client_gone=True)
        await rig.ended(tee)
        return seen

    assert asyncio.run(scenario()) is bound


def test_a_silent_upstream_ends_the_fill_and_the_clients_connection(rig: Rig) -> None:
    stalls: list[bool] = []

    async def scenario() -> FillError:
        tee = await rig.tee()
        tee.on_stall = lambda: stalls.append(True)
        return await rig.ended(tee)

    e = asyncio.run(scenario())
    assert isinstance(e, FillError) and e.kind is FailureKind.UPSTREAM
    assert stalls == [True] and e.reason == "no data from the upstream for 1s"


def test_a_tee_fill_past_the_fills_deadline_gives_up(tmp_path: Path) -> None:
    rig = Rig(tmp_path, stall=60, max_seconds=0.3)

    async def scenario() -> FillError:
        tee = await rig.tee()
        tee.client_backlog = lambda: 1
        return await rig.ended(tee)

    e = asyncio.run(scenario())
    assert isinstance(e, FillError) and e.kind is FailureKind.CLIENT
    assert e.reason.startswith("answer not complete after 0s")
