"""The ``goblet cache`` admin CLI against a cache a real mitmdump filled and still serves.

Every command is run as a separate process (``python -m goblet.cli``, what the
``goblet`` console script runs) while the proxy keeps serving the same cache
dir: JSON output is parsed, exit statuses are 0 ok / 1 a repo failed / 2 usage
error, errors are one stderr line without a traceback. The proxy runs with
``goblet_maintenance=off`` so no repack rewrites the pack a test corrupts.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Repos, count
from tests.support.gitclient import GitClient, with_userinfo
from tests.support.proxy import REPO_ROOT, GobletProxy
from tests.support.repos import list_refs
from tests.support.upstream_client import UpstreamServer

# The first clone of a repo fills the cache and is then served from it, as these tests
# count (a cold clone streamed from the upstream is tests/e2e/test_cold_clone.py's).
PROXY_SETS = {"goblet_cold_clones": "fill", "goblet_maintenance": "off"}

ALICE = "Authorization: Basic " + base64.b64encode(b"alice:alice-pw").decode()


def goblet(cache_dir: Path, *args: str, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``goblet cache ARGS --cache-dir CACHE_DIR`` in a clean environment."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
            "HOME": str(cache_dir.parent), "PYTHONPATH": str(REPO_ROOT / "addon")}
    return subprocess.run(
        [sys.executable, "-m", "goblet.cli", "cache", *args, "--cache-dir", str(cache_dir)],
        env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, check=False, cwd=cache_dir.parent,
    )


def ok_json(res: subprocess.CompletedProcess[str], status: int = 0) -> Any:
    assert res.returncode == status, (res.returncode, res.stdout, res.stderr)
    return json.loads(res.stdout)


def one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("goblet: "), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    return lines[0]


@pytest.fixture(scope="module")
def names(repos: Repos) -> dict[str, str]:
    return {
        "small": repos.create(commits=4),
        "big": repos.create(commits=6, blob_size=150_000),
        "private": repos.create(public=False, readers=("alice",)),
    }


@pytest.fixture
def cached(names: dict[str, str], git: GitClient, upstream: UpstreamServer,
           proxy: GobletProxy, tmp_path: Path) -> dict[str, str]:
    """The three repos, cached by clones through the proxy; name -> URL."""
    listed = {r["url"] for r in ok_json(goblet(proxy.cache_dir, "ls", "--json"))}
    urls = {}
    for role, name in names.items():
        url = upstream.url(name)
        urls[role] = url
        if url not in listed:
            src = with_userinfo(url, "alice", "alice-pw") if role == "private" else url
            git.clone(src, tmp_path / f"populate-{role}")
    return urls


def test_ls_lists_every_repo(cached: dict[str, str], proxy: GobletProxy,
                             upstream: UpstreamServer, names: dict[str, str]) -> None:
    rows = {r["url"]: r for r in ok_json(goblet(proxy.cache_dir, "ls", "--json"))}
    assert set(rows) == set(cached.values())
    for role, url in cached.items():
        row = rows[url]
        assert row["partition"] == "shared" and len(row["key"]) == 64
        assert Path(row["path"]) == proxy.cache_dir / "repos" / f"{row['key']}.git"
        assert row["bytes"] > 0 and row["head"] == "refs/heads/main"
        assert row["refs"] == len([r for r in list_refs(upstream.root / names[role])
                                   if r.startswith(("refs/heads/", "refs/tags/"))])
        assert 0 <= row["idle_seconds"] < 600 and 0 <= row["refs_age_seconds"] < 600
        assert row["last_access"] >= row["filled_at"] - 1
    assert rows[cached["big"]]["bytes"] > rows[cached["small"]]["bytes"] + 1_000_000
    text = goblet(proxy.cache_dir, "ls")
    assert text.returncode == 0 and text.stderr == ""
    header, *lines = text.stdout.splitlines()
    assert header.split() == ["URL", "PARTITION", "SIZE", "LAST", "USE", "REFS", "AGE", "KEY"]
    assert all(any(line.startswith(url) for line in lines) for url in cached.values())
    assert lines[-1].startswith("3 repo(s), ")


def test_stats_adds_up(cached: dict[str, str], proxy: GobletProxy) -> None:
    stats = ok_json(goblet(proxy.cache_dir, "stats", "--json"))
    rows = ok_json(goblet(proxy.cache_dir, "ls", "--json"))
    assert stats["repos"] == len(rows) == 3
    assert stats["repos_bytes"] == sum(r["bytes"] for r in rows)
    assert stats["budget_bytes"] == stats["repos_bytes"] + stats["pack_cache_bytes"] \
        + stats["lfs_bytes"]
    assert stats["total_bytes"] >= stats["budget_bytes"] + stats["trash_bytes"]
    assert stats["free_bytes"] > 0 and stats["cache_dir"] == str(proxy.cache_dir)
    for field in ("pack_cache_entries", "trash_entries", "quarantine_entries", "tmp_entries"):
        assert isinstance(stats[field], int) and stats[field] >= 0
    text = goblet(proxy.cache_dir, "stats")
    assert text.returncode == 0
    assert [line.split()[0] for line in text.stdout.splitlines()] == [
        "cache", "repos", "pack", "LFS", "budget", "whole", "free", "trash", "quarantine",
        "temporary"]


def test_verify_finds_a_corrupt_repo_and_quarantine_moves_it(
    cached: dict[str, str], proxy: GobletProxy, git: GitClient, tmp_path: Path
) -> None:
    ok = ok_json(goblet(proxy.cache_dir, "verify", "--json"))
    assert {r["url"] for r in ok} == set(cached.values()) and all(r["ok"] for r in ok)
    rows = {r["url"]: r for r in ok_json(goblet(proxy.cache_dir, "ls", "--json"))}
    bad = rows[cached["big"]]
    packs = sorted((Path(bad["path"]) / "objects" / "pack").glob("*.pack"),
                   key=lambda p: p.stat().st_size)
    with packs[-1].open("r+b") as f:
        f.truncate(packs[-1].stat().st_size // 2)

    res = goblet(proxy.cache_dir, "verify", "--json")
    results = {r["url"]: r for r in ok_json(res, status=1)}
    assert results[cached["big"]]["ok"] is False and results[cached["big"]]["error"]
    assert results[cached["big"]]["quarantined"] is False
    assert all(results[u]["ok"] for u in (cached["small"], cached["private"]))
    human = goblet(proxy.cache_dir, "verify", cached["big"])
    assert human.returncode == 1 and human.stdout.startswith(f"FAILED  {cached['big']}: ")
    assert goblet(proxy.cache_dir, "verify", cached["small"]).returncode == 0

    res = goblet(proxy.cache_dir, "verify", bad["key"][:10], "--quarantine", "--json")
    [moved] = ok_json(res, status=1)
    assert moved["url"] == cached["big"] and moved["quarantined"] is True
    assert not Path(bad["path"]).exists()
    assert [p.name.split(".")[0] for p in (proxy.cache_dir / "quarantine").iterdir()] == [
        bad["key"]]
    assert all(r["ok"] for r in ok_json(goblet(proxy.cache_dir, "verify", "--json")))
    # The proxy fills it again on the next request; the clone is whole.
    git.clone(cached["big"], tmp_path / "after")
    git.fsck(tmp_path / "after")


def test_evict_named_repos(cached: dict[str, str], proxy: GobletProxy, git: GitClient,
                           tmp_path: Path) -> None:
    res = goblet(proxy.cache_dir, "evict", cached["small"], "--json")
    out = ok_json(res)
    assert [e["url"] for e in out["evicted"]] == [cached["small"]] and out["failed"] == []
    assert out["evicted"][0]["bytes"] > 0
    left = {r["url"] for r in ok_json(goblet(proxy.cache_dir, "ls", "--json"))}
    assert left == {cached["big"], cached["private"]}
    assert any(p.name.startswith(out["evicted"][0]["key"])
               for p in (proxy.cache_dir / "trash").iterdir())  # drained later
    key = next(r["key"] for r in ok_json(goblet(proxy.cache_dir, "ls", "--json"))
               if r["url"] == cached["private"])
    human = goblet(proxy.cache_dir, "evict", key[:8])
    assert human.returncode == 0 and human.stdout.startswith(f"evicted {cached['private']} (")
    missing = goblet(proxy.cache_dir, "evict", "https://nowhere.example/x.git")
    assert missing.returncode == 1
    assert "no cached repo matches" in one_error_line(missing)
    # The proxy keeps serving: evicted repos are filled again.
    git.clone(cached["small"], tmp_path / "again")
    assert cached["small"] in {r["url"] for r in ok_json(goblet(proxy.cache_dir, "ls", "--json"))}


def test_evict_lru_to_zero_empties_the_budget(cached: dict[str, str], proxy: GobletProxy,
                                              git: GitClient, tmp_path: Path) -> None:
    git.clone(cached["small"], tmp_path / "twice")  # a second identical clone stores its answer
    out = ok_json(goblet(proxy.cache_dir, "evict", "--lru-to", "0", "--json"))
    assert sorted(e["url"] for e in out["evicted"]) == sorted(cached.values())
    assert out["failed"] == [] and out["bytes_after"] == 0
    assert out["pack_cache_answers_removed"] >= 1  # the budget counts stored answers too
    assert ok_json(goblet(proxy.cache_dir, "ls", "--json")) == []
    stats = ok_json(goblet(proxy.cache_dir, "stats", "--json"))
    assert stats["budget_bytes"] == 0 and stats["repos"] == 0
    assert stats["trash_entries"] >= 3
    nothing = ok_json(goblet(proxy.cache_dir, "evict", "--lru-to", "10GiB", "--json"))
    assert nothing["evicted"] == [] and nothing["failed"] == []
    git.clone(cached["small"], tmp_path / "refilled")
    git.fsck(tmp_path / "refilled")


def test_warm_json_fills_a_repo_the_proxy_then_serves(
    repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, git: GitClient, tmp_path: Path
) -> None:
    name = repos.create(commits=5)
    url = upstream.url(name)
    res = goblet(proxy.cache_dir, "warm", url, "--upstream-ca", str(upstream.cert_path),
                 "--json")
    [line] = res.stdout.splitlines()
    result = json.loads(line)
    assert res.returncode == 0, res.stderr
    assert result["ok"] is True and result["url"] == url and result["created"] is True
    assert result["refs"] == 4 and result["objects"] > 0 and result["bytes"] > 0
    assert result["error"] is None and result["seconds"] > 0
    [row] = [r for r in ok_json(goblet(proxy.cache_dir, "ls", "--json")) if r["url"] == url]
    assert row["key"] == result["key"] and row["head"] == "refs/heads/main"
    upstream.reset_stats()
    git.clone(url, tmp_path / "served")
    assert count(upstream.stats(), "fetch", name) == 0  # served from what warm filled
    assert git.refs(tmp_path / "served")["refs/remotes/origin/main"] == \
        list_refs(repos.path(name))["refs/heads/main"]


def test_warm_shows_progress_and_a_summary(repos: Repos, upstream: UpstreamServer,
                                           proxy: GobletProxy) -> None:
    name = repos.create(commits=8, blob_size=300_000)
    res = goblet(proxy.cache_dir, "warm", upstream.url(name), "--upstream-ca",
                 str(upstream.cert_path))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"[1/1] {upstream.url(name)}"
    receiving = [ln for ln in lines if ln.startswith("[1/1]  receiving")]
    assert receiving, res.stdout
    final = re.fullmatch(r"\[1/1\]  receiving 100% (\d+)/\1 objects, ([\d.]+) MiB \| .*, done",
                         receiving[-1])
    assert final is not None and float(final[2]) > 5, receiving[-1]
    assert any(ln.startswith(f"[1/1] ok {upstream.url(name)}: created, 4 refs, "
                             f"{final[1]} objects received, {final[2]} MiB in ") for ln in lines)
    assert lines[-1] == "warmed 1 of 1 repo(s)"


def test_warm_private_repo_needs_the_credential(
    repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name = repos.create(public=False, readers=("alice",))
    url = upstream.url(name)
    ca = ("--upstream-ca", str(upstream.cert_path))
    denied = goblet(proxy.cache_dir, "warm", url, *ca, "--json")
    assert denied.returncode == 1
    error = json.loads(denied.stdout)["error"]
    assert error in ("upstream answered 401", "upstream asked for credentials")
    assert error in one_error_line(denied)
    assert url not in {r["url"] for r in ok_json(goblet(proxy.cache_dir, "ls", "--json"))}
    by_env = goblet(proxy.cache_dir, "warm", url, *ca, "--json",
                    env={"GOBLET_WARM_HEADER": ALICE})
    assert json.loads(by_env.stdout)["ok"] is True, by_env.stderr
    creds = tmp_path / "creds"
    creds.write_text(f"# warming identity\n{ALICE}\n")
    by_file = goblet(proxy.cache_dir, "warm", url, *ca, "--credentials-file", str(creds))
    assert by_file.returncode == 0 and "[1/1] ok " in by_file.stdout
    for res in (denied, by_env, by_file):
        assert "alice-pw" not in res.stdout + res.stderr
        assert ALICE.split()[-1] not in res.stdout + res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "required"),
        (("evict",), "evict needs REPO... or --lru-to SIZE"),
        (("evict", "x", "--lru-to", "1GiB"), "evict needs REPO... or --lru-to SIZE"),
        (("evict", "--lru-to", "lots"), "must be a size"),
        (("verify", "--wait", "soon"), "must be a duration"),
        (("frobnicate",), "invalid choice"),
        (("warm",), "required"),
        (("warm", "http://127.0.0.1:1/r.git"), "not an https URL"),
        (("warm", "https://alice:s3cr3t@127.0.0.1:1/r.git"), "credentials do not belong"),
        (("warm", "https://127.0.0.1:1/r.git?token=s3cr3t"), "no query or fragment"),
        (("warm", "https://127.0.0.1:1/a/../r.git"), "r.git"),
        (("warm", "https://127.0.0.1:1/r.git", "--upstream-ca", "/nonexistent.pem"),
         "no such file"),
        (("warm", "https://127.0.0.1:1/r.git", "--credentials-file", "/nonexistent"),
         "cannot read --credentials-file"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: tuple[str, ...], message: str,
                                           tmp_path: Path, proxy: GobletProxy) -> None:
    before = sorted(p.name for p in proxy.cache_dir.iterdir())
    res = goblet(proxy.cache_dir, *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert message in one_error_line(res)
    assert "s3cr3t" not in res.stderr
    assert sorted(p.name for p in proxy.cache_dir.iterdir()) == before


def test_a_directory_that_is_no_cache_is_refused(tmp_path: Path) -> None:
    (tmp_path / "trash").mkdir()
    (tmp_path / "trash" / "precious").write_text("not goblet's")
    for args in (("ls",), ("stats",), ("evict", "--lru-to", "0"), ("verify",)):
        res = goblet(tmp_path, *args)
        assert res.returncode == 2 and "not a goblet cache directory" in one_error_line(res)
    assert (tmp_path / "trash" / "precious").exists()
    fresh = tmp_path / "new-cache"
    assert ok_json(goblet(fresh, "warm", "https://127.0.0.1:1/r", "--json", "--timeout", "2"),
                   status=1)["ok"] is False
    assert (fresh / "repos").is_dir()  # warm may create a cache; the others never do
