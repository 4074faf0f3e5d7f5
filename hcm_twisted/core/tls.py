# -*- test-case-name: tests.core.test_tls -*-
"""TLS: verified client contexts and a private CA for the embedded relay.

Certificates are always verified (service-identity checks the host name).  A
private relay is trusted by naming its CA file, never by turning checks off.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from hcm_twisted.core.errors import MalformedInput


def load_ca_certificates(paths: list[str] | str | None) -> list[ssl.Certificate]:
    """Load every certificate in the PEM files named (a path or a list)."""
    if not paths:
        return []
    if isinstance(paths, str):
        paths = [paths]
    out: list[ssl.Certificate] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise MalformedInput(f"ca-certificates: cannot read {path}: {e.strerror}") from None
        blocks = data.split(b"-----END CERTIFICATE-----")
        for block in blocks:
            if b"-----BEGIN CERTIFICATE-----" not in block:
                continue
            pem = block[block.index(b"-----BEGIN CERTIFICATE-----") :] + b"-----END CERTIFICATE-----\n"
            try:
                out.append(ssl.Certificate.loadPEM(pem))
            except Exception:
                raise MalformedInput(f"ca-certificates: {path} holds a bad certificate") from None
        if not out:
            raise MalformedInput(f"ca-certificates: {path} holds no PEM certificate")
    return out


def client_options(
    hostname: str, ca_certificates: list[ssl.Certificate] | None = None
) -> IOpenSSLClientConnectionCreator:
    """Client TLS options verifying ``hostname``.

    With ``ca_certificates`` those anchors are trusted in addition to the
    platform's; otherwise the platform trust store alone.
    """
    if ca_certificates:
        trust = _CombinedTrust(ca_certificates)
        return ssl.optionsForClientTLS(hostname, trustRoot=trust)  # type: ignore[arg-type]
    return ssl.optionsForClientTLS(hostname)


class _CombinedTrust:
    """Trust the given anchors plus the platform's default paths."""

    def __init__(self, certificates: list[ssl.Certificate]) -> None:
        self._certificates = certificates

    def _addCACertsToContext(self, context: object) -> None:
        store = context.get_cert_store()  # type: ignore[attr-defined]
        for cert in self._certificates:
            store.add_cert(cert.original)
        context.set_default_verify_paths()  # type: ignore[attr-defined]


try:  # Tell zope what _CombinedTrust provides.
    from twisted.internet._sslverify import IOpenSSLTrustRoot
    from zope.interface import classImplements

    classImplements(_CombinedTrust, IOpenSSLTrustRoot)
except ImportError:  # pragma: no cover
    pass


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def ensure_private_ca(
    directory: str | Path, hostnames: list[str], days: int = 825
) -> tuple[Path, Path, Path]:
    """Create (once) a private CA and a server certificate for ``hostnames``.

    Returns ``(ca_pem, server_cert_pem, server_key_pem)``.  Keys are 0600.
    Existing files are reused when the certificate still covers the names.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_pem, ca_key_pem = d / "relay-ca.pem", d / "relay-ca.key"
    cert_pem, key_pem = d / "relay.pem", d / "relay.key"
    names = sorted(set(hostnames) | {"localhost", "127.0.0.1", "::1"})
    now = datetime.datetime.now(datetime.UTC)

    if ca_pem.exists() and ca_key_pem.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_pem.read_bytes(), None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hcm-relay private CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        _write_private(
            ca_key_pem,
            ca_key.private_bytes(  # type: ignore[union-attr]
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    if cert_pem.exists() and key_pem.exists():
        cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
                str(v) for v in san.get_values_for_type(x509.IPAddress)
            }
        except x509.ExtensionNotFound:
            have = set()
        if set(names) <= have and cert.not_valid_after_utc > now + datetime.timedelta(days=1):
            return ca_pem, cert_pem, key_pem

    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    _write_private(
        key_pem,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca_pem, cert_pem, key_pem
