"""Tests for hcm_twisted.core.bridge without sockets (StringTransport + a scripted WebSocket peer)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import struct
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableDescriptor, IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from hcm_twisted.core.bridge import Bridge, BridgeClientFactory, TcpLeg
from tests.timers import cancel_now

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@implementer(IHalfCloseableDescriptor)
class HalfCloseTransport(StringTransport):
    """A StringTransport that records ``loseWriteConnection``."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def readConnectionLost(self, reason: Failure) -> None:
        pass

    def writeConnectionLost(self, reason: Failure) -> None:
        pass


def server_frame(payload: bytes, opcode: int = 2, fin: bool = True) -> bytes:
    """An unmasked frame, as a server sends it."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n <= 125:
        header = struct.pack("!BB", b0, n)
    elif n <= 0xFFFF:
        header = struct.pack("!BBH", b0, 126, n)
    else:
        header = struct.pack("!BBQ", b0, 127, n)
    return header + payload


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return server_frame(struct.pack("!H", code) + reason, opcode=8)


def parse_client_frames(data: bytes) -> tuple[list[tuple[int, bool, bytes]], bytes]:
    """Decode masked client frames: [(opcode, fin, payload)], rest."""
    frames = []
    while len(data) >= 2:
        b0, b1 = data[0], data[1]
        assert b1 & 0x80, "client frames must be masked"
        n = b1 & 0x7F
        i = 2
        if n == 126:
            if len(data) < 4:
                break
            n = struct.unpack("!H", data[2:4])[0]
            i = 4
        elif n == 127:
            if len(data) < 10:
                break
            n = struct.unpack("!Q", data[2:10])[0]
            i = 10
        if len(data) < i + 4 + n:
            break
        mask = data[i : i + 4]
        payload = bytes(c ^ mask[j % 4] for j, c in enumerate(data[i + 4 : i + 4 + n]))
        frames.append((b0 & 0x0F, bool(b0 & 0x80), payload))
        data = data[i + 4 + n :]
    return frames, data


class WsTransport(StringTransport):
    """autobahn unregisters producers when it drops a connection; real transports allow that."""

    def unregisterProducer(self) -> None:
        self.producer = None


class WsPeer:
    """A WebSocketClientLeg on a StringTransport, driven as the server would."""

    def __init__(self, bridge: Bridge) -> None:
        self.factory = BridgeClientFactory("ws://relay.test/$hc/hc1", bridge)
        self.proto: Any = self.factory.buildProtocol(None)
        self.transport = WsTransport()
        self.proto.makeConnection(self.transport)
        self._rest = b""

    def handshake(self, extra: bytes = b"") -> None:
        request = self.transport.value()
        key = re.search(rb"Sec-WebSocket-Key: (\S+)", request).group(1)  # type: ignore[union-attr]
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324
        self.transport.clear()
        self.proto.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n" + extra
        )

    def refuse(self, status: int, reason: bytes) -> None:
        self.transport.clear()
        self.proto.dataReceived(b"HTTP/1.1 %d %s\r\n\r\n" % (status, reason))

    def frames(self) -> list[tuple[int, bool, bytes]]:
        data = self._rest + self.transport.value()
        self.transport.clear()
        frames, self._rest = parse_client_frames(data)
        return frames

    def received(self) -> bytes:
        return b"".join(p for op, _, p in self.frames() if op in (0, 2))

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))


def tcp_leg(bridge: Bridge, half_close: bool = True) -> tuple[TcpLeg, StringTransport]:
    leg = TcpLeg(bridge)
    transport = HalfCloseTransport() if half_close else StringTransport()
    leg.makeConnection(transport)
    return leg, transport


class JoinTests(SynchronousTestCase):
    def test_tcp_first_is_paused_until_websocket_opens(self) -> None:
        """The sender's case: the app connection waits, paused, for the WebSocket."""
        bridge = Bridge(reactor=Clock())
        leg, tcp_t = tcp_leg(bridge)
        self.assertEqual(tcp_t.producerState, "paused")
        leg.dataReceived(b"early bytes")
        ws = WsPeer(bridge)
        self.assertEqual(tcp_t.producerState, "paused")
        ws.handshake()
        self.assertEqual(tcp_t.producerState, "producing")
        self.assertEqual(ws.frames(), [(2, True, b"early bytes")])
        self.assertIs(tcp_t.producer, bridge._ws_valve)
        self.assertIs(ws.transport.producer, bridge._tcp_valve)
        self.assertTrue(tcp_t.streaming and ws.transport.streaming)
        self.assertEqual(bridge.bytes_to_ws, 11)

    def test_websocket_first_is_paused_until_tcp_connects(self) -> None:
        """The agent's case: frames arriving with the handshake wait for TCP."""
        bridge = Bridge(reactor=Clock())
        ws = WsPeer(bridge)
        ws.handshake(extra=server_frame(b"with the 101") + server_frame(b"!", opcode=2))
        self.assertEqual(ws.transport.producerState, "paused")
        self.assertTrue(bridge.ws_paused)
        leg, tcp_t = tcp_leg(bridge)
        self.assertEqual(ws.transport.producerState, "producing")
        self.assertEqual(tcp_t.value(), b"with the 101!")
        self.assertEqual(bridge.bytes_to_tcp, 13)

    def test_nodelay_is_requested(self) -> None:
        calls: list[bool] = []

        class NoDelayTransport(HalfCloseTransport):
            def setTcpNoDelay(self, enabled: bool) -> None:
                calls.append(enabled)

        bridge = Bridge(reactor=Clock())
        TcpLeg(bridge).makeConnection(NoDelayTransport())
        self.assertEqual(calls, [True])


class FlowControlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.bridge = Bridge(reactor=Clock())
        self.leg, self.tcp_t = tcp_leg(self.bridge)
        self.ws = WsPeer(self.bridge)
        self.ws.handshake()

    def tcp_producer(self) -> Any:
        """What the TCP transport pauses when its write buffer is full."""
        return self.tcp_t.producer

    def ws_producer(self) -> Any:
        return self.ws.transport.producer

    def test_full_tcp_buffer_pauses_websocket_reading(self) -> None:
        self.tcp_producer().pauseProducing()
        self.assertEqual(self.ws.transport.producerState, "paused")
        self.assertEqual(self.tcp_t.producerState, "producing")
        self.tcp_producer().resumeProducing()
        self.assertEqual(self.ws.transport.producerState, "producing")

    def test_full_websocket_buffer_pauses_tcp_reading(self) -> None:
        self.ws_producer().pauseProducing()
        self.assertEqual(self.tcp_t.producerState, "paused")
        self.assertEqual(self.ws.transport.producerState, "producing")
        self.ws_producer().resumeProducing()
        self.assertEqual(self.tcp_t.producerState, "producing")

    def test_consumer_lost_does_not_close_other_leg(self) -> None:
        """Twisted's stopProducing (consumer gone) resumes, it does not disconnect."""
        self.tcp_producer().pauseProducing()
        self.tcp_producer().stopProducing()
        self.assertEqual(self.ws.transport.producerState, "producing")
        self.assertFalse(self.ws.transport.disconnecting)

    def test_bytes_exact_both_ways(self) -> None:
        rnd = os.urandom(300_000)
        sent_up = hashlib.sha256()
        # TCP -> WebSocket in uneven chunks, each one binary message.
        offsets = [0, 1, 126, 127, 65535, 65536, 65537, 200_000, 300_000]
        for a, b in zip(offsets, offsets[1:], strict=False):
            self.leg.dataReceived(rnd[a:b])
            sent_up.update(rnd[a:b])
        frames = self.ws.frames()
        self.assertTrue(all(op == 2 and fin for op, fin, _ in frames))
        self.assertEqual(len(frames), len(offsets) - 1)
        self.assertEqual(hashlib.sha256(b"".join(p for _, _, p in frames)).digest(), sent_up.digest())
        # WebSocket -> TCP: one fragmented message, delivered a few bytes at a time.
        wire = (
            server_frame(rnd[:1000], opcode=2, fin=False)
            + server_frame(rnd[1000:70000], opcode=0, fin=False)
            + server_frame(rnd[70000:], opcode=0, fin=True)
        )
        for i in range(0, len(wire), 4093):
            self.ws.proto.dataReceived(wire[i : i + 4093])
        self.assertEqual(hashlib.sha256(self.tcp_t.value()).digest(), hashlib.sha256(rnd).digest())
        self.assertEqual(self.bridge.bytes_to_tcp, len(rnd))
        self.assertEqual(self.bridge.bytes_to_ws, len(rnd))

    def test_frames_forwarded_before_message_ends(self) -> None:
        """A big message is streamed to TCP as it arrives, never reassembled."""
        payload = os.urandom(100_000)
        frame = server_frame(payload)
        self.ws.proto.dataReceived(frame[:50_000])
        self.assertEqual(self.tcp_t.value(), payload[: 50_000 - 10])
        self.ws.proto.dataReceived(frame[50_000:])
        self.assertEqual(self.tcp_t.value(), payload)


class CloseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.bridge = Bridge(reactor=self.clock, linger=30)
        self.leg, self.tcp_t = tcp_leg(self.bridge)
        self.ws = WsPeer(self.bridge)
        self.ws.handshake()
        self.done: list[Bridge] = []
        self.bridge.when_done().addCallback(self.done.append)

    def test_tcp_eof_sends_close_1000_after_data_and_keeps_receiving(self) -> None:
        self.leg.dataReceived(b"last words")
        self.leg.readConnectionLost()
        frames = self.ws.frames()
        self.assertEqual(frames[0], (2, True, b"last words"))
        self.assertEqual(frames[1][0], 8)
        self.assertEqual(struct.unpack("!H", frames[1][2][:2])[0], 1000)
        # The peer may still send until it answers the Close.
        self.ws.proto.dataReceived(server_frame(b"reply"))
        self.assertEqual(self.tcp_t.value(), b"reply")
        self.assertFalse(self.tcp_t.disconnecting)
        self.ws.proto.dataReceived(close_frame(1000))
        self.ws.lose()
        self.assertTrue(self.tcp_t.disconnecting)
        self.assertEqual(self.done, [])
        self.leg.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.done, [self.bridge])

    def test_tcp_close_sends_close_1000(self) -> None:
        self.leg.connectionLost(Failure(ConnectionDone()))
        frames = self.ws.frames()
        self.assertEqual([op for op, _, _ in frames], [8])
        self.assertEqual(struct.unpack("!H", frames[0][2][:2])[0], 1000)
        self.ws.proto.dataReceived(close_frame(1000))
        self.ws.lose()
        self.assertEqual(self.done, [self.bridge])

    def test_websocket_close_half_closes_tcp(self) -> None:
        self.ws.proto.dataReceived(server_frame(b"request") + close_frame(1000))
        self.assertEqual(self.tcp_t.value(), b"request")
        self.assertTrue(self.tcp_t.write_closed)  # type: ignore[attr-defined]
        self.assertFalse(self.tcp_t.disconnecting)
        self.assertEqual(self.ws.frames(), [])  # Close not answered yet
        # The endpoint answers, then ends: the answer goes out before our Close.
        self.leg.dataReceived(b"response")
        self.leg.readConnectionLost()
        frames = self.ws.frames()
        self.assertEqual(frames[0], (2, True, b"response"))
        self.assertEqual(frames[1][0], 8)
        self.assertTrue(self.tcp_t.disconnecting)
        self.leg.connectionLost(Failure(ConnectionDone()))
        self.ws.lose()
        self.assertEqual(self.done, [self.bridge])
        self.assertEqual(self.bridge.bytes_to_ws, 8)
        self.assertEqual(self.bridge.bytes_to_tcp, 7)

    def test_close_without_status_code_is_graceful(self) -> None:
        """A Close with no status code (what ``ws.close()`` in Node sends) is a normal end:
        TCP is half-closed, then closed with a FIN after what it still had, never reset."""
        aborted: list[bool] = []
        self.tcp_t.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        self.ws.proto.dataReceived(server_frame(b"request") + server_frame(b"", opcode=8))
        self.assertTrue(self.tcp_t.write_closed)  # type: ignore[attr-defined]
        self.leg.dataReceived(b"response")
        self.leg.readConnectionLost()
        self.assertEqual(self.ws.frames()[0], (2, True, b"response"))
        self.ws.lose()
        self.assertTrue(self.tcp_t.disconnecting)
        self.assertEqual(aborted, [])
        self.assertIsNone(self.bridge.failure)

    def test_close_without_status_code_after_tcp_eof(self) -> None:
        """The same when TCP had already ended: the Close answers ours, no reset."""
        aborted: list[bool] = []
        self.tcp_t.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        self.leg.dataReceived(b"last")
        self.leg.readConnectionLost()
        self.ws.proto.dataReceived(server_frame(b"", opcode=8))
        self.ws.lose()
        self.assertTrue(self.tcp_t.disconnecting)
        self.assertEqual(aborted, [])

    def test_websocket_close_without_half_close_support(self) -> None:
        bridge = Bridge(reactor=self.clock)
        _, tcp_t = tcp_leg(bridge, half_close=False)
        ws = WsPeer(bridge)
        ws.handshake()
        ws.proto.dataReceived(server_frame(b"x") + close_frame(1000))
        self.assertEqual(tcp_t.value(), b"x")
        self.assertTrue(tcp_t.disconnecting)

    def test_websocket_error_close_ends_tcp(self) -> None:
        self.ws.proto.dataReceived(server_frame(b"partial") + close_frame(1011, b"oops"))
        self.assertEqual(self.tcp_t.value(), b"partial")
        self.assertFalse(self.tcp_t.write_closed)  # type: ignore[attr-defined]
        frames = self.ws.frames()
        self.assertEqual([op for op, _, _ in frames], [8])  # answered at once
        self.ws.lose()
        self.assertTrue(self.tcp_t.disconnecting)

    def test_websocket_lost_ends_tcp(self) -> None:
        self.ws.lose()
        self.assertTrue(self.tcp_t.disconnecting)
        self.leg.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.done, [self.bridge])

    def test_linger_bounds_half_close(self) -> None:
        self.ws.proto.dataReceived(close_frame(1000))
        self.clock.advance(29)
        self.assertFalse(self.tcp_t.disconnecting)
        self.clock.advance(2)
        self.assertTrue(self.tcp_t.disconnecting)
        self.assertEqual(self.bridge.close_reason, "half-close linger expired")


class FailureTests(SynchronousTestCase):
    def test_handshake_refused_closes_tcp_with_reason(self) -> None:
        bridge = Bridge(reactor=Clock())
        leg, tcp_t = tcp_leg(bridge)
        ws = WsPeer(bridge)
        ws.refuse(404, b"Endpoint does not exist.")
        ws.lose()
        self.assertTrue(tcp_t.disconnecting)
        self.assertEqual(bridge.failure, "404 Endpoint does not exist.")
        leg.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(bridge.done)

    def test_fail_before_websocket(self) -> None:
        bridge = Bridge(reactor=Clock())
        leg, tcp_t = tcp_leg(bridge)
        bridge.fail("cannot connect: refused")
        self.assertTrue(tcp_t.disconnecting)
        leg.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(bridge.done)
        self.assertEqual(bridge.failure, "cannot connect: refused")

    def test_fail_before_tcp(self) -> None:
        """The agent's case: the endpoint is unreachable after the rendezvous opened."""
        bridge = Bridge(reactor=Clock())
        ws = WsPeer(bridge)
        ws.handshake()
        bridge.fail("endpoint unreachable")
        frames = ws.frames()
        self.assertEqual(frames[0][0], 8)
        self.assertEqual(struct.unpack("!H", frames[0][2][:2])[0], 1011)
        ws.proto.dataReceived(close_frame(1011))
        ws.lose()
        self.assertTrue(bridge.done)


# -- one real-socket check: app -> bridge -> WebSocket -> bridge -> endpoint ---------------

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol  # noqa: E402
from twisted.internet import defer, endpoints, protocol  # noqa: E402
from twisted.internet import reactor as _reactor  # noqa: E402
from twisted.trial.unittest import TestCase  # noqa: E402

from hcm_twisted.core.bridge import WebSocketLeg, tune_factory  # noqa: E402

reactor: Any = _reactor


class _Endpoint(protocol.Protocol):
    """Echo (or hash) everything; the test can pause its reading."""

    def __init__(self, owner: LoopbackTests) -> None:
        self.owner = owner
        self.hash = hashlib.sha256()
        self.count = 0

    def connectionMade(self) -> None:
        self.owner.endpoints.append(self)
        if self.owner.pause_endpoint:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)
        if self.owner.echo:
            self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.owner.endpoint_done.append(self)


implementer(IHalfCloseableProtocol)(_Endpoint)


class _ServerLeg(WebSocketLeg, WebSocketServerProtocol):  # type: ignore[misc]
    owner: LoopbackTests

    def onConnect(self, request: Any) -> None:
        self.bridge = Bridge()
        self.owner.far_bridges.append(self.bridge)
        bridge = self.bridge
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.owner.endpoint_port)
        d = ep.connect(protocol.Factory.forProtocol(lambda: TcpLeg(bridge)))
        d.addErrback(lambda f: bridge.fail(f.getErrorMessage()))


class _Client(protocol.Protocol):
    def __init__(self, payload: bytes, chunk: int = 65536) -> None:
        self.payload = payload
        self.chunk = chunk
        self.received = hashlib.sha256()
        self.count = 0
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)  # type: ignore[union-attr]
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received.update(data)
        self.count += len(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.closed.callback(None)


implementer(IHalfCloseableProtocol)(_Client)


class LoopbackTests(TestCase):
    """Two bridges back to back over real loopback sockets (what sender, relay and agent do)."""

    timeout = 60

    def setUp(self) -> None:
        self.echo = True
        self.pause_endpoint = False
        self.endpoints: list[_Endpoint] = []
        self.endpoint_done: list[_Endpoint] = []
        self.far_bridges: list[Bridge] = []
        self.near_bridges: list[Bridge] = []
        port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, protocol.Factory.forProtocol(lambda: _Endpoint(self)), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        self.endpoint_port = port.getHost().port
        wsf = WebSocketServerFactory("ws://127.0.0.1")
        owner = self

        class Leg(_ServerLeg):
            pass

        Leg.owner = owner
        wsf.protocol = Leg
        tune_factory(wsf)
        ws_port = reactor.listenTCP(0, wsf, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(ws_port.stopListening)
        ws_url = f"ws://127.0.0.1:{ws_port.getHost().port}/$hc/hc1"

        class AppSide(protocol.Factory):
            def buildProtocol(self, addr: Any) -> TcpLeg:
                bridge = Bridge()
                owner.near_bridges.append(bridge)
                f = BridgeClientFactory(ws_url, bridge)
                reactor.connectTCP(  # type: ignore[attr-defined]
                    "127.0.0.1", ws_port.getHost().port, f
                )
                return TcpLeg(bridge)

        app_port = reactor.listenTCP(0, AppSide(), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(app_port.stopListening)
        self.app_port = app_port.getHost().port

    @defer.inlineCallbacks
    def tearDown(self) -> Any:  # type: ignore[override]
        yield defer.gatherResults([b.when_done() for b in self.near_bridges + self.far_bridges])
        for _ in range(100):
            if len(self.endpoint_done) == len(self.endpoints):
                break
            yield deferLater(0.01)
        cancel_now()

    def connect(self, payload: bytes) -> defer.Deferred[_Client]:
        client = _Client(payload)
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.app_port)
        return endpoints.connectProtocol(ep, client).addCallback(lambda _: client)

    @defer.inlineCallbacks
    def test_echo_byte_exact_with_half_close(self) -> Any:
        payload = os.urandom(8 << 20)
        client = yield self.connect(payload)
        yield client.closed
        self.assertEqual(client.count, len(payload))
        self.assertEqual(client.received.hexdigest(), hashlib.sha256(payload).hexdigest())
        yield defer.gatherResults([b.when_done() for b in self.near_bridges + self.far_bridges])
        near = self.near_bridges[0]
        self.assertEqual((near.bytes_to_ws, near.bytes_to_tcp), (len(payload), len(payload)))

    @defer.inlineCallbacks
    def test_slow_endpoint_pauses_the_app(self) -> Any:
        """A stalled endpoint stops reading of the app: memory stays bounded."""
        self.echo = False
        self.pause_endpoint = True
        payload = os.urandom(64 << 20)
        client = yield self.connect(payload)
        for _ in range(200):
            yield deferLater(0.02)
            if self.near_bridges and self.near_bridges[0].tcp_paused:
                break
        yield deferLater(0.3)
        near, far = self.near_bridges[0], self.far_bridges[0]
        self.assertTrue(near.tcp_paused)
        self.assertTrue(far.ws_paused)
        # Kernel socket buffers and two transport buffers hold the rest.
        self.assertLess(near.bytes_to_ws, 24 << 20)
        self.endpoints[0].transport.resumeProducing()  # type: ignore[union-attr]
        yield client.closed
        yield defer.gatherResults([b.when_done() for b in self.near_bridges + self.far_bridges])
        self.assertEqual(self.endpoints[0].count, len(payload))
        self.assertEqual(self.endpoints[0].hash.hexdigest(), hashlib.sha256(payload).hexdigest())


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater as _later

    return _later(reactor, seconds, lambda: None)  # type: ignore[arg-type]


# -- property: any chunking, any fragmentation, bytes arrive exactly -------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


class ChunkingProperties(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(
        data=st.binary(min_size=0, max_size=70_000),
        tcp_cuts=st.lists(st.integers(min_value=0, max_value=70_000), max_size=8),
        frame_cuts=st.lists(st.integers(min_value=0, max_value=70_000), max_size=6),
        wire_chunk=st.integers(min_value=1, max_value=9000),
    )
    def test_bytes_exact(self, data: bytes, tcp_cuts: list[int], frame_cuts: list[int],
                         wire_chunk: int) -> None:
        bridge = Bridge(reactor=Clock())
        leg, tcp_t = tcp_leg(bridge)
        ws = WsPeer(bridge)
        ws.handshake()
        # TCP -> WebSocket, cut anywhere.
        points = sorted({0, len(data), *(c for c in tcp_cuts if c < len(data))})
        for a, b in zip(points, points[1:], strict=False):
            leg.dataReceived(data[a:b])
        self.assertEqual(ws.received(), data)
        # WebSocket -> TCP: one message in fragments, fed to the protocol in wire chunks.
        points = sorted({0, len(data), *(c for c in frame_cuts if c < len(data))})
        pieces = [data[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]
        wire = b"".join(
            server_frame(p, opcode=2 if i == 0 else 0, fin=i == len(pieces) - 1)
            for i, p in enumerate(pieces)
        )
        for i in range(0, len(wire), wire_chunk):
            ws.proto.dataReceived(wire[i : i + wire_chunk])
        self.assertEqual(tcp_t.value(), data)
        self.assertEqual((bridge.bytes_to_ws, bridge.bytes_to_tcp), (len(data), len(data)))
