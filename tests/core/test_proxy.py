"""HTTP CONNECT proxy egress: the tunnel protocol (no sockets) and proxy selection."""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.core.proxy import (
    HTTPConnectProxyEndpoint,
    ProxyError,
    bypasses_proxy,
    endpoint_for,
    parse_proxy_url,
    proxy_from_environment,
    resolve_proxy,
)

PROXY_ADDR = IPv4Address("TCP", "127.0.0.1", 3128)


class Recorder(Protocol):
    """The caller's protocol: records what it is given."""

    def __init__(self) -> None:
        self.received = b""
        self.made = 0
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.made += 1

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = reason


class RecorderFactory(Factory):
    protocol = Recorder

    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        p = Recorder()
        self.built.append(p)
        return p


@implementer(IStreamClientEndpoint)
class StringEndpoint:
    """Reaches the 'proxy' over a StringTransport (or never, or fails)."""

    def __init__(self, mode: str = "connect") -> None:
        self.mode = mode
        self.transport = StringTransport()
        self.protocol: Any = None
        self.pending: defer.Deferred[Any] | None = None

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        if self.mode == "refuse":
            return defer.fail(error.ConnectionRefusedError("nobody home"))
        if self.mode == "hang":
            self.pending = defer.Deferred()
            return self.pending
        if self.mode == "hang-like-hostname":
            # HostnameEndpoint's Deferred may fail with DNSLookupError when cancelled.
            self.pending = defer.Deferred(
                lambda d: d.errback(error.DNSLookupError("cancelled during resolution")))
            return self.pending
        self.protocol = factory.buildProtocol(PROXY_ADDR)
        self.protocol.makeConnection(self.transport)
        return defer.succeed(self.protocol)


def make(
    url: str = "http://proxy.example:3128", mode: str = "connect", host: str = "ns.example",
    port: int = 443,
) -> tuple[HTTPConnectProxyEndpoint, StringEndpoint, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    inner = StringEndpoint(mode)
    ep = HTTPConnectProxyEndpoint(reactor, parse_proxy_url(url), host, port, 5.0, inner)
    return ep, inner, reactor


class TunnelTests(SynchronousTestCase):
    def test_request_without_credentials(self) -> None:
        ep, inner, _ = make()
        ep.connect(RecorderFactory())
        sent = inner.transport.value()
        self.assertTrue(sent.startswith(b"CONNECT ns.example:443 HTTP/1.1\r\n"))
        self.assertIn(b"\r\nHost: ns.example:443\r\n", sent)
        self.assertNotIn(b"Proxy-Authorization", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\n"))

    def test_request_with_credentials_ipv6_target(self) -> None:
        ep, inner, _ = make("http://us%40er:p%3Ass@proxy.example:3128", host="::1", port=9443)
        ep.connect(RecorderFactory())
        sent = inner.transport.value()
        self.assertTrue(sent.startswith(b"CONNECT [::1]:9443 HTTP/1.1\r\n"))
        expected = base64.b64encode(b"us@er:p:ss")
        self.assertIn(b"\r\nProxy-Authorization: Basic " + expected + b"\r\n", sent)

    def test_established_hands_over(self) -> None:
        ep, inner, reactor = make()
        factory = RecorderFactory()
        d = ep.connect(factory)
        self.assertNoResult(d)
        inner.protocol.dataReceived(b"HTTP/1.1 200 Connection est")
        self.assertNoResult(d)
        self.assertEqual(factory.built, [])
        inner.protocol.dataReceived(b"ablished\r\nVia: x\r\n\r\nearly bytes")
        proto = self.successResultOf(d)
        self.assertIs(proto, factory.built[0])
        self.assertEqual(proto.made, 1)
        self.assertIs(proto.transport, inner.transport)
        self.assertEqual(proto.received, b"early bytes")
        inner.protocol.dataReceived(b" and more")
        self.assertEqual(proto.received, b"early bytes and more")
        inner.transport.clear()
        proto.transport.write(b"hello")  # type: ignore[union-attr]
        self.assertEqual(inner.transport.value(), b"hello")
        inner.protocol.connectionLost(Failure(error.ConnectionDone()))
        assert proto.lost is not None
        self.assertTrue(proto.lost.check(error.ConnectionDone))
        self.assertEqual(reactor.getDelayedCalls(), [])  # the timer is gone

    def test_bad_target_host(self) -> None:
        for host in ("ns.example\r\nX-Injected: 1", "a..b" + "c" * 70, "ns example"):
            ep, inner, reactor = make(host=host)
            d = ep.connect(RecorderFactory())
            f = self.failureResultOf(d, ProxyError)
            self.assertIn("cannot ask a proxy for a tunnel", str(f.value))
            self.assertNotIn(b"X-Injected", inner.transport.value())
            self.assertTrue(inner.transport.disconnecting)
            self.assertEqual(reactor.getDelayedCalls(), [])

    def test_protocol_failing_in_connection_made(self) -> None:
        class Broken(Protocol):
            def connectionMade(self) -> None:
                raise RuntimeError("cannot start")

        ep, inner, reactor = make()
        d = ep.connect(Factory.forProtocol(Broken))
        inner.protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        self.failureResultOf(d, RuntimeError)
        self.assertTrue(inner.transport.disconnecting)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_refused_407(self) -> None:
        ep, inner, reactor = make("http://user:secretpw@proxy.example:3128")
        d = ep.connect(RecorderFactory())
        inner.protocol.dataReceived(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n"
        )
        f = self.failureResultOf(d, ProxyError)
        self.assertEqual(f.value.status, 407)
        self.assertEqual(f.value.status_line, "HTTP/1.1 407 Proxy Authentication Required")
        message = str(f.value)
        self.assertIn("proxy.example:3128", message)
        self.assertIn("ns.example:443", message)
        self.assertIn("407 Proxy Authentication Required", message)
        self.assertIn("rejected the user and password", message)
        self.assertNotIn("secretpw", message)
        self.assertNotIn("secretpw", repr(ep))
        self.assertTrue(inner.transport.disconnecting)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_refused_403(self) -> None:
        ep, inner, _ = make()
        d = ep.connect(RecorderFactory())
        inner.protocol.dataReceived(b"HTTP/1.0 403 Access violation\r\n\r\n")
        f = self.failureResultOf(d, ProxyError)
        self.assertEqual(f.value.status, 403)
        self.assertIn("forbids", str(f.value))

    def test_bad_status_line(self) -> None:
        ep, inner, _ = make()
        d = ep.connect(RecorderFactory())
        inner.protocol.dataReceived(b"SSH-2.0-OpenSSH\r\n\r\n")
        f = self.failureResultOf(d, ProxyError)
        self.assertIsNone(f.value.status)
        self.assertIn("bad status line", str(f.value))

    def test_oversized_head(self) -> None:
        ep, inner, _ = make()
        d = ep.connect(RecorderFactory())
        inner.protocol.dataReceived(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000)
        self.assertIn("response head over", str(self.failureResultOf(d, ProxyError).value))

    def test_closed_before_answer(self) -> None:
        ep, inner, _ = make()
        factory = RecorderFactory()
        d = ep.connect(factory)
        inner.protocol.dataReceived(b"HTTP/1.1 200")
        inner.protocol.connectionLost(Failure(error.ConnectionDone()))
        f = self.failureResultOf(d, ProxyError)
        self.assertIn("closed the connection before answering", str(f.value))
        self.assertEqual(factory.built, [])

    def test_proxy_unreachable(self) -> None:
        ep, _, _ = make(mode="refuse")
        d = ep.connect(RecorderFactory())
        f = self.failureResultOf(d, ProxyError)
        self.assertIn("cannot connect to proxy proxy.example:3128", str(f.value))
        self.assertIn("ConnectionRefusedError", str(f.value))

    def test_timeout_waiting_for_answer(self) -> None:
        ep, inner, reactor = make()
        d = ep.connect(RecorderFactory())
        reactor.advance(4.9)
        self.assertNoResult(d)
        reactor.advance(0.2)
        f = self.failureResultOf(d, error.TimeoutError)
        self.assertIn("within 5 s", str(f.value))
        self.assertTrue(inner.transport.disconnecting)
        # The abort's connectionLost afterwards changes nothing.
        inner.protocol.connectionLost(Failure(error.ConnectionAborted()))

    def test_timeout_connecting_to_proxy(self) -> None:
        ep, inner, reactor = make(mode="hang")
        d = ep.connect(RecorderFactory())
        reactor.advance(5.0)
        self.failureResultOf(d, error.TimeoutError)
        assert inner.pending is not None
        self.assertTrue(inner.pending.called)  # cancelled

    def test_cancel_while_connecting_to_proxy(self) -> None:
        for mode in ("hang", "hang-like-hostname"):
            ep, inner, reactor = make(mode=mode)
            d = ep.connect(RecorderFactory())
            d.cancel()
            self.failureResultOf(d, error.ConnectingCancelledError)
            assert inner.pending is not None
            self.assertTrue(inner.pending.called)
            self.assertEqual(reactor.getDelayedCalls(), [])
            # The same with the timeout.
            ep, inner, reactor = make(mode=mode)
            d = ep.connect(RecorderFactory())
            reactor.advance(5)
            self.failureResultOf(d, error.TimeoutError)

    def test_cancel(self) -> None:
        ep, inner, reactor = make()
        d = ep.connect(RecorderFactory())
        d.cancel()
        self.failureResultOf(d, error.ConnectingCancelledError)
        self.assertTrue(inner.transport.disconnecting)
        self.assertEqual(reactor.getDelayedCalls(), [])


class FakeProxy(Protocol):
    """Answers CONNECT with 200, then echoes (in upper case) through the 'tunnel'."""

    def __init__(self) -> None:
        self.head = b""
        self.open = False

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if self.open:
            self.transport.write(data.upper())
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            head, rest = self.head.split(b"\r\n\r\n", 1)
            self.open = True
            self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                self.dataReceived(rest)


@implementer(IStreamClientEndpoint)
class IOSimEndpoint:
    def __init__(self) -> None:
        self.server = FakeProxy()
        self.pump: iosim.IOPump | None = None
        self.client_transport: iosim.FakeTransport | None = None

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        client = factory.buildProtocol(PROXY_ADDR)
        assert client is not None
        self.client_transport = iosim.FakeTransport(client, isServer=False)
        self.pump = iosim.connect(
            self.server, iosim.FakeTransport(self.server, isServer=True),
            client, self.client_transport, greet=False,
        )
        return defer.succeed(client)


class IOSimTests(SynchronousTestCase):
    def test_echo_through_tunnel(self) -> None:
        inner = IOSimEndpoint()
        ep = HTTPConnectProxyEndpoint(
            MemoryReactorClock(), parse_proxy_url("proxy:8080"), "relay.example", 443, 5, inner
        )
        factory = RecorderFactory()
        d = ep.connect(factory)
        assert inner.pump is not None
        inner.pump.flush()
        proto = self.successResultOf(d)
        self.assertTrue(inner.server.head.startswith(b"CONNECT relay.example:443 HTTP/1.1"))
        # The transport's protocol was swapped: data goes straight to ours.
        assert inner.client_transport is not None
        self.assertIs(inner.client_transport.protocol, proto)
        proto.transport.write(b"ping " * 1000)  # type: ignore[union-attr]
        inner.pump.flush()
        self.assertEqual(proto.received, b"PING " * 1000)
        proto.transport.loseConnection()  # type: ignore[union-attr]
        inner.pump.flush()
        self.assertIsNotNone(proto.lost)


class ParseTests(SynchronousTestCase):
    def test_forms(self) -> None:
        p = parse_proxy_url("http://proxy.example:3128")
        self.assertEqual((p.host, p.port, p.username, p.password), ("proxy.example", 3128, None, None))
        self.assertIsNone(p.authorization())
        self.assertEqual(parse_proxy_url("proxy.example").port, 80)
        self.assertEqual(parse_proxy_url("HTTP://[::1]:3128/").host, "::1")
        self.assertEqual(parse_proxy_url("[::1]:3128").address(), "[::1]:3128")
        p = parse_proxy_url("http://u:pw@h:1")
        self.assertEqual(p.masked(), "http://u:***@h:1")
        self.assertNotIn("pw", repr(p))

    def test_errors(self) -> None:
        for bad, words in [
            ("", "must be a URL"),
            ("socks5://u:topsecret@h:1080", "scheme 'socks5' is not supported"),
            ("https://h:3128", "scheme 'https'"),
            ("http://u:topsecret@h:notaport", "bad port"),
            ("http://u:topsecret@h:3128/path", "must not have a path"),
            ("http://:3128", "names no host"),
        ]:
            with self.assertRaises(MalformedInput) as cm:
                parse_proxy_url(bad, what="[agent] proxy")
            self.assertIn(words, str(cm.exception))
            self.assertIn("[agent] proxy", str(cm.exception))
            self.assertNotIn("topsecret", str(cm.exception))


class SelectionTests(SynchronousTestCase):
    def test_no_proxy_matching(self) -> None:
        cases = [
            ("a.example.com", "example.com", None, True),
            ("example.com", "example.com", None, True),
            ("example.com", ".example.com", None, True),
            ("a.example.com", ".example.com", None, True),
            ("a.example.com", "*.example.com", None, True),
            ("badexample.com", "example.com", None, False),
            ("EXAMPLE.com.", "Example.COM", None, True),
            ("anything", "*", None, True),
            ("anything", "foo, *", None, True),
            ("relay.example", "relay.example:443", 443, True),
            ("relay.example", "relay.example:443", 9443, False),
            ("relay.example", "other.example relay.example", None, True),
            ("10.1.2.3", "10.0.0.0/8", None, True),
            ("11.1.2.3", "10.0.0.0/8", None, False),
            ("10.1.2.3", "10.1.2.3", None, True),
            ("10.1.2.3", "10.1.2.4", None, False),
            ("fd00::1", "fd00::/8", None, True),
            ("::1", "[::1]", None, True),
            ("::1", "[::1]:443", 443, True),
            ("::1", "::1", None, True),
            ("host.example", "10.0.0.0/8", None, False),  # no DNS lookups
            ("host.example", "", None, False),
            ("host.example", ",, ,", None, False),
            ("host.example", "bad/cidr", None, False),
        ]
        for host, no_proxy, port, expected in cases:
            self.assertEqual(
                bypasses_proxy(host, no_proxy, port), expected, (host, no_proxy, port)
            )

    def test_environment(self) -> None:
        env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:1"}
        self.assertEqual(proxy_from_environment("ns.example", env), "http://lower:1")
        self.assertEqual(proxy_from_environment("ns.example", {"HTTPS_PROXY": "u:1"}), "u:1")
        self.assertEqual(proxy_from_environment("ns.example", {"ALL_PROXY": "a:1"}), "a:1")
        self.assertEqual(
            proxy_from_environment("ns.example", {"ALL_PROXY": "a:1", "HTTPS_PROXY": "h:1"}), "h:1"
        )
        self.assertIsNone(proxy_from_environment("ns.example", {"HTTP_PROXY": "p:1"}))
        self.assertIsNone(proxy_from_environment("ns.example", {}))
        self.assertIsNone(
            proxy_from_environment("ns.example", {"HTTPS_PROXY": "p:1", "NO_PROXY": ".example"})
        )
        self.assertIsNone(
            proxy_from_environment("ns.example", {"HTTPS_PROXY": "p:1", "no_proxy": "*"})
        )
        self.assertEqual(
            proxy_from_environment(
                "ns.example", {"HTTPS_PROXY": "p:1", "NO_PROXY": "ns.example:9443"}, port=443
            ),
            "p:1",
        )
        for local in ("localhost", "127.0.0.1", "127.9.9.9", "::1", "[::1]", "a.localhost"):
            self.assertIsNone(proxy_from_environment(local, {"HTTPS_PROXY": "p:1"}), local)

    def test_configured(self) -> None:
        env = {"HTTPS_PROXY": "http://env:1"}
        self.assertEqual(resolve_proxy("ns.example", 443, None, env=env), "http://env:1")
        self.assertEqual(resolve_proxy("ns.example", 443, "http://cfg:2", env=env), "http://cfg:2")
        # An explicit proxy applies to loopback too.
        self.assertEqual(resolve_proxy("127.0.0.1", 443, "http://cfg:2", env=env), "http://cfg:2")
        self.assertIsNone(resolve_proxy("ns.example", 443, "none", env=env))
        self.assertIsNone(resolve_proxy("ns.example", 443, "", env=env))
        self.assertIsNone(resolve_proxy("ns.example", 443, "http://cfg:2", "ns.example", env=env))
        # The environment's NO_PROXY does not apply to a configured proxy.
        env2 = {"NO_PROXY": "*"}
        self.assertEqual(resolve_proxy("ns.example", 443, "http://cfg:2", env=env2), "http://cfg:2")

    def test_endpoint_for(self) -> None:
        reactor = MemoryReactorClock()
        self.assertIsInstance(endpoint_for(reactor, "ns.example", 443, None, 3), HostnameEndpoint)
        ep = endpoint_for(reactor, "ns.example", 443, "http://u:pw@proxy:3128", 3)
        assert isinstance(ep, HTTPConnectProxyEndpoint)
        self.assertEqual((ep.host, ep.port, ep.timeout), ("ns.example", 443, 3))
        self.assertEqual(ep.proxy.address(), "proxy:3128")
        self.assertIsInstance(ep.proxy_endpoint, HostnameEndpoint)
        self.assertRaises(MalformedInput, endpoint_for, reactor, "h", 1, "ftp://x", 3)


class AgentEndpointFactoryTests(SynchronousTestCase):
    def test_endpoints(self) -> None:
        from twisted.web.client import URI

        from hcm_twisted.core.proxy import AgentEndpointFactory

        hosts: list[str] = []

        def options(host: str) -> object:
            hosts.append(host)
            return object()

        reactor = MemoryReactorClock()
        f = AgentEndpointFactory(reactor, options, "http://proxy:3128", no_proxy="direct.example")
        ep: Any = f.endpointForURI(URI.fromBytes(b"https://ns.example:9443/hc1?api-version=1"))
        inner = ep._wrappedEndpoint
        assert isinstance(inner, HTTPConnectProxyEndpoint)
        self.assertEqual((inner.host, inner.port, inner.proxy.address()), ("ns.example", 9443, "proxy:3128"))
        self.assertEqual(hosts, ["ns.example"])
        ep = f.endpointForURI(URI.fromBytes(b"https://direct.example/"))
        self.assertIsInstance(ep._wrappedEndpoint, HostnameEndpoint)
        ep = f.endpointForURI(URI.fromBytes(b"http://[::1]:8080/"))
        assert isinstance(ep, HTTPConnectProxyEndpoint)
        self.assertEqual((ep.host, ep.port), ("::1", 8080))
        self.assertEqual(hosts, ["ns.example", "direct.example"])  # no TLS for http://
