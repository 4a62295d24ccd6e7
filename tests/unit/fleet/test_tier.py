"""The tier's publish and restore with real git, a real S3-compatible server (moto) and a
real redis-server: bases, increments, compaction, checksums, fencing, the budget."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from goblet.cache.locks import RepoLocks
from goblet.cache.recovery import sweep_abandoned
from goblet.cache.store import CacheRepo, RepoStore
from goblet.fleet import bundles
from goblet.fleet.lease import Coordinator
from goblet.fleet.locations import StoreLocation, parse_redis
from goblet.fleet.manifest import MAX_INCREMENTS
from goblet.fleet.store import ObjectStore
from goblet.fleet.tier import FleetTier
from goblet.fleet.turns import Role, Turn
from goblet.git.runner import GitRunner
from goblet.observe.metrics import Metrics

from tests.support.fleetservers import RedisServer, S3Server
from tests.support.repos import add_commit, make_bare_repo
from tests.support.repos import git as bare_git

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
