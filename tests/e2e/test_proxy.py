"""Egress through a real HTTP CONNECT proxy (tinyproxy on loopback).

TLS (and a WebSocket over it) to a loopback server, tunnelled through tinyproxy:
the bytes are hashed at both ends and tinyproxy's log must show the CONNECT.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet import defer, endpoints, protocol, reactor, ssl
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import TestCase

from hcm_twisted.core import tls
from hcm_twisted.core.proxy import ProxyError, endpoint_for
from tests.e2e import harness

TINYPROXY = shutil.which("tinyproxy") or ("/usr/bin/tinyproxy" if os.path.exists("/usr/bin/tinyproxy") else None)
USER, PASSWORD = "hcm", "proxy-pass-0123"


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Collect(protocol.Protocol):
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.digest = hashlib.sha256()
        self.count = 0
        self.done: defer.Deferred[str] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)
        self.count += len(data)
        if self.count >= self.expected and not self.done.called:
            self.done.callback(self.digest.hexdigest())
            assert self.transport is not None
            self.transport.loseConnection()


class WSEcho(WebSocketServerProtocol):
    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.closed.callback(wasClean)  # type: ignore[attr-defined]

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


class WSClient(WebSocketClientProtocol):
    def onOpen(self) -> None:
        for chunk in self.factory.chunks:  # type: ignore[attr-defined]
            self.sendMessage(chunk, isBinary=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        f: Any = self.factory
        f.digest.update(payload)
        f.count += 1
        if f.count == len(f.chunks):
            f.done.callback(f.digest.hexdigest())
            self.sendClose()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.closed.callback(wasClean)  # type: ignore[attr-defined]


class TinyproxyTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        if TINYPROXY is None:
            raise self.skipTest("tinyproxy is not installed (apt-get install tinyproxy)")
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        self.ca, cert, key = tls.ensure_private_ca(self.dir / "ca", ["localhost"])
        self.cas = tls.load_ca_certificates(str(self.ca))
        self.server_cert = ssl.PrivateCertificate.loadPEM(cert.read_bytes() + key.read_bytes())

    @defer.inlineCallbacks
    def _listen(self, factory: protocol.Factory) -> Any:
        ep = endpoints.SSL4ServerEndpoint(
            reactor, 0, self.server_cert.options(), interface="127.0.0.1"
        )
        port = yield ep.listen(factory)
        assert IListeningPort.providedBy(port)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)  # type: ignore[attr-defined]

    def _proxy(self, allowed_port: int, auth: bool = True) -> tuple[harness.Proc, int]:
        assert TINYPROXY is not None
        port = harness.free_port()
        log = self.dir / "tinyproxy-access.log"
        lines = [
            f"Port {port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            f'LogFile "{log}"',
            "LogLevel Connect",
            "MaxClients 20",
            "Allow 127.0.0.1",
            f"ConnectPort {allowed_port}",
        ]
        if auth:
            lines.append(f"BasicAuth {USER} {PASSWORD}")
        conf = self.dir / "tinyproxy.conf"
        conf.write_text("\n".join(lines) + "\n")
        proc = harness.Proc([TINYPROXY, "-d", "-c", str(conf)], self.dir, "tinyproxy")
        self.addCleanup(proc.stop)
        harness.wait_port(port, timeout=10)
        self.access_log = log
        return proc, port

    @defer.inlineCallbacks
    def test_tls_echo_through_proxy(self) -> Any:
        target = yield self._listen(protocol.Factory.forProtocol(Echo))
        _, pport = self._proxy(target)
        payload = os.urandom(2 * 1024 * 1024 + 17)
        ep = endpoints.wrapClientTLS(
            tls.client_options("127.0.0.1", self.cas),
            endpoint_for(reactor, "127.0.0.1", target, f"http://{USER}:{PASSWORD}@127.0.0.1:{pport}", 10),
        )
        client = Collect(len(payload))
        proto = yield endpoints.connectProtocol(ep, client)
        proto.transport.write(payload)
        received = yield client.done
        self.assertEqual(received, hashlib.sha256(payload).hexdigest())
        self.assertEqual(client.count, len(payload))
        log = self.access_log.read_text()
        self.assertIn(f"CONNECT 127.0.0.1:{target} HTTP/1.1", log)
        self.assertNotIn(PASSWORD, log)

    @defer.inlineCallbacks
    def test_websocket_through_proxy(self) -> Any:
        sfactory = WebSocketServerFactory("wss://127.0.0.1")
        sfactory.protocol = WSEcho
        sfactory.closed = defer.Deferred()  # type: ignore[attr-defined]
        target = yield self._listen(sfactory)
        _, pport = self._proxy(target)
        url = f"wss://127.0.0.1:{target}/$hc/hc1?sb-hc-action=listen"
        cfactory: Any = WebSocketClientFactory(url)
        cfactory.protocol = WSClient
        cfactory.chunks = [os.urandom(64 * 1024) for _ in range(16)]
        cfactory.digest = hashlib.sha256()
        cfactory.count = 0
        cfactory.done = defer.Deferred()
        cfactory.closed = defer.Deferred()
        expected = hashlib.sha256(b"".join(cfactory.chunks)).hexdigest()
        ep = endpoints.wrapClientTLS(
            tls.client_options("127.0.0.1", self.cas),
            endpoint_for(reactor, "127.0.0.1", target, f"http://{USER}:{PASSWORD}@127.0.0.1:{pport}", 10),
        )
        yield ep.connect(cfactory)
        received = yield cfactory.done
        self.assertEqual(received, expected)
        self.assertTrue((yield cfactory.closed))
        self.assertTrue((yield sfactory.closed))  # type: ignore[attr-defined]
        self.assertIn(f"CONNECT 127.0.0.1:{target} HTTP/1.1", self.access_log.read_text())

    @defer.inlineCallbacks
    def test_web_client_through_proxy(self) -> Any:
        from twisted.web import resource, server
        from twisted.web.client import Agent, readBody

        from hcm_twisted.core.proxy import AgentEndpointFactory

        class Hello(resource.Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                return b"runtime info"

        target = yield self._listen(server.Site(Hello()))
        _, pport = self._proxy(target)
        proxy_url = f"http://{USER}:{PASSWORD}@127.0.0.1:{pport}"
        agent = Agent.usingEndpointFactory(
            reactor,
            AgentEndpointFactory(reactor, lambda host: tls.client_options(host, self.cas), proxy_url),
        )
        response = yield agent.request(b"GET", f"https://127.0.0.1:{target}/hc1".encode())
        body = yield readBody(response)
        self.assertEqual((response.code, body), (200, b"runtime info"))
        self.assertIn(f"CONNECT 127.0.0.1:{target} HTTP/1.1", self.access_log.read_text())
        yield agent._pool.closeCachedConnections()

    @defer.inlineCallbacks
    def test_port_not_allowed(self) -> Any:
        target = yield self._listen(protocol.Factory.forProtocol(Echo))
        _, pport = self._proxy(target + 1 if target < 65535 else target - 1, auth=False)
        ep = endpoint_for(reactor, "127.0.0.1", target, f"http://127.0.0.1:{pport}", 10)
        err = yield self.assertFailure(
            endpoints.connectProtocol(ep, protocol.Protocol()), ProxyError
        )
        self.assertEqual(err.status, 403)
        self.assertIn(f"refused CONNECT 127.0.0.1:{target}", str(err))

    @defer.inlineCallbacks
    def test_wrong_password(self) -> Any:
        target = yield self._listen(protocol.Factory.forProtocol(Echo))
        _, pport = self._proxy(target)
        ep = endpoint_for(reactor, "127.0.0.1", target, f"http://{USER}:wrong-one@127.0.0.1:{pport}", 10)
        err = yield self.assertFailure(
            endpoints.connectProtocol(ep, protocol.Protocol()), ProxyError
        )
        self.assertIn(err.status, (401, 407))  # tinyproxy 1.11 answers 401
        self.assertNotIn("wrong-one", str(err))

    @defer.inlineCallbacks
    def test_proxy_down(self) -> Any:
        dead = harness.free_port()
        ep = endpoint_for(reactor, "127.0.0.1", 443, f"http://127.0.0.1:{dead}", 5)
        err = yield self.assertFailure(
            endpoints.connectProtocol(ep, protocol.Protocol()), ProxyError
        )
        self.assertIn(f"cannot connect to proxy 127.0.0.1:{dead}", str(err))
