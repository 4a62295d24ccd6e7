"""An internal forge whose certificate a private CA signed: goblet trusts it when told to.

mitmproxy verifies upstreams against certifi's public CAs, not the system store,
so a forge with a private CA fails until the proxy gets the CA with
``--set ssl_verify_upstream_trusted_ca=FILE``; goblet hands the same file to
the git children that fill its cache. Here the upstream presents a leaf
certificate signed by a fresh CA, and the proxy is given the CA file alone.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.e2e.conftest import Repos, count, started_upstream
from tests.support.gitclient import GitClient
from tests.support.proxy import GobletProxy
from tests.support.upstream_client import UpstreamServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def forge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamServer]:
    with started_upstream(tmp_path_factory, "forge", private_ca=True) as server:
        yield server


@pytest.fixture(scope="module")
def forge_repos(forge: UpstreamServer) -> Repos:
    return Repos(forge)


def presented_certificate(port: int, ca_file: Path) -> x509.Certificate:
    """The certificate the forge presents, after verifying it against ``ca_file``."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), 10),
                             server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_the_forge_presents_a_leaf_that_the_separate_ca_signed(forge: UpstreamServer) -> None:
    (ca,) = x509.load_pem_x509_certificates(forge.cert_path.read_bytes())
    leaf = presented_certificate(forge.port, forge.cert_path)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.issuer == ca.subject and leaf.subject != ca.subject
    assert b"PRIVATE KEY" not in forge.cert_path.read_bytes()


def test_without_the_ca_the_proxy_cannot_reach_the_forge(
        forge: UpstreamServer, forge_repos: Repos, tmp_path: Path, confdir: Path) -> None:
    name = forge_repos.create()
    with GobletProxy(tmp_path / "px", hosts=[forge.host], upstream_ca=None,
                     confdir=confdir) as px:
        git = GitClient(tmp_path / "home", ca_file=px.ca_cert, proxy=px.url)
        res = git.run("clone", forge.url(name), str(tmp_path / "c"), check=False)
        assert res.returncode != 0
        assert "Certificate verify failed: unable to get local issuer certificate" in \
            px.log_text(), px.log_text()[-2000:]


def test_cold_and_warm_clones_with_the_ca(
        forge: UpstreamServer, forge_repos: Repos, tmp_path: Path, confdir: Path) -> None:
    name = forge_repos.create()
    url = forge.url(name)
    # cold clones by fill: what is tested is goblet's own git fetch trusting the CA
    with GobletProxy(tmp_path / "px", hosts=[forge.host], upstream_ca=forge.cert_path,
                     confdir=confdir, sets={"goblet_cold_clones": "fill"}) as px:
        git = GitClient(tmp_path / "home", ca_file=px.ca_cert, proxy=px.url)
        git.clone(url, tmp_path / "cold")
        assert count(forge.stats(), "fetch", name) == 1, "the cold clone: one fill"
        assert " fill " in px.log_text() and "result=ok" in px.log_text(), px.log_text()
        git.clone(url, tmp_path / "warm")
        assert count(forge.stats(), "fetch", name) == 1, "the warm clone came from the cache"
        assert px.log_text().count("outcome=cache status=200") >= 2
        for clone in ("cold", "warm"):
            git.fsck(tmp_path / clone)


def test_the_file_replaces_the_default_cas_so_mixed_hosts_need_a_bundle(
        forge: UpstreamServer, forge_repos: Repos, upstream: UpstreamServer, repos: Repos,
        tmp_path: Path, confdir: Path) -> None:
    """The README's advice: a bundle of every CA the goblet_hosts need, not the private CA alone.

    ``upstream`` (self-signed) stands for a public forge whose CA the default list has.
    """
    private, public = forge_repos.create(), repos.create()
    alone = GobletProxy(tmp_path / "alone", hosts=[forge.host, upstream.host],
                        upstream_ca=forge.cert_path, confdir=confdir,
                        sets={"goblet_cold_clones": "fill"})
    with alone:
        git = GitClient(tmp_path / "home-alone", ca_file=alone.ca_cert, proxy=alone.url)
        git.clone(forge.url(private), tmp_path / "a1")
        res = git.run("clone", upstream.url(public), str(tmp_path / "a2"), check=False)
        assert res.returncode != 0, "the private CA alone must not verify the other host"
    bundle = tmp_path / "upstream-cas.pem"
    bundle.write_bytes(forge.cert_path.read_bytes() + upstream.cert_path.read_bytes())
    both = GobletProxy(tmp_path / "both", hosts=[forge.host, upstream.host],
                       upstream_ca=bundle, confdir=confdir, sets={"goblet_cold_clones": "fill"})
    with both:
        git = GitClient(tmp_path / "home-both", ca_file=both.ca_cert, proxy=both.url)
        git.clone(forge.url(private), tmp_path / "b1")
        git.clone(upstream.url(public), tmp_path / "b2")
        assert both.log_text().count("result=ok") >= 2, both.log_text()[-2000:]
