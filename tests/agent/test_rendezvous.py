"""Accept, reject and bridge, scripted without sockets."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.agent.listener import HcSpec
from hcm_twisted.agent.rendezvous import Acceptor, default_tcp_endpoints, first_subprotocol
from hcm_twisted.core import messages
from tests.agent.wsfake import (
    FakeNetwork,
    client_frames,
    close_frame,
    parse_request,
    server_frame,
    switching_protocols,
    text_messages,
    use_clock,
)

ADDRESS = "wss://gw.relay.example:9443/$hc/hc1/sfx?a=b&sb-hc-action=accept&sb-hc-id=abc_G1"


def accept_message(**headers: str) -> messages.Accept:
    hdrs = {"Sec-WebSocket-Key": "k", "Host": "relay.example"}
    hdrs.update(headers)
    return messages.Accept(address=ADDRESS, id="abc_G1", connect_headers=hdrs)


class AcceptorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        use_clock(self, self.clock)
        self.relay = FakeNetwork()
        self.tcp = FakeNetwork()
        self.acceptor = self.make()

    def make(self, endpoint: str | None = "127.0.0.1:7001") -> Acceptor:
        spec = HcSpec(name="hc1", url="wss://relay.example:9443/$hc/hc1?sb-hc-action=listen",
                      endpoint=endpoint, token="t", connect_timeout=5.0)
        return Acceptor(spec, self.clock, relay_endpoints=self.relay, tcp_endpoints=self.tcp.tcp)

    def open_ws(self, index: int = -1, protocol: str | None = None) -> tuple[Any, StringTransport]:
        proto, transport = self.relay.connections[index]
        request = transport.value()
        transport.clear()
        proto.dataReceived(switching_protocols(request, protocol))
        return proto, transport

    def test_both_legs_at_once_and_bridged(self) -> None:
        """Endpoint and relay are dialled together; bytes flow both ways once both are up."""
        self.tcp.hold = True
        self.acceptor.accept(accept_message())
        # Both attempts started before either finished.
        self.assertEqual(len(self.tcp.attempts), 1)
        self.assertEqual(len(self.relay.attempts), 1)
        tcp_ep = self.tcp.attempts[0]
        self.assertEqual((tcp_ep.host, tcp_ep.port, tcp_ep.timeout), ("127.0.0.1", 7001, 5.0))
        relay_ep = self.relay.attempts[0]
        self.assertEqual((relay_ep.host, relay_ep.port, relay_ep.secure), ("gw.relay.example", 9443, True))
        # The upgrade request waits for the endpoint.
        self.assertEqual(self.relay.last[1].value(), b"")
        d, factory = self.tcp.held[0]
        tcp_proto: Any = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7001))
        tcp_t = StringTransport()
        tcp_proto.makeConnection(tcp_t)
        d.callback(tcp_proto)
        self.assertIs(self.acceptor.endpoint_reachable, True)
        # The accept address is used unchanged, without a token.
        target, headers = parse_request(self.relay.last[1].value())
        self.assertEqual(target, ADDRESS[len("wss://gw.relay.example:9443"):])
        self.assertNotIn("servicebusauthorization", headers)
        self.assertNotIn("sec-websocket-protocol", headers)
        ws, ws_t = self.open_ws()
        # Sender -> endpoint
        ws.dataReceived(server_frame(b"hello endpoint", opcode=0x2))
        self.assertEqual(tcp_t.value(), b"hello endpoint")
        # Endpoint -> sender
        tcp_proto.dataReceived(b"hello sender")
        self.assertEqual(client_frames(ws_t.value()), [(0x2, b"hello sender")])
        counters = self.acceptor.counters()
        self.assertEqual(
            counters,
            {"open": 1, "accepted": 1, "rejected": 0, "bytes_in": 14, "bytes_out": 12,
             "endpoint_reachable": True},
        )
        # The sender closes; the endpoint's side finishes; counters keep the totals.
        ws.dataReceived(close_frame(1000))
        tcp_proto.connectionLost(Failure(ConnectionDone()))
        ws.connectionLost(Failure(ConnectionDone()))
        counters = self.acceptor.counters()
        self.assertEqual((counters["open"], counters["accepted"], counters["bytes_in"],
                          counters["bytes_out"]), (0, 1, 14, 12))

    def test_first_subprotocol_only(self) -> None:
        """A sender's subprotocol offer: the rendezvous requests only the first."""
        self.acceptor.accept(accept_message(**{"Sec-WebSocket-Protocol": "chat, superchat"}))
        _, headers = parse_request(self.relay.last[1].value())
        self.assertEqual(headers["sec-websocket-protocol"], "chat")
        self.assertEqual(first_subprotocol({"sec-websocket-protocol": " , x"}), "x")
        self.assertIsNone(first_subprotocol({}))

    def assert_rejected_502(self) -> None:
        # One relay connection, and its one request is the reject URL.
        self.assertEqual(len(self.relay.connections), 1)
        target, headers = parse_request(self.relay.last[1].value())
        query = parse_qs(urlsplit(target).query)
        self.assertEqual(urlsplit(target).path, "/$hc/hc1/sfx")
        self.assertEqual(query["a"], ["b"])
        self.assertEqual(query["sb-hc-action"], ["accept"])
        self.assertEqual(query["sb-hc-id"], ["abc_G1"])
        self.assertEqual(query["sb-hc-statusCode"], ["502"])
        self.assertTrue(unquote(query["sb-hc-statusDescription"][0]).startswith("Endpoint unreachable"))
        self.assertNotIn("sec-websocket-protocol", headers)
        counters = self.acceptor.counters()
        self.assertEqual((counters["rejected"], counters["accepted"], counters["endpoint_reachable"]),
                         (1, 0, False))
        # The relay confirms with 410; nothing stays open.
        proto, transport = self.relay.last
        with capturedLogs() as events:
            proto.dataReceived(b"HTTP/1.1 410 Gone\r\n\r\n")
            proto.connectionLost(Failure(ConnectionLost()))
        self.assertIn("rejected connection abc_G1", " ".join(formatEvent(e) for e in events))
        self.assertEqual(self.acceptor.counters()["open"], 0)

    def test_endpoint_refused_rejects(self) -> None:
        """An endpoint refused at once: the rendezvous connection carries the reject."""
        self.tcp.refuse = True
        self.acceptor.accept(accept_message(**{"Sec-WebSocket-Protocol": "chat"}))
        self.assert_rejected_502()

    def test_endpoint_fails_later_rejects(self) -> None:
        """The endpoint fails while the relay connection waits: the same connection rejects."""
        self.tcp.hold = True
        self.acceptor.accept(accept_message())
        self.assertEqual(self.relay.last[1].value(), b"")
        d, _ = self.tcp.held[0]
        d.errback(Failure(ConnectionRefusedError("nobody home")))
        self.assert_rejected_502()

    def test_reject_refused_by_relay_logged(self) -> None:
        """A reject the relay refuses (stale address: 403) is logged as a failure."""
        self.tcp.refuse = True
        self.acceptor.accept(accept_message())
        proto, _ = self.relay.last
        with capturedLogs() as events:
            proto.dataReceived(b"HTTP/1.1 403 Invalid rendezvous\r\n\r\n")
            proto.connectionLost(Failure(ConnectionLost()))
        text = " ".join(formatEvent(e) for e in events)
        self.assertIn("rejecting connection abc_G1 failed: 403", text)

    def test_no_endpoint_rejects(self) -> None:
        acceptor = self.make(endpoint=None)
        acceptor.accept(accept_message())
        self.assertEqual(self.tcp.attempts, [])
        target, _ = parse_request(self.relay.last[1].value())
        self.assertIn("sb-hc-statusCode=502", target)
        self.assertEqual(acceptor.rejected, 1)

    def test_rendezvous_unreachable_closes_endpoint(self) -> None:
        """If the rendezvous cannot be dialled, the endpoint connection is closed."""
        self.relay.refuse = True
        self.acceptor.accept(accept_message())
        _, tcp_t = self.tcp.last
        self.assertTrue(tcp_t.disconnecting)

    def test_drain_waits_then_closes(self) -> None:
        """Drain waits for open connections up to the timeout, then closes them (1001)."""
        self.acceptor.accept(accept_message())
        ws, ws_t = self.open_ws()
        tcp_proto, tcp_t = self.tcp.last
        d = self.acceptor.drain(5.0)
        self.assertNoResult(d)
        self.clock.advance(5.0)
        frames = client_frames(ws_t.value())
        self.assertEqual(int.from_bytes(frames[-1][1][:2], "big"), 1001)
        tcp_proto.connectionLost(Failure(ConnectionDone()))
        ws.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)
        # Draining: new accepts are rejected.
        self.acceptor.accept(accept_message())
        self.assertIn("sb-hc-statusCode=503", parse_request(self.relay.last[1].value())[0])

    def test_rendezvous_only_request_answered_501(self) -> None:
        """A rendezvous-only HTTP request is answered 501 on its rendezvous, then closed."""
        request = messages.Request(address="wss://h:9443/$hc/hc1?sb-hc-action=request&sb-hc-id=r9",
                                   id="r9")
        self.acceptor.answer_request(request)
        proto, transport = self.open_ws()
        full = messages.Request(address=request.address, id="r9", request_target="/hc1/big",
                                method="POST", body=True)
        proto.dataReceived(server_frame(messages.encode(full).encode()))
        proto.dataReceived(server_frame(b"x" * 1000, opcode=0x2))  # its body
        # A later request from the same sender connection arrives on the same rendezvous.
        again = messages.Request(address=request.address, id="r10", request_target="/hc1/x",
                                 method="GET")
        proto.dataReceived(server_frame(messages.encode(again).encode()))
        replies = text_messages(transport.value())
        self.assertEqual([r["response"]["requestId"] for r in replies], ["r9", "r10"])
        self.assertEqual({r["response"]["statusCode"] for r in replies}, {501})
        # Idle for a minute: closed by us.
        self.clock.advance(60)
        self.assertEqual(client_frames(transport.value())[-1][0], 0x8)




class EndpointChoiceTests(SynchronousTestCase):
    def test_ip_literals_skip_the_resolver(self) -> None:
        """IP literals get plain TCP endpoints; host names a HostnameEndpoint."""
        make = default_tcp_endpoints(MemoryReactorClock())
        self.assertIsInstance(make("127.0.0.1", 80, 5), TCP4ClientEndpoint)
        self.assertIsInstance(make("::1", 80, 5), TCP6ClientEndpoint)
        self.assertIsInstance(make("db.internal", 80, 5), HostnameEndpoint)
