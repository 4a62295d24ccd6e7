"""Red team: request bodies that goblet and the upstream might read differently.

If goblet judged one body and the upstream (or goblet's own cache) acted on another, a
decision could be made for a request nobody sent. These hold (regression tests):

* two gzip members back to back: goblet refuses the body (400), it does not judge the
  first member alone;
* ``Content-Encoding: gzip, identity`` (a list): not decoded, passed to the upstream
  (tested with the other encodings goblet does not decode, in ``test_hardening_bodies.py``);
* ``Transfer-Encoding`` together with ``Content-Length``, or twice: refused before
  anything reaches the upstream.

One does not: ``Transfer-Encoding: gzip, chunked``. mitmproxy accepts it and removes the
chunked framing only; goblet then reads the still gzip-coded bytes as the request (here
they are a plain fetch, which goblet answers from the cache), while an upstream that
implements the transfer coding reads their gunzipped form. No leak follows today (goblet
judges and serves the same bytes; what it passes on, the upstream judges itself), but it
is a parse differential of exactly the kind the other cases avoid. Safe behaviour: a
transfer coding goblet does not apply is refused (400), as mitmproxy does for ``gzip``
alone.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tests.e2e.conftest import Repos
from tests.support import rawhttp
from tests.support.attack import clone_head, upload_posts
from tests.support.attack import post_upload as post
from tests.support.gitclient import GitClient
from tests.support.proxy import GobletProxy
from tests.support.tunnel import ResponseError, exchange
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e

def warm(git: GitClient, repos: Repos, upstream: UpstreamServer, tmp_path: Path) -> tuple[str, str]:
    name = repos.create(commits=3)
    return name, clone_head(git, upstream.url(name), tmp_path / "warm")


def test_two_gzip_members_are_refused_not_judged_by_the_first(
    git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy, tmp_path: Path
) -> None:
    name, head = warm(git, repos, upstream, tmp_path)
    body = gzip.compress(rawhttp.v2_fetch_body(head)) + gzip.compress(rawhttp.v2_ls_refs_body())
    before = upload_posts(upstream, name)
    resp = post(upstream, proxy, name, {"Content-Encoding": "gzip"}, body)
    assert resp.status == 400 and resp.body.startswith(b"goblet: "), resp.status
    assert upload_posts(upstream, name) == before


@pytest.mark.parametrize("framing", [
    "Transfer-Encoding: chunked\r\nContent-Length: {n}",
    "Transfer-Encoding: gzip, chunked",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
])
def test_ambiguous_body_framing_never_reaches_the_upstream(
    framing: str, git: GitClient, repos: Repos, upstream: UpstreamServer, proxy: GobletProxy,
    tmp_path: Path,
) -> None:
    name, head = warm(git, repos, upstream, tmp_path)
    body = rawhttp.v2_fetch_body(head)
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    raw = (f"POST /{name}/git-upload-pack HTTP/1.1\r\nHost: {upstream.host}\r\n"
           "Git-Protocol: version=2\r\nContent-Type: application/x-git-upload-pack-request\r\n"
           f"{framing.format(n=len(chunked))}\r\n\r\n").encode() + chunked
    before = upload_posts(upstream, name)
    try:
        resp = exchange(proxy.port, "127.0.0.1", upstream.port, raw, ca_file=proxy.ca_cert)
        assert resp.status == 400, resp.status
    except (ResponseError, OSError):
        pass  # the proxy hung up: fine too
    assert upload_posts(upstream, name) == before
