"""The relay's WebSocket side without sockets: handshakes, control channel, rendezvous, frames."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from twisted.internet.address import IPv4Address

from hcm_twisted.core import fast
from hcm_twisted.relay import server
from tests.relay.common import (
    Conn,
    RelayUnitTest,
    Transport,
    client_frame,
    close_frame,
    listen_token,
    parse_frames,
    send_token,
)


class HandshakeTests(RelayUnitTest):
    def test_listen_ok(self) -> None:
        conn = self.listen()
        self.assertEqual(len(self.hub.live_listeners(self.namespace.entities["hc1"])), 1)
        self.assertTrue(conn.proto.is_live_listener())

    def test_refusals(self) -> None:
        """Unknown HC 404, no token 401, wrong rights 403, suffix on listen 404, bad action 400."""
        cases = [
            ("/$hc/nope?sb-hc-action=listen", listen_token("nope", now=self.now()), "404"),
            ("/$hc/hc1?sb-hc-action=listen", None, "401"),
            ("/$hc/hc1?sb-hc-action=listen", send_token(now=self.now()), "403"),
            ("/$hc/hc1/x?sb-hc-action=listen", listen_token(now=self.now()), "404"),
            ("/$hc/hc1?sb-hc-action=dance", listen_token(now=self.now()), "400"),
            ("/$hc/hc1?sb-hc-action=listen",
             listen_token(now=self.now() - 7200, lifetime=60), "401"),
        ]
        for target, tok, status in cases:
            conn = self.open(target, {"ServiceBusAuthorization": tok} if tok else None)
            self.assertIn(f" {status} ", conn.status, target)
            self.assertTrue(conn.transport.disconnecting)
        self.assertIn("Endpoint does not exist.", self.open("/$hc/nope").status)

    def test_token_in_query_wins(self) -> None:
        tok = quote(listen_token(now=self.now()), safe="")
        conn = self.open(f"/$hc/hc1?sb-hc-action=listen&sb-hc-token={tok}",
                         {"ServiceBusAuthorization": "SharedAccessSignature garbage"})
        self.assertIn(" 101 ", conn.status)

    def test_max_listeners(self) -> None:
        for _ in range(25):
            self.listen()
        conn = self.open("/$hc/hc1?sb-hc-action=listen",
                         {"ServiceBusAuthorization": listen_token(now=self.now())})
        self.assertIn(" 403 ", conn.status)
        self.assertIn("MaximumListenersPerEndpoint", conn.status)

    def test_garbage_before_handshake(self) -> None:
        proto: Any = self.ws.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = Transport()
        proto.makeConnection(transport)
        proto.dataReceived(b"\x00\xff garbage\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400"))
        self.assertTrue(transport.disconnecting)

    def test_handshake_timeout(self) -> None:
        proto: Any = self.ws.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = Transport()
        proto.makeConnection(transport)
        proto.dataReceived(b"GET /$hc/hc1 HTTP/1.1\r\n")
        self.clock.advance(11)
        self.assertTrue(transport.disconnecting)


class ControlChannelTests(RelayUnitTest):
    def close_code(self, conn: Conn) -> int:
        frames = [f for f in conn.frames() if f[1] == 8]
        self.assertTrue(frames, "no close frame")
        return int.from_bytes(frames[0][2][:2], "big")

    def test_garbage_json_closes_1008(self) -> None:
        conn = self.listen()
        other = self.listen()
        conn.text(b"{not json")
        self.assertEqual(self.close_code(conn), 1008)
        self.assertEqual(other.frames(), [])
        self.assertTrue(other.proto.is_live_listener())

    def test_oversized_text_closes_1009(self) -> None:
        conn = self.listen()
        conn.send(client_frame(1, b"x" * 70_000))
        self.assertEqual(self.close_code(conn), 1009)

    def test_unexpected_binary_closes_1003_empty_ignored(self) -> None:
        conn = self.listen()
        conn.binary(b"")
        self.assertEqual(conn.frames(), [])
        conn.binary(b"data")
        self.assertEqual(self.close_code(conn), 1003)

    def test_unknown_message_ignored(self) -> None:
        conn = self.listen()
        conn.text(json.dumps({"futureThing": {"a": 1}}))
        self.assertEqual(conn.frames(), [])

    def test_bad_frames_end_one_connection(self) -> None:
        """Reserved opcode, unmasked frames: a protocol error closes that connection only."""
        conn = self.listen()
        conn.send(b"\x83\x80\x00\x00\x00\x00")  # reserved opcode 3
        self.assertEqual(self.close_code(conn), 1002)
        conn2 = self.listen()
        conn2.send(b"\x81\x03abc")  # not masked
        self.assertEqual(self.close_code(conn2), 1002)

    def test_ping_answered(self) -> None:
        conn = self.listen()
        conn.send(client_frame(9, b"hi"))
        self.assertEqual(conn.frames(), [(True, 10, b"hi")])
        conn.send(client_frame(10, b"stray"))
        self.assertEqual(conn.frames(), [])

    def test_lapse_and_renew(self) -> None:
        """A token lapses after expiry + grace (1008); renewToken moves the deadline."""
        renewed = self.listen(token=listen_token(lifetime=10, now=self.now()))
        lapsing = self.listen(token=listen_token(lifetime=10, now=self.now()))
        self.clock.advance(8)
        renewed.text(json.dumps({"renewToken": {"token": listen_token(lifetime=10,
                                                                       now=self.now())}}))
        self.assertEqual(renewed.frames(), [])
        self.clock.advance(4)  # 12 s: inside the 5 s grace
        self.assertEqual(lapsing.frames(), [])
        self.clock.advance(4)  # 16 s: past expiry + grace
        self.assertEqual(self.close_code(lapsing), 1008)
        self.assertEqual(renewed.frames(), [])
        self.clock.advance(10)  # renewed token (expiry 18 s) + grace passed
        self.assertEqual(self.close_code(renewed), 1008)

    def test_recycle_on_demand(self) -> None:
        """Hub.recycle_listeners closes live control channels with 1011 (Azure's recycle)."""
        a, b = self.listen(), self.listen("open")
        self.assertEqual(self.hub.recycle_listeners("open"), 1)
        self.assertEqual(a.frames(), [])
        self.assertEqual(self.close_code(b), 1011)
        self.assertEqual(self.hub.recycle_listeners(), 1)
        self.assertEqual(self.close_code(a), 1011)

    def test_bad_renew_closes_1008(self) -> None:
        conn = self.listen()
        conn.text(json.dumps({"renewToken": {"token": send_token(now=self.now())}}))
        self.assertEqual(self.close_code(conn), 1008)


class Joining(RelayUnitTest):
    def connect_sender(self, hc: str = "hc1", query: str = "", headers: dict[str, str] | None = None,
                       protocols: list[str] | None = None) -> Conn:
        hdrs = {"ServiceBusAuthorization": send_token(hc, now=self.now()), **(headers or {})}
        return self.open(f"/$hc/{hc}/suffix?{query}sb-hc-action=connect", hdrs, protocols)

    def accept_of(self, listener: Conn) -> dict[str, object]:
        frames = listener.frames()
        self.assertEqual(len(frames), 1)
        fin, opcode, payload = frames[0]
        self.assertEqual((fin, opcode), (True, 1))
        return json.loads(payload)["accept"]  # type: ignore[no-any-return]

    def rendezvous(self, address: str, protocols: list[str] | None = None) -> Conn:
        target = address[address.index("/$hc/"):]
        return self.open(target, protocols=protocols)

    def joined(self) -> tuple[Conn, Conn]:
        listener = self.listen()
        sender = self.connect_sender()
        self.assertEqual(sender.status, "")  # held
        accept = self.accept_of(listener)
        rdv = self.rendezvous(str(accept["address"]))
        self.assertIn(" 101 ", rdv.status)
        self._read_status(sender)
        self.assertIn(" 101 ", sender.status)
        return sender, rdv



class OneListenerTests(RelayUnitTest):
    config_overrides = {"max-listeners": 1}

    def test_closing_listener_does_not_count(self) -> None:
        first = self.listen()
        refused = self.open("/$hc/hc1?sb-hc-action=listen",
                            {"ServiceBusAuthorization": listen_token(now=self.now())})
        self.assertIn(" 403 ", refused.status)
        first.text(b"garbage")  # the relay closes it (1008); it is on its way out
        self.listen()


class ReloadTests(RelayUnitTest):
    def test_apply_namespace(self) -> None:
        """A reload adds HCs, closes listeners of deleted ones (1001), keeps the others."""
        from pathlib import Path

        from hcm_twisted.relay.namespace import Namespace, parse_config
        from tests.relay.common import config_dict

        kept, gone = self.listen(), self.listen("open")
        data = config_dict()
        data["hybrid-connection"] = [data["hybrid-connection"][0],
                                     {"name": "new", "authorization-rule":
                                      data["hybrid-connection"][0]["authorization-rule"]}]
        new = Namespace.open(parse_config(data, Path(self.namespace.config.state).parent))
        self.assertEqual(self.hub.apply_namespace(new), {"added": ["new"], "removed": ["open"]})
        frames = gone.frames()
        self.assertEqual(int.from_bytes(frames[0][2][:2], "big"), 1001)
        self.assertEqual(kept.frames(), [])
        self.assertIs(kept.proto.entity, new.entities["hc1"])
        self.listen("new")
        refused = self.open("/$hc/open?sb-hc-action=listen",
                            {"ServiceBusAuthorization": listen_token("open", now=self.now())})
        self.assertIn(" 404 ", refused.status)


class RecycleTimerTests(RelayUnitTest):
    config_overrides = {"listener-recycle": 100}

    def test_recycled_after_configured_lifetime(self) -> None:
        conn = self.listen()
        self.clock.advance(89)
        self.assertEqual(conn.frames(), [])
        self.clock.advance(11.5)
        frames = conn.frames()
        self.assertEqual(frames[0][1], 8)
        self.assertEqual(int.from_bytes(frames[0][2][:2], "big"), 1011)


class RendezvousTests(Joining):
    def test_no_listener_404(self) -> None:
        self.assertIn(" 404 ", self.connect_sender().status)

    def test_accept_message(self) -> None:
        listener = self.listen()
        sender = self.connect_sender(query="a=1&sb-hc-id=abc&", headers={"X-Thing": "v"},
                                     protocols=["p1", "p2"])
        accept = self.accept_of(listener)
        self.assertEqual(accept["id"], "abc")
        self.assertEqual(accept["address"],
                         "ws://localhost:9443/$hc/hc1/suffix?a=1&sb-hc-action=accept&sb-hc-id=abc")
        headers = accept["connectHeaders"]
        assert isinstance(headers, dict)
        self.assertEqual(headers["X-Thing"], "v")
        self.assertIn("Sec-WebSocket-Key", headers)
        self.assertNotIn("ServiceBusAuthorization", headers)
        self.assertEqual(accept["remoteEndpoint"], {"address": "127.0.0.1",
                                                    "port": sender.proto.transport.getPeer().port})
        rdv = self.rendezvous(str(accept["address"]), protocols=["p2"])
        self.assertIn(" 101 ", rdv.status)
        self.assertIn(b"Sec-WebSocket-Protocol: p2", sender.transport.value())

    def test_unbracketed_ipv6_host(self) -> None:
        """A Host of ``::1:9443`` is accepted; the accept address brackets it."""
        conn = self.open("/$hc/hc1?sb-hc-action=listen",
                         {"ServiceBusAuthorization": listen_token(now=self.now())}, host="::1:9443")
        self.assertIn(" 101 ", conn.status)
        self.connect_sender()
        accept = self.accept_of(conn)
        self.assertTrue(str(accept["address"]).startswith("ws://[::1]:9443/$hc/hc1/suffix?"))

    def test_accept_timeout_504(self) -> None:
        listener = self.listen()
        sender = self.connect_sender()
        accept = self.accept_of(listener)
        self.clock.advance(29)
        self.assertEqual(sender.transport.value(), b"")
        self.clock.advance(2)
        self._read_status(sender)
        self.assertIn(" 504 ", sender.status)
        self.assertIn(" 403 ", self.rendezvous(str(accept["address"])).status)

    def test_reject(self) -> None:
        listener = self.listen()
        sender = self.connect_sender()
        accept = self.accept_of(listener)
        rdv = self.rendezvous(
            f"{accept['address']}&sb-hc-statusCode=418&sb-hc-statusDescription="
            f"{quote('No tea today', safe='')}")
        self.assertIn(" 410 ", rdv.status)
        self._read_status(sender)
        self.assertEqual(sender.status, "HTTP/1.1 418 No tea today")

    def test_frames_forwarded_as_they_arrive(self) -> None:
        """Each received chunk goes out at once as a complete frame; boundaries kept."""
        sender, rdv = self.joined()
        payload = bytes(range(256)) * 40  # 10240 bytes
        frame = client_frame(2, payload)
        sender.send(frame[:5000])  # part of one frame
        got = rdv.frames()
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0][:2], (False, 2))
        sender.send(frame[5000:])
        rest = rdv.frames()
        self.assertEqual(rest[-1][0], True)
        self.assertTrue(all(op == 0 for _, op, _ in rest))
        self.assertEqual(got[0][2] + b"".join(p for _, _, p in rest), payload)
        # A fragmented text message stays one text message.
        rdv.send(client_frame(1, b"hel", fin=False) + client_frame(9, b"p")
                 + client_frame(0, b"lo", fin=True))
        self.assertEqual(rdv.frames(), [(True, 10, b"p")])  # the ping stays on its leg
        out = sender.frames()
        self.assertEqual([(f, o) for f, o, _ in out], [(False, 1), (True, 0)])
        self.assertEqual(b"".join(p for _, _, p in out), b"hello")

    def test_flow_control(self) -> None:
        """Each leg is the other's producer: a full buffer pauses the other side's reads."""
        sender, rdv = self.joined()
        producer: Any = rdv.transport.producer
        self.assertIsNotNone(producer)
        producer.pauseProducing()
        self.assertEqual(sender.transport.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(sender.transport.producerState, "producing")
        other: Any = sender.transport.producer
        other.pauseProducing()
        self.assertEqual(rdv.transport.producerState, "paused")
        # stopProducing (a leg's connection lost) never closes the other leg directly.
        other.stopProducing()
        self.assertFalse(rdv.transport.disconnecting)

    def test_close_forwarded_half_close(self) -> None:
        sender, rdv = self.joined()
        sender.send(close_frame(4000, b"bye"))
        self.assertEqual(sender.frames(), [])  # not answered yet: half-closed
        self.assertEqual(rdv.frames(), [(True, 8, b"\x0f\xa0bye")])
        rdv.binary(b"late")
        self.assertEqual(sender.frames(), [(True, 2, b"late")])
        rdv.send(close_frame(1000))
        self.assertEqual(sender.frames(), [(True, 8, b"\x03\xe8")])
        self.assertTrue(sender.transport.disconnecting)

    def test_half_closed_leg_answered_when_other_is_lost(self) -> None:
        sender, rdv = self.joined()
        sender.send(close_frame(1000))
        rdv.proto.connectionLost(server.Failure(ConnectionError("gone")))
        frames = sender.frames()
        self.assertEqual(frames, [(True, 8, b"\x03\xf3The other side was lost.")])
        self.assertTrue(sender.transport.disconnecting)

    def test_lost_leg_closes_other_1011(self) -> None:
        """A leg lost without a closing handshake: the other gets 1011, not a graceful code."""
        sender, rdv = self.joined()
        sender.proto.connectionLost(server.Failure(ConnectionError("gone")))
        frames = rdv.frames()
        self.assertEqual(frames[0][1], 8)
        self.assertEqual(int.from_bytes(frames[0][2][:2], "big"), 1011)

    def test_sender_gone_before_accept(self) -> None:
        listener = self.listen()
        sender = self.connect_sender()
        accept = self.accept_of(listener)
        sender.proto.connectionLost(server.Failure(ConnectionError("gone")))
        self.assertEqual(self.hub.pending, {})
        self.assertIn(" 403 ", self.rendezvous(str(accept["address"])).status)


class SnifferTests(RelayUnitTest):
    def raw(self, data: bytes) -> Transport:
        proto: Any = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2))
        transport = Transport()
        proto.makeConnection(transport)
        proto.dataReceived(data)
        return transport

    def test_plain_get_on_hc_path_is_400(self) -> None:
        t = self.raw(b"GET /$hc/hc1/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertTrue(t.value().startswith(b"HTTP/1.1 400 This endpoint is only for web-socket"))

    def test_unknown_hc_404(self) -> None:
        t = self.raw(b"GET /nope/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertTrue(t.value().startswith(b"HTTP/1.1 404"))

    def test_websocket_upgrade_goes_to_autobahn(self) -> None:
        tok = quote(listen_token(now=self.now()), safe="")
        t = self.raw(
            f"GET /$hc/hc1?sb-hc-action=listen&sb-hc-token={tok} HTTP/1.1\r\n"
            "Host: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            .encode())
        self.assertTrue(t.value().startswith(b"HTTP/1.1 101"), t.value()[:100])

    def test_oversized_head_431(self) -> None:
        t = self.raw(b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 40_000)
        self.assertTrue(t.value().startswith(b"HTTP/1.1 431"))
        self.assertTrue(t.disconnecting)

    def test_head_timeout(self) -> None:
        t = self.raw(b"GET / HTTP/1.1\r\n")
        self.clock.advance(11)
        self.assertTrue(t.disconnecting)


class HelperTests(RelayUnitTest):
    def test_frame_header_sizes(self) -> None:
        for n in (0, 125, 126, 65535, 65536):
            (fin, op, payload), = parse_frames(fast.frame_header(2, True, n) + b"x" * n)
            self.assertEqual((fin, op, len(payload)), (True, 2, n))

    def test_host_for_url(self) -> None:
        self.assertEqual(server.host_for_url("::1:9443"), "[::1]:9443")
        self.assertEqual(server.host_for_url("[::1]:9443"), "[::1]:9443")
        self.assertEqual(server.host_for_url("localhost:9443"), "localhost:9443")


class FuzzTests(Joining):
    """Whatever bytes arrive, only that connection suffers; nothing raises out of the relay."""

    def test_random_bytes_on_control_channel_and_legs(self) -> None:
        from hypothesis import given, settings
        from hypothesis import strategies as st

        @settings(max_examples=60, deadline=None, database=None)
        @given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=6),
               st.booleans())
        def check(chunks: list[bytes], masked_first: bool) -> None:
            listener = self.listen()
            bystander = self.listen()
            for chunk in chunks:
                data = client_frame(1, chunk) if masked_first else chunk
                listener.proto.dataReceived(data)  # must not raise
                masked_first = False
            self.assertTrue(bystander.proto.is_live_listener())
            sender = self.open("/$hc/hc1?sb-hc-action=connect",
                               {"ServiceBusAuthorization": send_token(now=self.now())})
            for conn in (listener, bystander):
                conn.take()
            for chunk in chunks:
                sender.proto.dataReceived(chunk)
            for proto in list(self.hub.connections):
                proto.connectionLost(server.Failure(ConnectionError("done")))
            self.assertEqual(self.hub.pending, {})
            self.assertEqual(self.hub.connections, set())
            self.assertEqual(self.hub.live_listeners(self.namespace.entities["hc1"]), [])

        check()

    def test_random_bytes_on_joined_legs(self) -> None:
        from hypothesis import given, settings
        from hypothesis import strategies as st

        @settings(max_examples=40, deadline=None, database=None)
        @given(st.lists(st.binary(min_size=0, max_size=200), min_size=1, max_size=6))
        def check(chunks: list[bytes]) -> None:
            sender, rdv = self.joined()
            for chunk in chunks:
                sender.proto.dataReceived(chunk)
                rdv.proto.dataReceived(client_frame(2, chunk))
            for proto in list(self.hub.connections):
                proto.connectionLost(server.Failure(ConnectionError("done")))
            self.assertEqual(self.hub.pending, {})
            self.assertEqual(self.hub.connections, set())
            self.assertEqual(self.hub.live_listeners(self.namespace.entities["hc1"]), [])

        check()
