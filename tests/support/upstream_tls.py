"""Self-signed TLS material for the test upstream server.

Contract: :func:`write_self_signed_cert` creates a fresh EC P-256 key and a self-signed
certificate valid for ``IP:127.0.0.1`` and ``DNS:localhost``, writes the certificate alone to
``<cert_dir>/upstream-cert.pem`` and the key to ``<cert_dir>/upstream-key.pem`` (mode 0600), and
returns both paths. The certificate is its own trust anchor: clients trust it by pointing their
CA bundle at the certificate file (``GIT_SSL_CAINFO``, ``ssl.create_default_context(cafile=...)``,
mitmproxy's ``ssl_verify_upstream_trusted_ca``).

:func:`write_ca_signed_cert` is the private-CA variant, as an internal forge has it: a CA
certificate alone in ``<cert_dir>/upstream-ca.pem`` (its key is never written), and a leaf
certificate (not a CA) signed by it for the same names in ``upstream-leaf.pem`` with its key.
Clients trust the CA file; the server presents the leaf.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_FILE_NAME = "upstream-cert.pem"
KEY_FILE_NAME = "upstream-key.pem"
CA_FILE_NAME = "upstream-ca.pem"
LEAF_FILE_NAME = "upstream-leaf.pem"


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
             now: dt.datetime) -> x509.CertificateBuilder:
    """A certificate of ``key``'s public half, valid from an hour before ``now`` for 30 days."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )


def _key_usage(*, cert_sign: bool, crl_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=crl_sign, encipher_only=False, decipher_only=False,
    )


def _server_cert(builder: x509.CertificateBuilder, key: ec.EllipticCurvePrivateKey, *,
                 ca: bool, issuer_ski: x509.SubjectKeyIdentifier,
                 signer: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """``builder`` (for ``key``) as a server certificate for ``IP:127.0.0.1`` and
    ``DNS:localhost``, signed by ``signer`` (whose key identifier is ``issuer_ski``);
    with ``ca`` it may sign certificates too (a self-signed one is its own anchor)."""
    return (
        builder
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=ca, crl_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
                       critical=False)
        .sign(signer, hashes.SHA256())
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def write_self_signed_cert(cert_dir: Path) -> tuple[Path, Path]:
    """Generate a key and self-signed certificate into ``cert_dir``; return (cert, key) paths.

    ``cert_dir`` is created if missing. Existing files are overwritten, so every server start
    has a new key; clients must re-read the certificate file after each start.
    """
    cert_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "goblet test upstream"),
            x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = _server_cert(_builder(name, name, key, now), key, ca=True, issuer_ski=ski, signer=key)
    cert_path = cert_dir / CERT_FILE_NAME
    key_path = cert_dir / KEY_FILE_NAME
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def write_ca_signed_cert(cert_dir: Path) -> tuple[Path, Path, Path]:
    """A fresh private CA and a leaf it signed; return (CA cert, leaf cert, leaf key) paths."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "goblet test forge CA"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "goblet test private CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        _builder(ca_name, ca_name, ca_key, now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    leaf = _server_cert(_builder(leaf_name, ca_name, key, now), key, ca=False,
                        issuer_ski=ca_ski, signer=ca_key)
    ca_path, leaf_path, key_path = (cert_dir / CA_FILE_NAME, cert_dir / LEAF_FILE_NAME,
                                    cert_dir / KEY_FILE_NAME)
    _write_key(key_path, key)
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    leaf_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return ca_path, leaf_path, key_path
