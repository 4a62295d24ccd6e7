"""The fleet tier when its shared parts misbehave without failing outright: real
mitmdumps, a real ``redis-server`` holding values goblet did not write, a Redis and an
object store that accept connections and never answer (``tests/support/silent.py``).

- a lease key that is empty, not UTF-8, of another type or without an expiry: a cold
  clone completes, goblet sends Redis a handful of commands, not thousands;
- a digest that is not UTF-8: no traceback, and the repo is cached;
- a silent Redis: cold clones complete and goblet stops asking it (no retries, no
  call per fill);
- a silent store: a warm clone of a cached repo is not held up while cold clones of
  other repos wait on the store, and those cold clones complete too.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e import test_fleet_tier as tier
from tests.e2e.conftest import Repos
from tests.e2e.test_fleet_tier import Fleet
from tests.support.fleetservers import RedisServer
from tests.support.gitclient import GitClient
from tests.support.net import free_port, metric_sum
from tests.support.proxy import GobletProxy
from tests.support.silent import SilentServer
from tests.support.upstream_client import UpstreamServer

# test_fleet_tier's fixtures: the fleet of mitmdumps, its store (moto) and Redis
aws_env, s3, redis_server, fleet = tier.aws_env, tier.s3, tier.redis_server, tier.fleet


def key_of(url: str) -> str:
    """The cache repo key of a shared-partition repo."""
    return hashlib.sha256(url.encode()).hexdigest()


def commands(r: redis.Redis) -> int:
    return int(r.info("stats")["total_commands_processed"])


FOREIGN_LEASES: dict[str, Any] = {
    "empty": lambda r, k: r.set(k, b""),
    "not-utf8": lambda r, k: r.set(k, b"\xff"),
    "a-hash": lambda r, k: r.hset(k, "x", "y"),
    "no-expiry": lambda r, k: r.set(k, b"999999"),
}


@pytest.mark.parametrize("write", FOREIGN_LEASES.values(), ids=FOREIGN_LEASES.keys())
def test_a_lease_goblet_did_not_write_neither_hangs_a_cold_clone_nor_hammers_redis(
    fleet: Fleet, repos: Repos, upstream: UpstreamServer, redis_server: RedisServer,
    tmp_path: Path, write: Any,
) -> None:
    name = repos.create(commits=5)
    url = upstream.url(name)
    px = fleet.start()
    r = redis.Redis(host="127.0.0.1", port=redis_server.port)
    write(r, f"goblet:lease:{key_of(url)}")
    before = commands(r)
    res = fleet.git(px, "c").run("clone", url, str(tmp_path / "c"), check=False, timeout=120)
    assert res.returncode == 0, (res.stderr, px.log_text()[-3000:])
    assert commands(r) - before < 200  # (a spinning wait sent thousands a second)
    log = px.log_text()
    assert "holds a value goblet did not write" in log
    assert "Traceback" not in log, log[-3000:]
    port = int(px.sets["goblet_metrics_port"])
    assert metric_sum(port, "goblet_fleet_lease_waits_total", result="foreign") >= 1


def test_a_digest_that_is_not_utf8_is_no_digest(
    fleet: Fleet, repos: Repos, upstream: UpstreamServer, redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    name = repos.create(commits=5)
    url = upstream.url(name)
    px = fleet.start()
    redis.Redis(host="127.0.0.1", port=redis_server.port).set(
        f"goblet:digest:{key_of(url)}", b"\xff")
    fleet.git(px, "c").clone(url, tmp_path / "c")
    fleet.git(px, "d").clone(url, tmp_path / "d")
    log = px.log_text()
    assert "Traceback" not in log and "UnicodeDecodeError" not in log, log[-3000:]
    assert "outcome=cache" in log.split("git fetch")[-1], log[-3000:]  # cached by the first


def test_a_silent_redis_is_asked_once_not_on_every_cold_clone(
    fleet: Fleet, repos: Repos, upstream: UpstreamServer, tmp_path: Path,
) -> None:
    with SilentServer() as silent:
        px = fleet.start(redis=silent.redis_url)
        for i in range(3):
            name = repos.create(commits=4)
            res = fleet.git(px, f"c{i}").run("clone", upstream.url(name),
                                             str(tmp_path / f"c{i}"), check=False, timeout=120)
            assert res.returncode == 0, (res.stderr, px.log_text()[-3000:])
        # one call per clone at most (a try once Redis was down for 10 s), never a retry
        # (redis-py's default tried each call four times, and every fill asked again)
        assert silent.connections <= 3, silent.connections
    assert "fleet redis unavailable, filling alone" in px.log_text()


def test_a_silent_store_does_not_hold_up_warm_clones_of_other_repos(
    repos: Repos, upstream: UpstreamServer, confdir: Path, aws_env: None, tmp_path: Path,
) -> None:
    warm = upstream.url(repos.create(commits=5))
    cold = [upstream.url(repos.create(commits=3)) for _ in range(8)]
    with SilentServer(answering=key_of(warm)) as store:
        px = GobletProxy(tmp_path / "px", hosts=[upstream.host],
                         upstream_ca=upstream.cert_path, confdir=confdir, sets={
                             "goblet_upstream_timeout": "20",
                             "goblet_metrics_port": str(free_port()),
                             "goblet_store": "s3://goblet-fleet/p",
                             "goblet_store_endpoint": store.endpoint})
        with px:
            git = GitClient(tmp_path / "home", ca_file=px.ca_cert, proxy=px.url)
            git.clone(warm, tmp_path / "w0")  # cold, then published (its keys answer)
            assert px.wait_for_log(f"published {warm} to the store", 30), px.log_text()[-3000:]
            git.clone(warm, tmp_path / "w1")
            with ThreadPoolExecutor(len(cold)) as pool:
                clones = [pool.submit(GitClient(tmp_path / f"home-{i}", ca_file=px.ca_cert,
                                                proxy=px.url).run,
                                      "clone", url, str(tmp_path / f"cold{i}"), check=False,
                                      timeout=300)
                          for i, url in enumerate(cold)]
                deadline = time.monotonic() + 60
                while store.unanswered < 4 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert store.unanswered >= 4  # cold clones now wait on the store
                res = git.run("clone", warm, str(tmp_path / "w2"), check=False, timeout=20)
                assert res.returncode == 0, (res.stderr, px.log_text()[-3000:])
                results = [c.result() for c in clones]
            assert [r.returncode for r in results] == [0] * len(cold), \
                [r.stderr for r in results]
            assert "fleet store unavailable, filling alone" in px.log_text()
            assert "Traceback" not in px.log_text(), px.log_text()[-3000:]
