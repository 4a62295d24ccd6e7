"""hardened_env: a git environment built from nothing, checked against the real git."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from goblet.auth.credentials import credential_from_headers
from goblet.cache.fill import header_config
from goblet.git.env import HARDENING, hardened_env

if TYPE_CHECKING:
    from tests.unit.conftest import GitWire

LEAKY = {
    "HTTPS_PROXY": "http://proxy.invalid:3128", "http_proxy": "http://proxy.invalid:3128",
    "ALL_PROXY": "socks5://proxy.invalid", "GIT_DIR": "/elsewhere", "GIT_SSH_COMMAND": "evil",
    "GIT_ASKPASS": "/usr/bin/evil-askpass", "SSH_AUTH_SOCK": "/tmp/agent",
    "GIT_CONFIG_PARAMETERS": "'credential.helper'='store'", "GIT_TRACE": "1",
    "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.askPass", "GIT_CONFIG_VALUE_0": "evil",
    "XDG_CONFIG_HOME": "/elsewhere", "GIT_EXEC_PATH": "/elsewhere", "CURL_CA_BUNDLE": "/x",
    "SECRET_TOKEN": "s3ntinel",
}


def config_entries(env: dict[str, str]) -> list[tuple[str, str]]:
    count = int(env["GIT_CONFIG_COUNT"])
    return [(env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"]) for i in range(count)]


def test_environment_is_built_from_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in LEAKY.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATH", "/opt/git/bin:/usr/bin")
    env = hardened_env(home="/var/empty-home")
    assert env["PATH"] == "/opt/git/bin:/usr/bin"
    assert env["HOME"] == "/var/empty-home"
    for name in LEAKY:
        if name in ("GIT_ASKPASS", "GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_CONFIG_VALUE_0"):
            continue  # set by us, checked below
        assert name not in env, name
    assert env["GIT_ASKPASS"] == ""
    assert config_entries(env)[0] != ("core.askPass", "evil")
    assert "s3ntinel" not in repr(env)


def test_fixed_variables() -> None:
    env = hardened_env(home="/h")
    assert {k: env[k] for k in ("LANG", "LC_ALL", "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL",
                                "GIT_TERMINAL_PROMPT", "GIT_ASKPASS", "SSH_ASKPASS")} == {
        "LANG": "C", "LC_ALL": "C", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": "",
    }


def test_default_path_when_none_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATH", raising=False)
    assert hardened_env(home="/h")["PATH"] == "/usr/local/bin:/usr/bin:/bin"


@pytest.mark.parametrize(
    "config",
    [
        pytest.param((), id="no-config"),
        pytest.param((("http.lowSpeedLimit", "1000"),), id="one"),
        pytest.param(tuple((f"x.k{i}", str(i)) for i in range(12)), id="twelve"),
    ],
)
def test_config_count_and_order(config: tuple[tuple[str, str], ...]) -> None:
    env = hardened_env(home="/h", config=config)
    assert int(env["GIT_CONFIG_COUNT"]) == len(HARDENING) + len(config)
    assert config_entries(env) == [*HARDENING, *config]  # hardening first, callers after
    assert f"GIT_CONFIG_KEY_{len(HARDENING) + len(config)}" not in env  # no off-by-one entry


def test_extra_variables_are_added() -> None:
    env = hardened_env(home="/h", extra={"GIT_PROTOCOL": "version=2"})
    assert env["GIT_PROTOCOL"] == "version=2"
    assert "GIT_PROTOCOL" not in hardened_env(home="/h")


def test_secrets_travel_in_the_environment_only() -> None:
    cred = credential_from_headers([("Authorization", "Bearer s3ntinel")])
    env = hardened_env(home="/h", config=header_config("https://github.com/o/r", cred))
    assert ("http.https://github.com/.extraHeader", "authorization: Bearer s3ntinel") in \
        config_entries(env)


# ---------------------------------------------------------------------------- real git


def git_config(env: dict[str, str], *args: str, cwd: Path) -> str:
    res = subprocess.run(["git", "config", *args], env=env, cwd=cwd, capture_output=True,
                         check=False)
    return res.stdout.decode()


def test_real_git_sees_exactly_the_hardening(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[credential]\n\thelper = store\n")  # must be ignored
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'core.askpass'='evil'")
    env = hardened_env(home=str(home), config=[("http.lowSpeedTime", "60")])
    listed = git_config(env, "--list", "--show-scope", cwd=tmp_path).splitlines()
    expected = [f"command\t{k.lower()}={v}" for k, v in [*HARDENING, ("http.lowSpeedTime", "60")]]
    assert listed == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("protocol.allow", "never"),
        ("protocol.https.allow", "always"),
        ("http.followRedirects", "false"),
        ("transfer.credentialsInUrl", "die"),
        ("core.hooksPath", "/dev/null"),
    ],
)
def test_real_git_reads_each_hardening_value(tmp_path: Path, key: str, value: str) -> None:
    env = hardened_env(home=str(tmp_path))
    assert git_config(env, "--get", key, cwd=tmp_path).strip() == value


def test_real_git_refuses_non_https_transports(tmp_path: Path) -> None:
    env = hardened_env(home=str(tmp_path))
    for url in ("file:///tmp/x.git", "http://127.0.0.1:1/x.git", "ext::false"):
        res = subprocess.run(["git", "ls-remote", url], env=env, cwd=tmp_path,
                             capture_output=True, check=False)
        assert res.returncode != 0
        assert b"not allowed" in res.stderr, res.stderr


def test_real_git_sends_the_credential_only_to_its_origin(git_wire: GitWire,
                                                          tmp_path: Path) -> None:
    """header_config + hardened_env, end to end: git replays the header to the origin only."""
    cred = credential_from_headers([("Authorization", "Bearer origin-only"), ("Cookie", "c=1")])
    allow_http = [("protocol.http.allow", "always")]  # the recorder speaks plain HTTP
    url = git_wire.url("plain.git")
    env = hardened_env(home=str(tmp_path), config=[*allow_http, *header_config(url, cred)])
    got = git_wire.record("gitenv-same-origin", "ls-remote", url, env=env)
    for exchange in got:
        sent = dict((k.lower(), v) for k, v in exchange.headers)
        assert sent["authorization"] == "Bearer origin-only"
        assert sent["cookie"] == "c=1"

    other = "http://localhost:" + url.split(":")[2]  # same server, another origin
    env = hardened_env(home=str(tmp_path), config=[*allow_http, *header_config(url, cred)])
    got = git_wire.record("gitenv-other-origin", "ls-remote", other, env=env)
    assert got
    for exchange in got:
        assert "authorization" not in {k.lower() for k, _ in exchange.headers}
