"""Bundles in the shared store prove nothing: what a restore brings is checked against
the upstream by the fetch that follows it, whoever put the bundle there.

* a bundle with a branch and commit the upstream never had (planted by someone who can
  write the store): the branch is pruned, and the commit is never served by id;
* a bundle published while the upstream had ``topic/x``, restored after the upstream
  replaced it with ``topic`` (no attacker): the fill drops the clashing ref and the
  repo is cached, rather than every cold instance failing its fetch for good.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e import test_fleet_tier
from tests.e2e.conftest import Repos
from tests.e2e.test_fleet_tier import Fleet, published
from tests.support.fleetservers import S3Server
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e
# the fleet's fixtures (a real Redis and S3-compatible server, instances sharing them)
aws_env, s3 = test_fleet_tier.aws_env, test_fleet_tier.s3
redis_server, fleet = test_fleet_tier.redis_server, test_fleet_tier.fleet


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def replace_bundles(s3: S3Server, prefix: str, url: str, src: Path, refs: dict[str, str],
                    tmp: Path) -> None:
    """Make the repo's published bundle one holding ``refs`` (name → oid in ``src``),
    its manifest otherwise as goblet wrote it."""
    made = tmp / "made.git"
    subprocess.run(["git", "init", "-q", "--bare", str(made)], check=True)
    for name, oid in refs.items():
        git("fetch", "-q", str(src), f"{oid}:{name}", cwd=made)
    out = tmp / "made.bundle"
    git("bundle", "create", "-q", str(out), *refs, cwd=made)
    data = out.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    key = hashlib.sha256(url.encode()).hexdigest()
    client = s3.client()
    manifest_key = f"{prefix}/repos/{key}/manifest.json"
    manifest = json.loads(client.get_object(Bucket=s3.bucket, Key=manifest_key)["Body"].read())
    manifest["bundles"] = [{"name": f"{sha}.bundle", "size": len(data), "sha256": sha}]
    client.put_object(Bucket=s3.bucket, Key=f"{prefix}/repos/{key}/{sha}.bundle", Body=data)
    client.put_object(Bucket=s3.bucket, Key=manifest_key, Body=json.dumps(manifest).encode())


def test_a_planted_branch_and_commit_are_never_served(
    fleet: Fleet, repos: Repos, upstream: UpstreamServer, s3: S3Server, tmp_path: Path,
) -> None:
    name = repos.create(commits=4)
    url = upstream.url(name)
    first = fleet.start()
    fleet.git(first, "first").clone(url, tmp_path / "first")
    published(first, url)
    src = tmp_path / "src"
    subprocess.run(["git", "clone", "-q", "--bare", str(repos.path(name)), str(src)],
                   check=True)
    tip = git("rev-parse", "refs/heads/main", cwd=src)
    planted = git("commit-tree", "-p", tip, "-m", "planted", f"{tip}^{{tree}}", cwd=src)
    replace_bundles(s3, fleet.prefix, url, src,
                    {"refs/heads/main": tip, "refs/heads/planted": planted}, tmp_path)
    second = fleet.start()
    client = fleet.git(second, "b")
    client.clone(url, tmp_path / "b")
    assert f"restored {url} from the store" in second.log_text()
    got = client.run("fetch", "origin", planted, cwd=tmp_path / "b", check=False)
    assert got.returncode != 0, got.stderr
    assert "planted" not in client.run("ls-remote", "origin", cwd=tmp_path / "b").stdout


def test_a_bundle_whose_branch_became_a_directory_still_lets_the_repo_be_cached(
    fleet: Fleet, repos: Repos, upstream: UpstreamServer, tmp_path: Path,
) -> None:
    name = repos.create(commits=4, branches=("main", "topic/x"))
    url = upstream.url(name)
    first = fleet.start()
    fleet.git(first, "first").clone(url, tmp_path / "first")
    published(first, url)
    first.stop()
    up = repos.path(name)
    git("update-ref", "-d", "refs/heads/topic/x", cwd=up)
    git("update-ref", "refs/heads/topic", "refs/heads/main", cwd=up)
    second = fleet.start()
    fleet.git(second, "a").clone(url, tmp_path / "a")
    assert f"restored {url} from the store" in second.log_text()
    fleet.git(second, "b").clone(url, tmp_path / "b")
    assert "outcome=cache" in second.log_text().split("git fetch")[-1], \
        second.log_text()[-3000:]
    assert "refs/heads/topic" in fleet.git(second, "b").run(
        "ls-remote", "origin", cwd=tmp_path / "b").stdout
