"""``twist hcm-sender`` against a real ``hcm-relay``, with a small listener written with core.bridge.

app (this process) -> hcm-sender (process) -> hcm-relay (process) -> test listener (this process,
control channel + rendezvous bridged by :mod:`hcm_twisted.core.bridge`) -> echo endpoint (this
process).  Bytes are hashed where they are sent and where they arrive.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import tomli_w
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, protocol
from twisted.internet import reactor as _reactor
from twisted.trial.unittest import TestCase

from hcm_twisted.core import connstr, messages, sas, tls, urls
from hcm_twisted.core.bridge import Bridge, BridgeClientFactory, TcpLeg
from tests.e2e import harness
from tests.e2e.relayfixture import Relay, start_relay
from tests.e2e.stack import Echo, listen, run_pattern, sleep
from tests.timers import cancel_batched_timers

reactor: Any = _reactor


# -- pieces shared with the other sender e2e modules ------------------------------------------


def write_sender_config(directory: Path, relay: Relay, hcs: list[dict[str, Any]],
                        extra: dict[str, Any] | None = None) -> Path:
    doc: dict[str, Any] = {"ca-certificates": str(relay.ca_path)}
    doc.update(extra or {})
    doc["hybrid-connection"] = hcs
    path = directory / "hcm-sender.toml"
    path.write_text(tomli_w.dumps(doc))
    path.chmod(0o600)
    return path


def sender_hc(relay: Relay, hc: str, port: int) -> dict[str, Any]:
    return {
        "name": hc,
        "connection-string": relay.connection_string(hc, "defaultSender"),
        "listen": f"tcp:{port}:interface=127.0.0.1",
    }


# -- a small listener on the core bridge (what an agent worker does) ---------------------------


class _Control(WebSocketClientProtocol):  # type: ignore[misc]
    factory: _ControlFactory

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.closed.called:
            self.factory.closed.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = messages.parse(payload)
        if isinstance(message, messages.Accept):
            self.factory.owner.accept(message)


class _ControlFactory(WebSocketClientFactory):  # type: ignore[misc]
    protocol = _Control  # type: ignore[assignment]

    def __init__(self, url: str, headers: dict[str, str], owner: TestListener) -> None:
        super().__init__(url, headers=headers)
        self.owner = owner
        self.opened: defer.Deferred[_Control] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()


class TestListener:
    """Listens on an HC and bridges every accepted connection to ``endpoint_port``."""

    def __init__(self, relay: Relay, hc: str, endpoint_port: int) -> None:
        self.relay = relay
        self.cs = connstr.parse(relay.connection_string(hc))
        self.endpoint_port = endpoint_port
        self.cas = tls.load_ca_certificates(str(relay.ca_path))
        self.bridges: list[Bridge] = []
        self.control: _Control | None = None

    def _tls_endpoint(self, host: str, port: int) -> Any:
        return endpoints.wrapClientTLS(
            tls.client_options(host, self.cas),
            endpoints.HostnameEndpoint(reactor, host, port, timeout=10),
        )

    async def start(self) -> None:
        cs = self.cs
        assert cs.key_name and cs.key
        token = sas.mint(sas.audience_for(cs.host, cs.entity_path), cs.key_name, cs.key)
        factory = _ControlFactory(urls.listen_url(cs), {"ServiceBusAuthorization": token}, self)
        await self._tls_endpoint(cs.host, cs.port).connect(factory)
        self.control = await factory.opened

    def accept(self, message: messages.Accept) -> None:
        bridge = Bridge(reactor=reactor)
        self.bridges.append(bridge)
        _, host, port, _ = urls.split_ws_url(message.address)
        self._tls_endpoint(host, port).connect(
            BridgeClientFactory(message.address, bridge, reactor=reactor)
        ).addErrback(lambda f: bridge.fail(f.getErrorMessage()))
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.endpoint_port).connect(
            protocol.Factory.forProtocol(lambda: TcpLeg(bridge))
        ).addErrback(lambda f: bridge.fail(f.getErrorMessage()))

    async def stop(self) -> None:
        await defer.gatherResults([b.when_done() for b in self.bridges])
        if self.control is not None:
            self.control.sendClose(1000)
            await self.control.factory.closed


# -- the tests -----------------------------------------------------------------------------


class SenderRelayTests(TestCase):
    """A relay, a sender and a test listener per test."""

    timeout = 120

    def setUp(self) -> defer.Deferred[None]:  # type: ignore[override]
        self.addCleanup(cancel_batched_timers)
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        self.relay = start_relay(self.directory / "relay", hcs=("hc1", "lonely"))
        self.addCleanup(self.relay.stop)
        self.port = harness.free_port()
        self.no_listener_port = harness.free_port()
        self.bad_key_port = harness.free_port()
        bad_key = sender_hc(self.relay, "hc1", self.bad_key_port)
        bad_key["name"] = "badkey"
        bad_key["connection-string"] = bad_key["connection-string"].replace(
            harness.TEST_KEYS["defaultSender"], "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
        )
        config = write_sender_config(self.directory, self.relay, [
            sender_hc(self.relay, "hc1", self.port),
            sender_hc(self.relay, "lonely", self.no_listener_port),
            bad_key,
        ])
        self.sender = harness.twist("hcm-sender", config, cwd=self.directory)
        self.addCleanup(self.sender.stop)
        self.sender.wait_log(rf"hcm-sender listening on 127\.0\.0\.1:{self.no_listener_port}")
        self.sender.wait_log(rf"hcm-sender listening on 127\.0\.0\.1:{self.port}")
        self.echo = listen(Echo)
        self.addCleanup(self.echo.stopListening)
        self.listener = TestListener(self.relay, "hc1", self.echo.getHost().port)
        return defer.ensureDeferred(self.listener.start())

    def tearDown(self) -> defer.Deferred[None]:  # type: ignore[override]
        return defer.ensureDeferred(self.listener.stop())

    @defer.inlineCallbacks
    def test_64mib_byte_exact(self) -> Any:
        size = 64 << 20
        started = time.monotonic()
        client = yield run_pattern(self.port, size)
        elapsed = time.monotonic() - started
        self.assertEqual(client.count, size)
        self.assertEqual(client.received.hexdigest(), client.sent.hexdigest())
        yield defer.gatherResults([b.when_done() for b in self.listener.bridges])
        (bridge,) = self.listener.bridges
        self.assertEqual((bridge.bytes_to_tcp, bridge.bytes_to_ws), (size, size))
        print(f"\n64 MiB echoed through sender+relay+listener in {elapsed:.2f} s "
              f"({2 * size / elapsed / 1e6:.0f} MB/s both ways together)")

    @defer.inlineCallbacks
    def test_50_concurrent_transfers(self) -> Any:
        sizes = [(i * 7919) % (512 * 1024) + 1 for i in range(50)]
        clients = yield defer.gatherResults([run_pattern(self.port, n) for n in sizes])
        for client, n in zip(clients, sizes, strict=True):
            self.assertEqual(client.count, n)
            self.assertEqual(client.received.hexdigest(), client.sent.hexdigest())
        self.assertEqual(len(self.listener.bridges), 50)

    @defer.inlineCallbacks
    def test_no_listener_closes_app_connection_fast(self) -> Any:
        before = self.sender.output().count("the relay did not connect it")
        started = time.monotonic()
        client = yield run_pattern(self.no_listener_port, 1000)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(client.count, 0)
        for _ in range(40):
            if self.sender.output().count("the relay did not connect it") > before:
                break
            yield sleep(0.05)
        log = self.sender.output()
        self.assertIn("lonely: connection from 127.0.0.1:", log)
        self.assertIn("404 Endpoint does not exist", log)
        self.assertNotIn(harness.TEST_KEYS["defaultSender"], log)
        self.assertNotIn("sig=", log)

    async def _refused(self, port: int, hc: str) -> str:
        marker = f"{hc}: connection from"
        before = self.sender.output().count(marker)
        started = time.monotonic()
        client = await run_pattern(port, 1000)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(client.count, 0)
        for _ in range(40):
            if self.sender.output().count(marker) > before:
                break
            await sleep(0.05)
        log = self.sender.output()
        self.assertNotIn(harness.TEST_KEYS["defaultSender"], log)
        self.assertNotIn("sig=", log)
        lines = [line for line in log.splitlines() if marker in line]
        self.assertTrue(lines, log[-2000:])
        return lines[-1]

    def test_auth_failure_is_logged(self) -> defer.Deferred[None]:
        async def run() -> None:
            line = await self._refused(self.bad_key_port, "badkey")
            self.assertIn("the relay did not connect it: 401 ", line)

        return defer.ensureDeferred(run())

    def test_relay_down(self) -> defer.Deferred[None]:
        """With the relay gone, app connections are closed at once (not left hanging)."""

        async def run() -> None:
            await self.listener.stop()
            self.relay.stop()
            line = await self._refused(self.port, "hc1")
            self.assertIn("cannot reach the relay", line)

        return defer.ensureDeferred(run())
