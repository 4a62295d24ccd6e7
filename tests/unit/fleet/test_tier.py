"""The tier's publish and restore with real git, a real S3-compatible server (moto) and a
real redis-server: bases, increments, compaction, checksums, fencing, the budget."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from goblet.cache.locks import RepoLocks
from goblet.cache.recovery import sweep_abandoned
from goblet.cache.store import CacheRepo, RepoStore
from goblet.fleet import bundles, tier
from goblet.fleet.lease import Coordinator
from goblet.fleet.locations import StoreLocation, parse_redis
from goblet.fleet.manifest import MAX_INCREMENTS
from goblet.fleet.store import ObjectStore
from goblet.fleet.tier import FleetTier
from goblet.fleet.turns import Role, Turn
from goblet.git.runner import GitRunner
from goblet.observe.metrics import Metrics

from tests.support.fleetservers import AWS_ENV, RedisServer, S3Server
from tests.support.repos import add_commit, make_bare_repo
from tests.support.repos import git as bare_git
from tests.support.silent import SilentServer
from tests.support.slow_s3 import SlowS3

URL = "https://git.example/org/r.git"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


class World:
    def __init__(self, tmp: Path, s3: S3Server, prefix: str,
                 coordinator: Coordinator | None = None) -> None:
        self.source = tmp / "source.git"
        make_bare_repo(self.source, commits=6, branches=("main", "dev"), tags=("v1",))
        self.s3 = s3
        self.prefix = prefix
        self.coordinator = coordinator
        self.tiers: list[FleetTier] = []

    def instance(self, name: str, tmp: Path, max_bytes: int = 0) -> tuple[FleetTier, RepoStore]:
        git = GitRunner(home=tmp / name / "home")
        repos = RepoStore(tmp / name, git)
        repos.prepare()
        store = ObjectStore(StoreLocation(self.s3.bucket, self.prefix), self.s3.endpoint,
                            client=self.s3.client())
        tier = FleetTier(repos, RepoLocks(repos.lock_dir), Metrics(), store=store,
                         coordinator=self.coordinator, max_bytes=max_bytes)
        self.tiers.append(tier)
        return tier, repos

    def mirror(self, repos: RepoStore, repo: CacheRepo) -> None:
        """Bring the cache repo level with the source (as a fill would), state included."""
        if not repo.path.exists():
            asyncio.run(repos.init_bare(repo.path))
        bare_git("fetch", "-q", "--prune", str(self.source), "+refs/heads/*:refs/heads/*",
                 "+refs/tags/*:refs/tags/*", cwd=repo.path)
        refs, head = asyncio.run(repos.read_refs(repo.path))
        repos.write_state(repo.path, repo, refs, head)

    def publish(self, tier: FleetTier, repos: RepoStore, repo: CacheRepo) -> None:
        """Mirror the source into ``repo`` and publish it from ``tier``, alone."""
        self.mirror(repos, repo)
        asyncio.run(tier.publish(repo, Turn(Role.ALONE)))

    def manifest(self, repo: CacheRepo) -> dict[str, object]:
        raw = self.s3.client().get_object(
            Bucket=self.s3.bucket, Key=f"{self.prefix}/repos/{repo.key}/manifest.json")
        return json.loads(raw["Body"].read())  # type: ignore[no-any-return]


Instance = tuple[FleetTier, RepoStore]


def published(tmp: Path, s3: S3Server, prefix: str) -> tuple[World, CacheRepo, Instance, Instance]:
    """A world whose instance "a" has published URL's repo once, and an instance "b"."""
    world = World(tmp, s3, prefix)
    a, repos_a = world.instance("a", tmp)
    b, repos_b = world.instance("b", tmp)
    repo = repos_a.repo_for(URL)
    world.publish(a, repos_a, repo)
    return world, repo, (a, repos_a), (b, repos_b)


def refs_of(path: Path) -> dict[str, str]:
    out = bare_git("for-each-ref", "--format=%(objectname) %(refname)", "refs/heads",
                   "refs/tags", cwd=path)
    return {n: o for o, n in (line.split(" ", 1) for line in out.splitlines())}


async def restore_fresh(tier: FleetTier, repos: RepoStore, repo: CacheRepo) -> tuple[bool, Path]:
    target, claim = repos.claim_temp(repo)
    await repos.init_bare(target)
    ok = await tier.restore(repo, target)
    claim.release()
    return ok, target


def test_base_then_increments_then_compaction_restore_exactly(
    s3: S3Server, tmp_path: Path,
) -> None:
    world, repo, (a, repos_a), (b, repos_b) = published(tmp_path, s3, "incr")
    assert len(world.manifest(repo)["bundles"]) == 1  # type: ignore[arg-type]
    for i in range(MAX_INCREMENTS):
        add_commit(world.source, message=f"change {i}",
                   files={f"f{i}.bin": bytes(range(256)) * 200})
        world.publish(a, repos_a, repo)
        assert len(world.manifest(repo)["bundles"]) == i + 2  # type: ignore[arg-type]
    ok, target = asyncio.run(restore_fresh(b, repos_b, repos_b.repo_for(URL)))
    assert ok
    assert refs_of(target) == refs_of(world.source)
    bare_git("fsck", "--no-dangling", cwd=target)
    # unchanged refs: nothing published
    asyncio.run(a.publish(repo, Turn(Role.ALONE)))
    assert a.metrics.store_publishes.labels("skipped")._value.get() == 1
    # one more: over MAX_INCREMENTS, a new base; old bundles deleted
    add_commit(world.source, message="compact")
    world.publish(a, repos_a, repo)
    names = [b["name"] for b in world.manifest(repo)["bundles"]]  # type: ignore[attr-defined]
    assert len(names) == 1
    stored = [k for k in s3.objects() if k.startswith(f"incr/repos/{repo.key}/")]
    assert sorted(stored) == sorted([f"incr/repos/{repo.key}/manifest.json",
                                     f"incr/repos/{repo.key}/{names[0]}"])
    ok, target = asyncio.run(restore_fresh(b, repos_b, repos_b.repo_for(URL)))
    assert ok and refs_of(target) == refs_of(world.source)


def test_a_tampered_bundle_is_refused_and_leaves_an_empty_repo(
    s3: S3Server, tmp_path: Path,
) -> None:
    world, repo, _, (b, repos_b) = published(tmp_path, s3, "tamper")
    manifest = world.manifest(repo)
    [entry] = manifest["bundles"]  # type: ignore[misc]
    key = f"tamper/repos/{repo.key}/{entry['name']}"
    # same size, same checksum in the manifest (an attacker who can write both): git refuses
    data = bytearray(s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read())
    data[-30] ^= 0x01
    entry["sha256"] = hashlib.sha256(data).hexdigest()
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=bytes(data))
    s3.client().put_object(Bucket=s3.bucket, Key=f"tamper/repos/{repo.key}/manifest.json",
                           Body=json.dumps(manifest).encode())
    ok, target = asyncio.run(restore_fresh(b, repos_b, repos_b.repo_for(URL)))
    assert not ok
    assert refs_of(target) == {}
    assert not list((target / "objects" / "pack").glob("*.pack"))
    assert b.metrics.store_restores.labels("error")._value.get() == 1
    assert not list(repos_b.tmp_dir.glob("*.bundle")) and not list(repos_b.tmp_dir.glob("*.lock"))


def test_a_fenced_out_leader_does_not_publish(s3: S3Server, tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        location = parse_redis(server.url)
        assert location is not None
        coordinator = Coordinator(location, lease_seconds=1)
        world = World(tmp_path, s3, "fence", coordinator)
        a, repos_a = world.instance("a", tmp_path)
        repo = repos_a.repo_for(URL)
        world.mirror(repos_a, repo)

        async def main() -> None:
            old = await coordinator.acquire(repo.key)
            assert old is not None
            await asyncio.sleep(1.3)
            new = await coordinator.acquire(repo.key)  # another instance took over
            assert new is not None
            await a.publish(repo, Turn(Role.LEADER, old))
            await coordinator.close()
        asyncio.run(main())
        assert [k for k in s3.objects() if k.startswith("fence/")] and \
            not [k for k in s3.objects() if k.startswith("fence/") and k.endswith(".json")]


def test_the_store_budget_removes_the_least_recently_published(
    s3: S3Server, tmp_path: Path,
) -> None:
    world = World(tmp_path, s3, "budget")
    a, repos_a = world.instance("a", tmp_path, max_bytes=1)
    first, second = repos_a.repo_for(URL), repos_a.repo_for(URL + "2")
    world.publish(a, repos_a, first)
    world.publish(a, repos_a, second)
    keys = [k for k in s3.objects() if k.startswith("budget/")]
    assert keys and all(f"/{second.key}/" in k for k in keys)


def test_nothing_published_names_the_url_partition_or_a_tenant(
    s3: S3Server, tmp_path: Path,
) -> None:
    world = World(tmp_path, s3, "names")
    a, repos_a = world.instance("a", tmp_path)
    repo = repos_a.repo_for(URL)
    world.publish(a, repos_a, repo)
    tenant = repos_a.repo_for(URL, "tenant:abc123")
    assert not a.publishable(tenant)  # only `shared` unless opted in
    for key, value in s3.objects().items():
        if key.startswith("names/"):
            assert b"git.example" not in value and "git.example" not in key


def test_bundles_in_tmp_are_claimed_so_a_sweep_leaves_them(s3: S3Server, tmp_path: Path) -> None:
    world = World(tmp_path, s3, "sweep")
    _, repos_a = world.instance("a", tmp_path)
    repo = repos_a.repo_for(URL)
    with bundles.bundle_file(repos_a.tmp_dir, repo.key) as path:
        path.write_bytes(b"in use")
        assert sweep_abandoned(repos_a.tmp_dir) == []
        assert path.read_bytes() == b"in use"
    assert list(repos_a.tmp_dir.iterdir()) == []


def slow_tier(tmp: Path, slow: SlowS3 | SilentServer, stall: float
              ) -> tuple[FleetTier, RepoStore]:
    """An instance whose store is ``slow`` (the ObjectStore's own client and timeouts)."""
    git = GitRunner(home=tmp / "home")
    repos = RepoStore(tmp / "slow", git)
    repos.prepare()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in AWS_ENV.items():
            mp.setenv(k, v)
        store = ObjectStore(StoreLocation("goblet-fleet", "p"), slow.endpoint)
    tier = FleetTier(repos, RepoLocks(repos.lock_dir), Metrics(), store=store,
                     coordinator=None, stall_timeout=stall)
    return tier, repos


@pytest.mark.parametrize(("chunk", "every", "deadline"), [
    (1, 0.5, 60.0),  # a trickle under the minimum rate: abandoned after ``stall`` seconds
    (4096, 0.5, 3.0),  # fast enough (8 KB/s) but longer than the fill's deadline
])
def test_a_slow_store_ends_the_restore_and_counts_as_failing(
    tmp_path: Path, chunk: int, every: float, deadline: float,
) -> None:
    with SlowS3(size=1024 * 1024, chunk=chunk, every=every) as slow:
        tier, repos = slow_tier(tmp_path, slow, stall=2.0)
        repo = repos.repo_for(URL)

        async def main() -> tuple[bool, Path]:
            target, claim = repos.claim_temp(repo)
            await repos.init_bare(target)
            ok = await tier.restore(repo, target, deadline=time.monotonic() + deadline)
            claim.release()
            return ok, target

        started = time.monotonic()
        ok, target = asyncio.run(main())
        took = time.monotonic() - started
        assert slow.requests and any(".bundle" in r for r in slow.requests)
    assert not ok
    assert took < 10, took
    assert tier.metrics.fleet_degraded.labels("store")._value.get() == 1
    assert tier.metrics.store_restores.labels("error")._value.get() == 1
    assert refs_of(target) == {}


def test_a_repo_the_store_lost_is_forgotten_in_redis_and_published_again(
    s3: S3Server, tmp_path: Path,
) -> None:
    with RedisServer(tmp_path / "redis") as server:
        location = parse_redis(server.url)
        assert location is not None
        coordinator = Coordinator(location, lease_seconds=30)
        world = World(tmp_path, s3, "lost", coordinator)
        a, repos_a = world.instance("a", tmp_path, max_bytes=1)
        b, repos_b = world.instance("b", tmp_path)
        first, second = repos_a.repo_for(URL), repos_a.repo_for(URL + "2")
        world.mirror(repos_a, first)
        world.mirror(repos_a, second)

        async def lead(repo: CacheRepo) -> None:
            token = await coordinator.acquire(repo.key)
            assert token is not None
            await a.publish(repo, Turn(Role.LEADER, token))
            await coordinator.release(repo.key, token)

        async def main() -> None:
            await lead(first)
            assert await coordinator.digest(first.key)
            await lead(second)  # over the budget: the store removes ``first``...
            assert not [k for k in s3.objects() if k.startswith(f"lost/repos/{first.key}/")]
            assert await coordinator.digest(first.key) is None  # ...and Redis forgets it
            assert await coordinator.digest(second.key)

            # Lost behind goblet's back (a lifecycle rule, an operator): Redis still says
            # published. A waiter does not take that for a restorable repo...
            for key in [k for k in s3.objects() if k.startswith(f"lost/repos/{second.key}/")]:
                s3.client().delete_object(Bucket=s3.bucket, Key=key)
            holder = await coordinator.acquire(second.key)
            assert holder is not None
            waiting = asyncio.ensure_future(b._take(second, wait=True))
            await asyncio.sleep(0.6)
            assert not waiting.done()  # waits for the leader, not a follower at once
            assert await coordinator.digest(second.key) is None
            await coordinator.release(second.key, holder)
            taken = await asyncio.wait_for(waiting, 5)
            assert taken.role is Role.LEADER
            assert taken._renewer is not None
            taken._renewer.cancel()
            # ...and its publish, with unchanged refs, writes the repo again.
            await a.publish(second, taken)
            await coordinator.release(second.key, taken.token)
            assert world.manifest(second)["bundles"]
            ok, _ = await restore_fresh(b, repos_b, repos_b.repo_for(URL + "2"))
            assert ok
            # a restore finding nothing forgets the digest too
            await coordinator.client.set(f"goblet:digest:{first.key}", "d" * 64)
            ok, _ = await restore_fresh(b, repos_b, repos_b.repo_for(URL))
            assert not ok
            assert await coordinator.digest(first.key) is None
            await coordinator.close()
        asyncio.run(main())


def test_a_manifest_whose_bundles_are_gone_is_published_again(
    s3: S3Server, tmp_path: Path,
) -> None:
    _, repo, (a, _), (b, repos_b) = published(tmp_path, s3, "gone")
    for key in [k for k in s3.objects() if k.startswith(f"gone/repos/{repo.key}/")
                and k.endswith(".bundle")]:
        s3.client().delete_object(Bucket=s3.bucket, Key=key)
    asyncio.run(a.publish(repo, Turn(Role.ALONE)))  # refs unchanged: not skipped
    assert a.metrics.store_publishes.labels("base")._value.get() == 2
    ok, _ = asyncio.run(restore_fresh(b, repos_b, repos_b.repo_for(URL)))
    assert ok


@pytest.mark.parametrize("limit", ["budget", "free"])
def test_a_manifest_naming_more_than_the_cache_has_room_for_is_not_downloaded(
    s3: S3Server, tmp_path: Path, limit: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    world, repo, _, (b, repos_b) = published(tmp_path, s3, f"room-{limit}")
    size = sum(e["size"] for e in world.manifest(repo)["bundles"])  # type: ignore[attr-defined]
    if limit == "budget":
        b.cache_max_bytes = size - 1
    else:  # (the disk's free space as the tier reads it, held still: other tests write)
        free = shutil.disk_usage(repos_b.root).free
        monkeypatch.setattr(tier, "free_bytes", lambda path: free)
        b.min_free_bytes = free - size
    ok, target = asyncio.run(restore_fresh(b, repos_b, repos_b.repo_for(URL)))
    assert not ok
    assert refs_of(target) == {}
    assert b.metrics.store_restores.labels("error")._value.get() == 1
    assert b.metrics.store_bytes.labels("down")._value.get() == 0
    b.cache_max_bytes, b.min_free_bytes = size * 3, 0  # room enough: restored
    ok, _ = asyncio.run(restore_fresh(b, repos_b, repos_b.repo_for(URL)))
    assert ok


def test_a_public_instance_neither_restores_nor_publishes(s3: S3Server, tmp_path: Path) -> None:
    world, _, _, (b, repos_b) = published(tmp_path, s3, "public")
    b.public = True  # goblet_isolation=public
    before = sorted(s3.objects())
    ok, target = asyncio.run(restore_fresh(b, repos_b, repos_b.repo_for(URL)))
    assert not ok and refs_of(target) == {}
    assert not asyncio.run(b.can_restore(repos_b.repo_for(URL)))
    assert sum(b.metrics.store_restores.labels(r)._value.get()
               for r in ("hit", "miss", "error")) == 0
    other = repos_b.repo_for(URL + "-public")
    world.publish(b, repos_b, other)
    assert sorted(s3.objects()) == before
    assert asyncio.run(b._take(other, wait=True)).role is Role.ALONE


def test_without_a_token_a_fenced_manifest_is_never_replaced(
    s3: S3Server, tmp_path: Path,
) -> None:
    """Redis down (ALONE, no token): an instance with older refs leaves the manifest a
    lease holder wrote, and its bundles."""
    world = World(tmp_path, s3, "alone")
    new, new_repos = world.instance("new", tmp_path)
    old, old_repos = world.instance("old", tmp_path)
    repo_old = old_repos.repo_for(URL)
    world.mirror(old_repos, repo_old)  # cut off from Redis, with older refs
    add_commit(world.source, message="newer")
    repo_new = new_repos.repo_for(URL)
    world.mirror(new_repos, repo_new)
    asyncio.run(new.publish(repo_new, Turn(Role.LEADER, 7)))
    before = world.manifest(repo_new)
    asyncio.run(old.publish(repo_old, Turn(Role.ALONE)))
    assert world.manifest(repo_new) == before
    assert old.metrics.store_publishes.labels("skipped")._value.get() == 1
    names = {b["name"] for b in before["bundles"]}  # type: ignore[attr-defined]
    assert names <= {k.rsplit("/", 1)[1] for k in s3.objects() if k.startswith("alone/")}


def test_a_manifest_replaced_during_a_publish_is_not_overwritten(
    s3: S3Server, tmp_path: Path,
) -> None:
    world, repo, (a, repos_a), _ = published(tmp_path, s3, "race")
    add_commit(world.source, message="moved")
    world.mirror(repos_a, repo)
    key = f"race/repos/{repo.key}/manifest.json"
    theirs = {**world.manifest(repo), "created_at": 2.0}
    assert a.store is not None
    upload = a.store.upload

    def racing_upload(repo_key: str, name: str, path: Path) -> None:
        upload(repo_key, name, path)  # meanwhile another writer replaces the manifest
        s3.client().put_object(Bucket=s3.bucket, Key=key, Body=json.dumps(theirs).encode())

    a.store.upload = racing_upload  # type: ignore[method-assign]
    asyncio.run(a.publish(repo, Turn(Role.ALONE)))
    assert world.manifest(repo) == theirs
    assert a.metrics.store_publishes.labels("skipped")._value.get() == 1
    names = {b["name"] for b in theirs["bundles"]}  # type: ignore[attr-defined]
    assert names <= {k.rsplit("/", 1)[1] for k in s3.objects() if k.startswith("race/")}


def test_a_silent_store_holds_only_the_tiers_own_threads_and_is_then_left_alone(
    tmp_path: Path,
) -> None:
    """A store that accepts connections and never answers: ``can_restore`` of many cold
    repos at once returns (False) instead of hanging, never holds more than the tier's
    own threads, leaves asyncio's default executor free, and once the store is marked
    down neither ``can_restore`` nor ``restore`` asks it until a probe is due."""
    with SilentServer() as silent:
        tier, repos = slow_tier(tmp_path, silent, stall=20.0)
        cold = [repos.repo_for(f"{URL}{i}") for i in range(3 * tier.threads.size)]

        async def main() -> None:
            checks = [asyncio.ensure_future(tier.can_restore(r)) for r in cold]
            while silent.unanswered < tier.threads.size and not all(c.done() for c in checks):
                await asyncio.sleep(0.05)
            # the serving path's executor is not the store's
            assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 10) == "free"
            assert await asyncio.wait_for(asyncio.gather(*checks), 60) == [False] * len(cold)
            assert tier.health.down == {"store"}
            asked = silent.unanswered
            assert asked <= tier.threads.size
            assert not await asyncio.wait_for(tier.can_restore(cold[0]), 10)
            target, claim = repos.claim_temp(cold[0])
            await repos.init_bare(target)
            assert not await asyncio.wait_for(tier.restore(cold[0], target), 10)
            claim.release()
            assert silent.unanswered == asked  # not asked again while down
            tier.threads.close()

        asyncio.run(main())
    assert tier.metrics.fleet_degraded.labels("store")._value.get() == len(cold) + 2
