"""A fleet that shares what it fetched: real mitmdumps with separate cache dirs, one S3-
compatible store (moto's server) and one real redis-server, all on loopback.

- four instances cloning one repo at once from empty: the upstream sends its pack once;
- a fifth instance started later clones with no upstream pack traffic while the refs are
  unchanged, and fetches only the delta after a push;
- Redis killed, the store unreachable, the leader killed mid-fill: every clone succeeds;
- the store and Redis never hold a credential (a sentinel token is searched for in every
  object and key).
"""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.e2e.conftest import USERS, Repos, count
from tests.e2e.test_clone import remote_view
from tests.e2e.test_cold_clone import big_repo, slow_clone, tee_begun
from tests.support.fleetservers import AWS_ENV, RedisServer, S3Server
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.net import free_port, metric_sum
from tests.support.proxy import GobletProxy
from tests.support.repos import add_commit
from tests.support.slow_s3 import SlowS3
from tests.support.throttle import SlowReader
from tests.support.upstream_client import UpstreamServer

SENTINEL = "sentinel-fleet-token-6f1d"


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    """The AWS chain's environment variables for the mitmdumps this module starts."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in AWS_ENV.items():
            mp.setenv(k, v)
        yield


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


class Fleet:
    """Starts goblet instances sharing one store (under a prefix of their own) and Redis."""

    def __init__(self, stack: ExitStack, tmp: Path, upstream: UpstreamServer, confdir: Path,
                 s3: S3Server, redis_url: str, prefix: str) -> None:
        self.stack, self.tmp, self.upstream, self.confdir = stack, tmp, upstream, confdir
        self.s3, self.redis_url, self.prefix = s3, redis_url, prefix
        self.proxies: list[GobletProxy] = []

    def start(self, *, endpoint: str | None = None, redis: str | None = None,
              lease: str = "4s", sets: dict[str, str] | None = None) -> GobletProxy:
        i = len(self.proxies)
        px = GobletProxy(self.tmp / f"goblet{i}", hosts=[self.upstream.host],
                         upstream_ca=self.upstream.cert_path, confdir=self.confdir, sets={
                             "goblet_upstream_timeout": "20", "goblet_instance": f"g{i}",
                             "goblet_metrics_port": str(free_port()),
                             "goblet_store": f"s3://{self.s3.bucket}/{self.prefix}",
                             "goblet_store_endpoint": endpoint or self.s3.endpoint,
                             "goblet_redis": self.redis_url if redis is None else redis,
                             "goblet_fleet_lease": lease, **(sets or {})})
        self.stack.enter_context(px)
        self.proxies.append(px)
        return px

    def git(self, px: GobletProxy, name: str) -> GitClient:
        return GitClient(self.tmp / f"home-{name}", ca_file=px.ca_cert, proxy=px.url)


@pytest.fixture
def fleet(request: pytest.FixtureRequest, tmp_path: Path, upstream: UpstreamServer,
          confdir: Path, s3: S3Server, redis_server: RedisServer, aws_env: None
          ) -> Iterator[Fleet]:
    with ExitStack() as stack:
        yield Fleet(stack, tmp_path, upstream, confdir, s3, redis_server.url,
                    request.node.name[:40])


def clone_all(clients: list[tuple[GitClient, str]], url: str, dest: Path) -> list[Path]:
    with ThreadPoolExecutor(len(clients)) as pool:
        results = list(pool.map(lambda c: c[0].clone(url, dest / c[1], check=False), clients))
    assert [r.returncode for r in results] == [0] * len(results), [r.stderr for r in results]
    return [dest / name for _, name in clients]


def published(proxy: GobletProxy, url: str, timeout: float = 30) -> None:
    assert proxy.wait_for_log(f"published {url} to the store", timeout), proxy.log_text()[-3000:]


def test_four_instances_fetch_the_pack_once_and_a_fifth_restores_from_the_store(
    fleet: Fleet, repos: Repos, upstream: UpstreamServer, direct: GitClient, tmp_path: Path,
) -> None:
    name = repos.create(commits=40, blob_size=3000)
    url = upstream.url(name)
    direct.clone(url, tmp_path / "direct")
    want = remote_view(direct, tmp_path / "direct")
    upstream.reset_stats()
    four = [fleet.start() for _ in range(4)]
    clones = clone_all([(fleet.git(px, f"c{i}"), f"c{i}") for i, px in enumerate(four)], url,
                       tmp_path / "clones")
    stats = upstream.stats()
    assert count(stats, "fetch", name) == 1, stats["requests"]
    full_pack = stats["pack_bytes"]
    for path in clones:
        assert remote_view(fleet.git(four[0], "check"), path) == want
    leader = next(px for px in four if "published " + url in px.log_text())
    published(leader, url)
    restored = [px for px in four if f"restored {url} from the store" in px.log_text()]
    assert len(restored) == 3

    fifth = fleet.start()
    upstream.reset_stats()
    started = time.monotonic()
    fleet.git(fifth, "fifth").clone(url, tmp_path / "fifth")
    cold = time.monotonic() - started
    assert count(upstream.stats(), "fetch", name) == 0
    assert upstream.stats()["pack_bytes"] == 0
    assert remote_view(direct, tmp_path / "fifth") == want
    started = time.monotonic()
    fleet.git(fifth, "fifth-warm").clone(url, tmp_path / "fifth-warm")
    warm = time.monotonic() - started
    assert cold < warm + 10  # a warm clone plus the bundle download (generous under load)
    port = int(fifth.sets["goblet_metrics_port"])
    assert metric_sum(port, "goblet_store_restores_total", result="hit") == 1
    assert metric_sum(port, "goblet_store_bytes_total", direction="down") > 0
    assert metric_sum(port, "goblet_upstream_fetch_bytes_total") == 0  # restored, not fetched

    add_commit(repos.path(name), message="after the fleet filled")
    sixth = fleet.start()
    upstream.reset_stats()
    fleet.git(sixth, "sixth").clone(url, tmp_path / "sixth")
    stats = upstream.stats()
    assert count(stats, "fetch", name) == 1  # the delta
    assert 0 < stats["pack_bytes"] < full_pack / 10
    direct.run("fetch", "-q", cwd=tmp_path / "direct")
    assert remote_view(direct, tmp_path / "sixth") == remote_view(direct, tmp_path / "direct")


def test_with_redis_killed_every_clone_succeeds(
    fleet: Fleet, repos: Repos, upstream: UpstreamServer, redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    name = repos.create(commits=10)
    url = upstream.url(name)
    two = [fleet.start(), fleet.start()]
    redis_server.kill()
    clone_all([(fleet.git(px, f"k{i}"), f"k{i}") for i, px in enumerate(two)], url,
              tmp_path / "clones")
    for px in two:
        assert "fleet redis unavailable, filling alone" in px.log_text()
        port = int(px.sets["goblet_metrics_port"])
        assert metric_sum(port, "goblet_fleet_degraded_total", part="redis") >= 1
    # and the store still took what they fetched: a third instance restores it
    third = fleet.start()
    upstream.reset_stats()
    fleet.git(third, "third").clone(url, tmp_path / "third")
    assert count(upstream.stats(), "fetch", name) == 0


def test_with_the_store_unreachable_every_clone_succeeds(
    fleet: Fleet, repos: Repos, upstream: UpstreamServer, tmp_path: Path,
) -> None:
    name = repos.create(commits=10)
    url = upstream.url(name)
    nowhere = f"http://127.0.0.1:{free_port()}"
    two = [fleet.start(endpoint=nowhere), fleet.start(endpoint=nowhere)]
    clone_all([(fleet.git(px, f"u{i}"), f"u{i}") for i, px in enumerate(two)], url,
              tmp_path / "clones")
    assert any("fleet store unavailable, filling alone" in px.log_text() for px in two)
    assert sum(metric_sum(int(px.sets["goblet_metrics_port"]), "goblet_fleet_degraded_total",
                          part="store") for px in two) >= 1


def test_a_corrupted_bundle_is_never_served(
    fleet: Fleet, repos: Repos, upstream: UpstreamServer, s3: S3Server, direct: GitClient,
    tmp_path: Path,
) -> None:
    name = repos.create(commits=12)
    url = upstream.url(name)
    first = fleet.start()
    fleet.git(first, "first").clone(url, tmp_path / "first")
    published(first, url)
    client = s3.client()
    [bundle] = [k for k in s3.objects() if k.startswith(fleet.prefix) and k.endswith(".bundle")]
    data = bytearray(client.get_object(Bucket=s3.bucket, Key=bundle)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    client.put_object(Bucket=s3.bucket, Key=bundle, Body=bytes(data))
    second = fleet.start()
    fleet.git(second, "second").clone(url, tmp_path / "second")
    assert "not restoring" in second.log_text()
    port = int(second.sets["goblet_metrics_port"])
    assert metric_sum(port, "goblet_store_restores_total", result="error") == 1
    direct.clone(url, tmp_path / "direct")
    assert remote_view(direct, tmp_path / "second") == remote_view(direct, tmp_path / "direct")


def test_the_store_and_redis_never_hold_a_credential(
    fleet: Fleet, repos: Repos, upstream: UpstreamServer, s3: S3Server,
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    repos.config["users"] = {**USERS, "sam": {"password": SENTINEL, "tokens": [SENTINEL]}}
    name = repos.create(public=False, readers=("sam",))
    url = with_userinfo(upstream.url(name), "sam", SENTINEL)
    one, two = fleet.start(), fleet.start()
    fleet.git(one, "one").clone(url, tmp_path / "one")
    published(one, upstream.url(name))
    fleet.git(two, "two").clone(url, tmp_path / "two")
    assert f"restored {upstream.url(name)} from the store" in two.log_text()
    needles = [SENTINEL.encode(), base64.b64encode(f"sam:{SENTINEL}".encode())]
    blobs = list(s3.objects().items()) + list(redis_server.dump().items())
    assert blobs
    for key, value in blobs:
        for needle in needles:
            assert needle not in key.encode() and needle not in value, key


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamServer]:
    """An upstream whose answers trickle (4 Mbit/s), so a fill can be cut midway."""
    server = UpstreamServer(tmp_path_factory.mktemp("slow"), {"users": USERS, "repos": {}},
                            rate_mbit=4)
    with server:
        yield server


def test_a_leader_killed_mid_fill_leaves_the_others_to_finish(
    fleet: Fleet, slow: UpstreamServer, tmp_path: Path,
) -> None:
    name = Repos(slow).create(commits=40, files_per_commit=3, blob_size=20_000)
    url = slow.url(name)
    fleet.upstream = slow
    leader, other = fleet.start(lease="3s"), fleet.start(lease="3s")
    before = slow.stats()["pack_bytes"]
    lost = threading.Thread(target=lambda: fleet.git(leader, "lost").clone(
        url, tmp_path / "lost", check=False), daemon=True)
    lost.start()
    deadline = time.monotonic() + 30
    while slow.stats()["pack_bytes"] < before + 200_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    waiting = threading.Thread(target=lambda: fleet.git(other, "waits").clone(
        url, tmp_path / "waits"), daemon=True)
    waiting.start()
    time.sleep(0.5)  # the second instance is waiting for the leader's lease
    assert leader.proc is not None
    leader.proc.kill()  # kill -9: its lease stays in Redis until it runs out
    leader.proc.wait(10)
    waiting.join(120)
    lost.join(30)
    assert (tmp_path / "waits" / ".git").is_dir(), other.log_text()[-3000:]
    port = int(other.sets["goblet_metrics_port"])
    assert metric_sum(port, "goblet_fleet_lease_waits_total", result="leader") >= 1
    assert metric_sum(port, "goblet_fleet_lease_wait_seconds_sum") >= 1  # until it ran out
    published(other, url, 60)
    third = fleet.start(lease="3s")
    fleet.git(third, "third").clone(url, tmp_path / "third")
    assert f"restored {url} from the store" in third.log_text()


def test_redis_killed_mid_fill_fails_no_clone_and_the_store_still_gets_the_repo(
    fleet: Fleet, slow: UpstreamServer, redis_server: RedisServer, tmp_path: Path,
) -> None:
    name = Repos(slow).create(commits=40, files_per_commit=3, blob_size=20_000)
    url = slow.url(name)
    fleet.upstream = slow
    leader, other = fleet.start(), fleet.start()
    before = slow.stats()["pack_bytes"]
    first = threading.Thread(target=lambda: fleet.git(leader, "first").clone(
        url, tmp_path / "first"), daemon=True)
    first.start()
    deadline = time.monotonic() + 30
    while slow.stats()["pack_bytes"] < before + 200_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    redis_server.kill()
    fleet.git(other, "second").clone(url, tmp_path / "second")
    first.join(120)
    assert (tmp_path / "first" / ".git").is_dir(), leader.log_text()[-3000:]
    assert "fleet redis unavailable, filling alone" in other.log_text()
    published(leader, url, 60)


def test_a_trickling_store_is_abandoned_and_the_clone_fills_from_the_upstream(
    repos: Repos, upstream: UpstreamServer, confdir: Path, aws_env: None, tmp_path: Path,
) -> None:
    name = repos.create(commits=6)
    url = upstream.url(name)
    with SlowS3(size=4096, chunk=1, every=2.0) as store:  # 0.5 bytes/s, never silent 30 s
        port = free_port()
        px = GobletProxy(tmp_path / "px", hosts=[upstream.host], upstream_ca=upstream.cert_path,
                         confdir=confdir, sets={
                             "goblet_upstream_timeout": "3", "goblet_metrics_port": str(port),
                             "goblet_store": "s3://goblet-fleet/p",
                             "goblet_store_endpoint": store.endpoint})
        with px:
            started = time.monotonic()
            GitClient(tmp_path / "home", ca_file=px.ca_cert, proxy=px.url).clone(
                url, tmp_path / "clone")
            assert time.monotonic() - started < 40
            assert any(".bundle" in r for r in store.requests)
            assert metric_sum(port, "goblet_fleet_degraded_total", part="store") >= 1
            assert metric_sum(port, "goblet_store_restores_total", result="error") == 1
            assert "object store too slow" in px.log_text()


def test_a_slow_reader_streaming_a_cold_clone_holds_other_instances_no_longer_than_the_timeout(
    fleet: Fleet, repos: Repos, upstream: UpstreamServer, tmp_path: Path,
) -> None:
    name = big_repo(repos)
    url = upstream.url(name)
    # a's streamed clone keeps its copy for a minute of slow reading (its upstream
    # timeout); b gives up waiting for it after its own, 5 s
    a = fleet.start(sets={"goblet_upstream_timeout": "60"})
    b = fleet.start(sets={"goblet_upstream_timeout": "5"})
    with SlowReader(a.port, rate=300) as reader:
        slow = slow_clone(reader, a, url, tmp_path / "slow", tmp_path / "home-slow")
        try:
            tee_begun(a)  # a streams the cold clone, holding the repo's fleet lease
            started = time.monotonic()
            fleet.git(b, "other").clone(url, tmp_path / "other")
            took = time.monotonic() - started
            assert slow.poll() is None  # the slow clone still reads
            assert 5 <= took < 40, took
            port = int(b.sets["goblet_metrics_port"])
            assert metric_sum(port, "goblet_fleet_lease_waits_total", result="timeout") == 1
        finally:
            if slow.poll() is None:
                os.killpg(slow.pid, signal.SIGKILL)
                slow.wait(10)
