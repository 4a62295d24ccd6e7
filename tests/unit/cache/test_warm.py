"""Warming's parsers (repo URLs, URL lists, header lines) and where its credential comes from."""

from __future__ import annotations

from pathlib import Path

import pytest
from goblet.cache.fill import Filler
from goblet.cache.locks import RepoLocks
from goblet.cache.store import RepoStore
from goblet.cache.warm import (
    ENV_HEADER,
    Warmer,
    parse_header_lines,
    parse_repo_url,
    read_credential,
    read_url_list,
)
from goblet.git.runner import GitRunner


@pytest.mark.parametrize(("url", "parsed"), [
    ("https://github.com/org/repo", ("github.com", 443, "/org/repo")),
    ("https://GitHub.com/org/repo.git/", ("github.com", 443, "/org/repo.git")),
    ("  https://git.internal:8443/a/b/c  ", ("git.internal", 8443, "/a/b/c")),
    ("https://127.0.0.1:4443/r.git", ("127.0.0.1", 4443, "/r.git")),
])
def test_parse_repo_url(url: str, parsed: tuple[str, int, str]) -> None:
    assert parse_repo_url(url) == parsed


@pytest.mark.parametrize("url", [
    "http://github.com/org/repo", "git@github.com:org/repo.git", "ssh://github.com/org/repo",
    "https://user:tok@github.com/org/repo", "https://tok@github.com/org/repo",
    "https://github.com/org/repo?private_token=x", "https://github.com/org/repo#frag",
    "https://github.com/a/../b", "https://github.com//b", "https:///nohost", "",
])
def test_parse_repo_url_refuses(url: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_repo_url(url)


@pytest.mark.parametrize("url", ["https://user:hunter2@github.com/org/repo",
                                 "https://github.com/org/repo?private_token=hunter2"])
def test_refusing_a_url_never_repeats_its_credential(url: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_repo_url(url)
    assert "hunter2" not in str(err.value)


def test_read_url_list() -> None:
    text = ("# warm these\n\nhttps://github.com/a/b\n   https://github.com/c/d   \n"
            "  # indented comment\nhttps://x.example/e.git\n")
    assert read_url_list(text) == ["https://github.com/a/b", "https://github.com/c/d",
                                   "https://x.example/e.git"]
    assert read_url_list("") == []


def test_parse_header_lines() -> None:
    cred = parse_header_lines(["Authorization: Bearer t0k:en", "  Private-Token:  abc  ",
                               "no colon here", ": empty name", "Empty-Value:   ",
                               "User-Agent: git/2.39"])
    assert cred.headers == (("authorization", "Bearer t0k:en"), ("private-token", "abc"))
    assert "t0k" not in repr(cred) and "abc" not in str(cred)
    assert parse_header_lines([]).anonymous


def test_read_credential_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_HEADER, "Authorization: Bearer from-env")
    creds = tmp_path / "creds"
    creds.write_text("# warming identity\nAuthorization: Bearer from-file\n")
    assert read_credential(creds).headers == (("authorization", "Bearer from-file"),)


def test_read_credential_from_the_environment_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_HEADER, "Private-Token: t0k\nUser-Agent: git/2.39")
    assert read_credential(None).headers == (("private-token", "t0k"),)
    monkeypatch.delenv(ENV_HEADER)
    assert read_credential(None).anonymous


def test_read_credential_of_an_unreadable_file_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        read_credential(tmp_path / "missing")
    with pytest.raises(OSError):
        read_credential(tmp_path)  # a directory


def test_the_warmer_reads_the_file_at_every_round_unless_public(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.write_text("Authorization: Bearer one\n")
    store = RepoStore(tmp_path / "cache", GitRunner(home=tmp_path / "home"))
    filler = Filler(store, RepoLocks(store.lock_dir), store.git, stall_timeout=5)
    warmer = Warmer(filler, store, None, creds, 60)
    assert warmer.credential().headers == (("authorization", "Bearer one"),)
    creds.write_text("Authorization: Bearer two\n")  # rotated: no restart needed
    assert warmer.credential().headers == (("authorization", "Bearer two"),)
    warmer.anonymous = True
    assert warmer.credential().anonymous
