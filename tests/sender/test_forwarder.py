"""Tests for hcm_twisted.sender.forwarder without sockets."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from typing import Any
from urllib.parse import unquote

from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.core import connstr, sas
from hcm_twisted.sender.config import SenderHc
from hcm_twisted.sender.forwarder import Forwarder
from tests.sender.common import CS, KEY
from tests.timers import cancel_now

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _WsTransport(StringTransport):
    def unregisterProducer(self) -> None:
        self.producer = None


class FakeRelay:
    """An endpoint: connects the factory's protocol to a StringTransport, or fails."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.protocols: list[Any] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        if self.fail:
            return defer.fail(ConnectionRefusedError("Connection refused"))
        proto = factory.buildProtocol(None)
        proto.makeConnection(_WsTransport())
        self.protocols.append(proto)
        return defer.succeed(proto)


class TestForwarder(Forwarder):
    relay: FakeRelay

    def relay_endpoint(self) -> Any:
        return self.relay


def make(cs: str = CS, fail: bool = False) -> TestForwarder:
    hc = SenderHc("hc1", connstr.parse(cs), listen="tcp:0")
    f = TestForwarder(hc, Clock(), token_lifetime=600)
    f.relay = FakeRelay(fail)
    return f


def accept(f: Forwarder) -> tuple[Any, StringTransport]:
    leg = f.buildProtocol(None)
    transport = StringTransport()
    leg.makeConnection(transport)
    return leg, transport


def answer(proto: Any, status_line: bytes) -> None:
    request = proto.transport.value()
    key = re.search(rb"Sec-WebSocket-Key: (\S+)", request).group(1)  # type: ignore[union-attr]
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324
    proto.transport.clear()
    if status_line.startswith(b"HTTP/1.1 101"):
        proto.dataReceived(status_line + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    else:
        proto.dataReceived(status_line + b"\r\n\r\n")


class _Clean(SynchronousTestCase):
    def setUp(self) -> None:
        # autobahn arms its handshake timeouts on the global reactor's batched timers.
        self.addCleanup(cancel_now)


class HeaderTests(_Clean):
    def test_token_is_minted_for_the_hc_with_send_rights(self) -> None:
        token = make().headers()["ServiceBusAuthorization"]
        rule = sas.Rule("defaultSender", KEY, "", frozenset({"Send"}))
        parsed = sas.verify(token, [rule], ["localhost"], "hc1", "Send")
        self.assertEqual(parsed.audience, "http://localhost/hc1/")
        self.assertLess(abs(parsed.expiry - (time.time() + 600)), 5)

    def test_sas_connection_string_is_used_as_is(self) -> None:
        tok = sas.mint("http://localhost/hc1", "defaultSender", KEY)
        f = make(f"Endpoint=sb://localhost:9443/;EntityPath=hc1;SharedAccessSignature={tok}")
        self.assertEqual(f.headers(), {"ServiceBusAuthorization": tok})

    def test_anonymous(self) -> None:
        self.assertEqual(make("Endpoint=sb://localhost:9443/;EntityPath=hc1").headers(), {})


class ForwardTests(_Clean):
    def test_joined(self) -> None:
        f = make()
        leg, app = accept(f)
        self.assertEqual(app.producerState, "paused")
        (ws,) = f.relay.protocols
        request = ws.transport.value()
        self.assertRegex(request, rb"GET /\$hc/hc1\?sb-hc-action=connect&sb-hc-id=[0-9a-f-]{36} HTTP/1.1")
        self.assertIn(b"ServiceBusAuthorization: SharedAccessSignature ", request)
        self.assertIn(b"Host: localhost:9443", request)
        answer(ws, b"HTTP/1.1 101 Switching Protocols")
        self.assertEqual(app.producerState, "producing")
        self.assertEqual((f.stats.accepted, f.stats.open), (1, 1))
        leg.dataReceived(b"hello")
        self.assertIn(b"\x82", ws.transport.value())
        leg.connectionLost(Failure(ConnectionDone()))
        ws.dataReceived(b"\x88\x02\x03\xe8")  # the relay answers the Close
        ws.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((f.stats.open, f.stats.joined, f.stats.failed), (0, 1, 0))
        self.assertEqual(f.stats.bytes_to_relay, 5)

    def test_no_listener_closes_app_and_logs_reason(self) -> None:
        f = make()
        with capturedLogs() as events:
            leg, app = accept(f)
            (ws,) = f.relay.protocols
            answer(ws, b"HTTP/1.1 404 Endpoint does not exist.")
            ws.connectionLost(Failure(ConnectionDone()))
            self.assertTrue(app.disconnecting)
            leg.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((f.stats.failed, f.stats.open), (1, 0))
        self.assertEqual(f.stats.last_error, "404 Endpoint does not exist.")
        self.assertEqual(f.stats.failures_by_reason, {"404": 1})
        text = "\n".join(formatEvent(e) for e in events)
        self.assertRegex(text, "hc1: connection from 192.168.1.1:54321 closed, the relay did not "
                               r"connect it: 404 Endpoint does not exist. \(id [0-9a-f-]{36}\)")
        self.assertNotIn(KEY, text)
        self.assertNotIn("sig=", unquote(text))

    def test_relay_unreachable(self) -> None:
        f = make(fail=True)
        leg, app = accept(f)
        self.assertTrue(app.disconnecting)
        leg.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(f.stats.failed, 1)
        self.assertIn("cannot reach the relay: Connection was refused", f.stats.last_error or "")

    def test_close_all(self) -> None:
        f = make()
        leg, app = accept(f)
        f.close_all("stopping")
        self.assertTrue(app.disconnecting)
