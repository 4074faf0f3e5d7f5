"""Tests for hcm_twisted.core.tls: a private CA, verified clients, failures are errors."""

import os
import stat
from pathlib import Path

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, endpoints, protocol, reactor, ssl
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import TestCase

from hcm_twisted.core import tls
from hcm_twisted.core.errors import MalformedInput


class _Hello(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"hello")  # type: ignore[union-attr]


class _Client(protocol.Protocol):
    def __init__(self) -> None:
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.data == b"hello":
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: object) -> None:
        if self.data == b"hello":
            self.done.callback(self.data)
        else:
            self.done.errback(reason)  # type: ignore[arg-type]


class PrivateCATests(TestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.ca, self.cert, self.key = tls.ensure_private_ca(self.dir, ["relay.test"])

    def test_files_and_modes(self) -> None:
        """Keys are 0600; a second call reuses the same CA and certificate."""
        for path in (self.key, self.dir / "relay-ca.key"):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        before = self.cert.read_bytes()
        self.assertEqual(tls.ensure_private_ca(self.dir, ["relay.test"])[1].read_bytes(), before)
        # A new name issues a new server certificate from the same CA.
        tls.ensure_private_ca(self.dir, ["other.test"])
        self.assertNotEqual(self.cert.read_bytes(), before)

    def test_bad_ca_file(self) -> None:
        bad = self.dir / "bad.pem"
        bad.write_text("nothing here")
        with self.assertRaises(MalformedInput) as cm:
            tls.load_ca_certificates(str(bad))
        self.assertIn("no PEM certificate", str(cm.exception))
        with self.assertRaises(MalformedInput):
            tls.load_ca_certificates(str(self.dir / "missing.pem"))

    @defer.inlineCallbacks
    def _serve(self) -> defer.Generator[defer.Deferred[object], object, int]:
        pem = self.cert.read_bytes() + self.key.read_bytes()
        cert = ssl.PrivateCertificate.loadPEM(pem)
        ep = endpoints.SSL4ServerEndpoint(reactor, 0, cert.options(), interface="127.0.0.1")
        port = yield ep.listen(protocol.Factory.forProtocol(_Hello))
        assert IListeningPort.providedBy(port)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def _connect(self, port: int, host: str, cas: list[ssl.Certificate] | None) -> defer.Generator[defer.Deferred[object], object, bytes]:
        ep = endpoints.wrapClientTLS(
            tls.client_options(host, cas),
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5),
        )
        proto = yield endpoints.connectProtocol(ep, _Client())
        assert isinstance(proto, _Client)
        data = yield proto.done
        return data  # type: ignore[return-value]

    @defer.inlineCallbacks
    def test_verified_with_private_ca(self) -> defer.Generator[defer.Deferred[object], object, None]:
        port = yield self._serve()
        data = yield self._connect(port, "relay.test", tls.load_ca_certificates(str(self.ca)))  # type: ignore[arg-type]
        self.assertEqual(data, b"hello")

    @defer.inlineCallbacks
    def test_wrong_hostname_fails(self) -> defer.Generator[defer.Deferred[object], object, None]:
        port = yield self._serve()
        d = self._connect(port, "wrong.test", tls.load_ca_certificates(str(self.ca)))  # type: ignore[arg-type]
        yield self.assertFailure(d, VerificationError)

    @defer.inlineCallbacks
    def test_untrusted_ca_fails(self) -> defer.Generator[defer.Deferred[object], object, None]:
        port = yield self._serve()
        other = Path(self.mktemp())
        other_ca = tls.ensure_private_ca(other, ["relay.test"])[0]
        d = self._connect(port, "relay.test", tls.load_ca_certificates(str(other_ca)))  # type: ignore[arg-type]
        yield self.assertFailure(d, SSL.Error)
        d2 = self._connect(port, "relay.test", None)  # type: ignore[arg-type]
        yield self.assertFailure(d2, SSL.Error)
