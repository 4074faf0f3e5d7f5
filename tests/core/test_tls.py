"""Tests for hcm_twisted.core.tls: a private CA, verified clients, failures are errors."""

import os
import stat
from collections.abc import Generator
from pathlib import Path
from typing import Any

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


class _ReusedClient(_Client):
    """Records whether the TLS handshake resumed a session."""

    reused: bool | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.reused is None:
            self.reused = tls.session_reused(self.transport.getHandle())  # type: ignore[union-attr]
        super().dataReceived(data)


class SessionResumptionTests(TestCase):
    """Resumable client options against an ``ssl:`` server with tickets (as the relay's)."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.ca, self.cert, self.key = tls.ensure_private_ca(self.dir, ["relay.test", "other.test"])
        self.anchors = tls.load_ca_certificates(str(self.ca))

    @defer.inlineCallbacks
    def _serve(
        self, tickets: bool = True, cert: Path | None = None, key: Path | None = None
    ) -> Generator[Any, Any, int]:
        desc = f"ssl:0:interface=127.0.0.1:privateKey={key or self.key}:certKey={cert or self.cert}"
        ep = endpoints.serverFromString(reactor, desc)
        if tickets:
            self.assertTrue(tls.enable_session_tickets(ep))
        port = yield ep.listen(protocol.Factory.forProtocol(_Hello))
        assert IListeningPort.providedBy(port)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def _connect(self, port: Any, options: object) -> Generator[Any, Any, bool]:
        ep = endpoints.wrapClientTLS(
            options,  # type: ignore[arg-type]
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5),
        )
        proto = yield endpoints.connectProtocol(ep, _ReusedClient())
        assert isinstance(proto, _ReusedClient)
        data = yield proto.done
        self.assertEqual(data, b"hello")
        return bool(proto.reused)

    def _options(self, host: str = "relay.test", anchors: object = None) -> tls.ResumingClientOptions:
        options = tls.client_options(host, anchors or self.anchors, resumable=True)  # type: ignore[arg-type]
        assert isinstance(options, tls.ResumingClientOptions)
        return options

    def test_plain_options_unchanged(self) -> None:
        """Without ``resumable`` the options are Twisted's own, as before."""
        self.assertNotIsInstance(tls.client_options("relay.test", self.anchors), tls.ResumingClientOptions)

    def test_enable_tickets_only_on_ssl_endpoints(self) -> None:
        self.assertFalse(tls.enable_session_tickets(endpoints.serverFromString(reactor, "tcp:0")))

    @defer.inlineCallbacks
    def test_second_connection_resumes(self) -> Generator[Any, Any, None]:
        port = yield self._serve()
        options = self._options()
        first = yield self._connect(port, options)
        second = yield self._connect(port, options)
        third = yield self._connect(port, options)
        self.assertEqual((first, second, third), (False, True, True))
        self.assertEqual((options.full, options.resumed), (1, 2))

    @defer.inlineCallbacks
    def test_no_tickets_no_resumption(self) -> Generator[Any, Any, None]:
        """Twisted's default server options (tickets off, no cache): every handshake is full."""
        port = yield self._serve(tickets=False)
        options = self._options()
        first = yield self._connect(port, options)
        second = yield self._connect(port, options)
        self.assertEqual((first, second), (False, False))
        self.assertEqual((options.full, options.resumed), (2, 0))

    @defer.inlineCallbacks
    def test_other_host_does_not_get_the_session(self) -> Generator[Any, Any, None]:
        port = yield self._serve()
        relay, other = self._options("relay.test"), self._options("other.test")
        yield self._connect(port, relay)
        self.assertIsNotNone(relay._session)
        reused = yield self._connect(port, other)
        self.assertFalse(reused)
        self.assertEqual((other.full, other.resumed), (1, 0))
        # A session is bound to the options (context) that made it: it cannot be offered elsewhere.
        conn = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        assert relay._session is not None
        with self.assertRaises(ValueError):
            conn.set_session(relay._session)

    @defer.inlineCallbacks
    def test_verification_failures_still_fail(self) -> Generator[Any, Any, None]:
        port = yield self._serve()
        # Wrong host name: fails, and nothing is kept to resume.
        wrong = self._options("wrong.test")
        yield self.assertFailure(self._connect(port, wrong), VerificationError)  # type: ignore[arg-type]
        self.assertIsNone(wrong._session)
        # Untrusted anchors: fails, nothing kept.
        other_dir = Path(self.mktemp())
        other_ca, other_cert, other_key = tls.ensure_private_ca(other_dir, ["relay.test"])
        untrusted = self._options("relay.test", tls.load_ca_certificates(str(other_ca)))
        yield self.assertFailure(self._connect(port, untrusted), SSL.Error)  # type: ignore[arg-type]
        self.assertIsNone(untrusted._session)
        # A remembered session does not vouch for another server under the same name:
        # an impostor (certificate from an untrusted CA) cannot resume and fails verification.
        options = self._options()
        yield self._connect(port, options)
        self.assertIsNotNone(options._session)
        impostor = yield self._serve(cert=other_cert, key=other_key)
        yield self.assertFailure(self._connect(impostor, options), SSL.Error)  # type: ignore[arg-type]
        self.assertEqual(options.resumed, 0)
