"""Range and conditional headers are no credential: the link request of the very credential
a link was issued to keeps its link when it carries ``Range`` (git-lfs resuming a cut
download), ``If-None-Match`` or ``If-Modified-Since``, and gets the whole object with 200,
from the upstream's href as from the store. Before, such a header changed the tenant id,
and a real git-lfs resume got 403 at every retry until the partial file was deleted."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.e2e.test_lfs import BEARER, lfs_repo, via_prefix
from tests.e2e.test_lfs import lfs as lfs  # noqa: PLC0414 (the module's fixtures)
from tests.e2e.test_lfs import prefix_port as prefix_port  # noqa: PLC0414
from tests.e2e.test_lfs import proxy as proxy  # noqa: PLC0414
from tests.support.gitclient import GitClient
from tests.support.hostile_lfs import ALICE, Scene, links, oid_of, serving
from tests.support.lfs_repos import lfs_config
from tests.support.lfs_server import LfsServer
from tests.support.proxy import GobletProxy
from tests.support.upstream_client import UpstreamServer

DATA = os.urandom(4000)
OID = oid_of(DATA)
CONDITIONS = [{"Range": "bytes=2000-3999"}, {"If-None-Match": '"x"'},
              {"If-Modified-Since": "Wed, 21 Oct 2015 07:28:00 GMT"}]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    s = Scene(tmp_path_factory.mktemp("range"))
    s.api.app = s.media.app = serving(DATA, f"https://{s.media.host}/o")
    yield s
    s.close()


@pytest.mark.parametrize("extra", CONDITIONS)
def test_the_issuing_credential_keeps_its_link(scene: Scene, extra: dict[str, str]) -> None:
    for _ in ("from the href or the store", "from the store"):
        link = links(scene.batch("o/range.git", [(OID, len(DATA))], ALICE))[0]
        resp = scene.get(link, ALICE, extra=extra)
        assert resp.status == 200 and resp.body == DATA
        assert scene.stored(OID)
    assert all("range" not in hd and "if-none-match" not in hd
               for _, _, hd in scene.media.requests)  # never passed to the href


def test_git_lfs_resumes_a_cut_download_through_goblet(
        repos: Repos, lfs: LfsServer, upstream: UpstreamServer, proxy: GobletProxy,
        prefix_port: int, tmp_path: Path) -> None:
    name, files = lfs_repo(repos, lfs)
    git = GitClient(tmp_path / "home", ca_file=proxy.ca_cert)
    lfs_url = via_prefix(prefix_port, lfs.api_host, f"{name}/info/lfs")
    config = lfs_config(lfs_url, BEARER)
    dest = tmp_path / "clone"
    git.run("clone", via_prefix(prefix_port, upstream.host, name), str(dest), config=config,
            env={"GIT_LFS_SKIP_SMUDGE": "1"})
    big = files["big.bin"]
    partial = dest / ".git" / "lfs" / "incomplete" / f"{hashlib.sha256(big).hexdigest()}.part"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(big[: len(big) // 2])  # what a cut download leaves
    git.run("lfs", "pull", cwd=dest, config=config)
    assert (dest / "big.bin").read_bytes() == big
