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
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

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
    hostname: str,
    ca_certificates: list[ssl.Certificate] | None = None,
    *,
    resumable: bool = False,
) -> IOpenSSLClientConnectionCreator:
    """Client TLS options verifying ``hostname``.

    With ``ca_certificates`` those anchors are trusted in addition to the
    platform's; otherwise the platform trust store alone.

    With ``resumable`` the options remember the TLS session (ticket) of their
    last verified connection and offer it on the next one, which saves the
    full handshake when the server accepts it.  The session stays inside the
    returned object (one host name, one set of trust anchors): use one object
    per (host, port) and never share it between host names.
    """
    if ca_certificates:
        trust = _CombinedTrust(ca_certificates)
        options = ssl.optionsForClientTLS(hostname, trustRoot=trust)  # type: ignore[arg-type]
    else:
        options = ssl.optionsForClientTLS(hostname)
    if resumable:
        return ResumingClientOptions(options, hostname)
    return options


_TICKET_STATE = b"SSLv3/TLS read server session ticket"


@implementer(IOpenSSLClientConnectionCreator)
class ResumingClientOptions:
    """Client TLS options that resume the last session (TLS 1.2 and 1.3 tickets).

    Wraps Twisted's verifying ``ClientTLSOptions``: every connection is made
    by it (same context, SNI, certificate and service-identity checks); this
    only adds ``set_session`` before the handshake and keeps the session a
    server hands out *after* a completed (hence verified) handshake.  A
    resumed session was verified when it was first made; it is bound to this
    object's host name and context, so it is never offered to another host.
    With TLS 1.3 the ticket arrives after the handshake: the session is taken
    when OpenSSL has read it (info callback), not at handshake end.
    """

    def __init__(self, options: IOpenSSLClientConnectionCreator, hostname: str) -> None:
        self._options = options
        self.hostname = hostname
        self._session: SSL.Session | None = None
        #: Connections that resumed / that made a full handshake (for tests and figures).
        self.resumed = 0
        self.full = 0

    def forget(self) -> None:
        """Drop the remembered session (the next connection makes a full handshake)."""
        self._session = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._session is not None:
            try:
                connection.set_session(self._session)
            except (ValueError, SSL.Error):  # another context: never offered
                self._session = None
        ticket_seen = False

        def info(conn: SSL.Connection, where: int, ret: int) -> None:
            nonlocal ticket_seen
            if where & SSL.SSL_CB_HANDSHAKE_DONE:
                if session_reused(conn):
                    self.resumed += 1
                else:
                    self.full += 1
            if where & SSL.SSL_CB_LOOP:
                if conn.get_state_string() == _TICKET_STATE:
                    ticket_seen = True
            elif where & SSL.SSL_CB_EXIT and ret > 0 and ticket_seen:
                # A complete handshake (the peer certificate checked) plus a
                # fresh ticket: keep it for the next connection.
                ticket_seen = False
                session = conn.get_session()
                if session is not None:
                    self._session = session

        connection.set_info_callback(info)
        return connection


def session_reused(connection: SSL.Connection) -> bool:
    """Whether ``connection``'s handshake resumed a session (``SSL_session_reused``)."""
    from OpenSSL._util import lib

    return bool(lib.SSL_session_reused(connection._ssl))  # type: ignore[attr-defined]


def enable_session_tickets(endpoint: object) -> bool:
    """Let a Twisted ``ssl:`` server endpoint issue session tickets.

    Twisted's ``CertificateOptions`` turn tickets off unless asked; the
    ``ssl:`` endpoint string has no switch for it.  This flips the option
    on the endpoint's not yet built context factory (ticket keys are made
    by OpenSSL per context, in memory, per process) and checks the built
    context.  Returns whether tickets are on; ``False`` leaves things as
    they were (not an ``ssl:`` endpoint, or Twisted changed).
    """
    factory = getattr(endpoint, "_sslContextFactory", None)
    if not isinstance(factory, ssl.CertificateOptions) or factory._context is not None:
        return False
    factory.enableSessionTickets = True
    factory._options &= ~SSL.OP_NO_TICKET
    return not (factory.getContext().set_options(0) & SSL.OP_NO_TICKET)


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


def subject_alt_names(names: list[str]) -> list[x509.GeneralName]:
    """Certificate SAN entries for host names and IP addresses."""
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    return alt


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
    alt = subject_alt_names(names)
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
