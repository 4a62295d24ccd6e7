"""The tenant-id secret: created once with mode 0600, then only ever read back."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from goblet.auth import secret as secret_mod
from goblet.auth.secret import SECRET_BYTES, load_or_create_secret


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_with_mode_0600_and_32_bytes(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    value = load_or_create_secret(path)
    assert len(value) == SECRET_BYTES == 32
    assert path.read_bytes() == value
    assert mode(path) == 0o600


def test_created_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "secret"
        load_or_create_secret(path)
    finally:
        os.umask(old)
    assert mode(path) == 0o600


def test_parent_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "secret"
    load_or_create_secret(path)
    assert path.is_file()


def test_stable_across_calls(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    first = load_or_create_secret(path)
    assert load_or_create_secret(path) == first
    assert load_or_create_secret(path) == first
    assert mode(path) == 0o600


def test_two_paths_two_secrets(tmp_path: Path) -> None:
    assert load_or_create_secret(tmp_path / "a") != load_or_create_secret(tmp_path / "b")


def test_existing_secret_is_used_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"s" * 32)
    path.chmod(0o600)
    assert load_or_create_secret(path) == b"s" * 32
    assert path.read_bytes() == b"s" * 32


def test_longer_file_yields_its_first_32_bytes(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"s" * 32 + b"trailing\n")
    path.chmod(0o600)
    assert load_or_create_secret(path) == b"s" * 32


@pytest.mark.parametrize(
    "file_mode",
    [0o640, 0o604, 0o644, 0o660, 0o606, 0o610, 0o601, 0o700 | 0o040, 0o777],
    ids=lambda m: f"{m:o}",
)
def test_refuses_a_file_others_can_access(tmp_path: Path, file_mode: int) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"s" * 32)
    path.chmod(file_mode)
    with pytest.raises(ValueError, match="readable by other users"):
        load_or_create_secret(path)


@pytest.mark.parametrize("file_mode", [0o600, 0o400, 0o700], ids=lambda m: f"{m:o}")
def test_accepts_owner_only_modes(tmp_path: Path, file_mode: int) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"s" * 32)
    path.chmod(file_mode)
    assert load_or_create_secret(path) == b"s" * 32


@pytest.mark.parametrize("size", [0, 1, 31], ids=["empty", "one-byte", "31-bytes"])
def test_refuses_a_truncated_file(tmp_path: Path, size: int) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"s" * size)
    path.chmod(0o600)
    with pytest.raises(ValueError, match="truncated secret"):
        load_or_create_secret(path)


def test_unwritable_location_is_an_os_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(OSError):
        load_or_create_secret(blocker / "secret")


def test_concurrent_first_start_agrees_on_one_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret"
    second: dict[str, object] = {}
    real_token_bytes = secret_mod.secrets.token_bytes

    def other_process() -> None:
        try:
            second["value"] = load_or_create_secret(path)
        except ValueError as e:
            second["error"] = e

    started: list[threading.Thread] = []

    def slow_token_bytes(n: int) -> bytes:
        # The first caller has created its candidate file and not yet written it:
        # now the second one starts up (a thread stands in for another process).
        # Only once: the patch is on the ``secrets`` module itself, which the second
        # caller (and ``token_hex``) use too; starting a thread on each call would
        # chain thousands of them.
        if n == secret_mod.SECRET_BYTES and not started:
            started.append(threading.Thread(target=other_process))
            started[0].start()
            started[0].join(timeout=10)
        return real_token_bytes(n)

    monkeypatch.setattr(secret_mod.secrets, "token_bytes", slow_token_bytes)
    first = load_or_create_secret(path)
    assert len(started) == 1 and not started[0].is_alive()
    assert "error" not in second, second.get("error")
    assert second.get("value") == first
