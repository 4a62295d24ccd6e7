"""A bare load test loads the local demo upstream; another forge only when asked for."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest import loadtest, topology

ROOT = Path(__file__).resolve().parents[2]


def script_module(name: str) -> Any:
    """A loadtest/ script without a .py suffix, imported (its main() not run)."""
    path = ROOT / "loadtest" / name
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(path))
    spec = importlib.util.spec_from_loader(name.replace("-", "_"), loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_defaults_are_the_demo_upstreams_repos_through_run_locals_haproxy() -> None:
    cfg = loadtest.parse_config([])
    assert cfg.url == "http://127.0.0.1:8080"
    assert cfg.repos == loadtest.DEMO_REPOS
    assert all(r.startswith("127.0.0.1:8443/demo/repo-") for r in cfg.repos)
    demo = script_module("demo-upstream")
    assert loadtest.DEMO_UPSTREAM == topology.DEMO_UPSTREAM == f"127.0.0.1:{demo.DEFAULT_PORT}"
    assert topology.DEMO_CERT == demo.DEFAULT_DIR / "certs" / "upstream-cert.pem"
    run_local = script_module("run-local").build_parser().parse_args([])
    assert run_local.hosts == [topology.DEMO_UPSTREAM] and run_local.upstream_ca is None


@pytest.mark.parametrize("repo", ["github.com/git/git", "git.internal:8443/org/app.git",
                                  "10.0.0.8/org/app.git", "https://gitlab.com/a/b"])
def test_a_forge_elsewhere_needs_the_flag(repo: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        loadtest.parse_config(["--repos", "127.0.0.1:8443/demo/repo-0.git", repo])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "--allow-remote-upstream" in err and loadtest.repo_host(loadtest.parse_repo(repo)) in err
    cfg = loadtest.parse_config(["--repos", repo, "--allow-remote-upstream"])
    assert cfg.repos == (loadtest.parse_repo(repo),)
    warning = capsys.readouterr().err
    assert warning.startswith("loadtest: warning: loading ") and "reach it" in warning


@pytest.mark.parametrize("repo", ["127.0.0.1:9999/x.git", "localhost/x.git", "127.1.2.3/a/b"])
def test_this_machine_needs_no_flag(repo: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert loadtest.parse_config(["--repos", repo]).repos == (repo,)
    assert capsys.readouterr().err == ""


def test_the_script_refuses_before_sending_anything() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "loadtest" / "loadtest.py"), "--repos",
                          "github.com/git/git", "--url", "http://127.0.0.1:9"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2 and "github.com, not this machine" in res.stderr


def test_run_local_hands_its_processes_absolute_binaries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make fleet` passes --mitmdump .venv/bin/mitmdump; goblets start in their own dirs."""
    run_local = script_module("run-local")
    (tmp_path / "bin").mkdir()
    for name in ("mitmdump", "haproxy"):
        (tmp_path / "bin" / name).write_text("#!/bin/sh\n")
    monkeypatch.chdir(tmp_path)
    assert run_local.find_mitmdump("bin/mitmdump") == str(tmp_path / "bin" / "mitmdump")
    assert run_local.find_binary("haproxy", "bin/haproxy") == str(tmp_path / "bin" / "haproxy")
