"""``test_hardening_objects`` again with ``goblet_refs_ttl=60s``.

Its premise is that the client's ``git fetch --prune`` shows goblet the
upstream's deletion at once; within a refs TTL only a strict fetch does, so
this module's git client fetches with ``-o goblet-max-age=0``. Once goblet has
seen the refs without the object, it is never served by id, TTL or not.
"""

from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from tests.e2e.test_hardening_objects import *  # noqa: F403 (the same tests, collected here)
from tests.support.gitclient import GitClient
from tests.support.proxy import GobletProxy

PROXY_SETS = {"goblet_refs_ttl": "60s"}


class StrictFetchGit(GitClient):
    """git whose fetches ask for refs no older than 0 s."""

    def run(self, *args: str, **kwargs: Any) -> CompletedProcess[str]:
        if args and args[0] == "fetch":
            args = ("fetch", "-o", "goblet-max-age=0", *args[1:])
        return super().run(*args, **kwargs)


@pytest.fixture
def git(tmp_path: Path, proxy: GobletProxy) -> GitClient:
    return StrictFetchGit(tmp_path / "home", ca_file=proxy.ca_cert, proxy=proxy.url)
