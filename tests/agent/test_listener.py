"""The control channel: ClientService + autobahn, scripted without sockets."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from OpenSSL import SSL
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.agent import listener as L
from hcm_twisted.core import messages, sas
from hcm_twisted.core.errors import MalformedInput
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

URL = "wss://relay.example:9443/$hc/hc1?sb-hc-action=listen"
KEY = "bGlzdGVuLWtleS1mb3ItdGVzdHMtb25seS0xMTExMTE="


def token(lifetime: float = 3600, now: float = 1_700_000_000) -> str:
    return sas.mint("http://relay.example/hc1/", "defaultListener", KEY, lifetime, now=now)


def spec(**kw: Any) -> L.HcSpec:
    values: dict[str, Any] = dict(
        name="hc1", url=URL, endpoint="127.0.0.1:7001", token=token(), ping_interval=30.0
    )
    values.update(kw)
    return L.HcSpec(**values)


class ListenerTestBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        use_clock(self, self.clock)
        self.net = FakeNetwork()
        self.accepts: list[messages.Accept] = []
        self.requests: list[messages.Request] = []
        self.listener = self.make()

    def make(self, rng: float = 0.5, **kw: Any) -> L.Listener:
        return L.Listener(
            spec(**kw),
            self.clock,
            on_accept=self.accepts.append,
            on_request=lambda r, ch: self.requests.append(r),
            endpoint_maker=self.net,
            rng=lambda: rng,
            wallclock=lambda: 1234.0,
        )

    def open_channel(self) -> tuple[Any, StringTransport]:
        """Answer the newest upgrade request with 101."""
        proto, transport = self.net.last
        request = transport.value()
        transport.clear()
        proto.dataReceived(switching_protocols(request))
        return proto, transport

    def refuse_upgrade(self, status_line: str) -> None:
        proto, transport = self.net.last
        proto.dataReceived(f"HTTP/1.1 {status_line}\r\nContent-Length: 0\r\n\r\n".encode())
        # autobahn aborts the connection; StringTransport only records it.
        proto.connectionLost(_lost())

    def next_delay(self) -> float:
        calls = self.clock.getDelayedCalls()
        retries = [c for c in calls if "reconnect" in repr(c)]
        self.assertEqual(len(retries), 1, calls)
        return retries[0].getTime() - self.clock.seconds()


def _lost() -> Failure:
    return Failure(ConnectionLost("test"))


class ConnectTests(ListenerTestBase):
    def test_upgrade_request(self) -> None:
        """The upgrade goes to the listen URL with the token header and a fresh sb-hc-id."""
        self.listener.start()
        self.assertEqual(self.listener.state, L.CONNECTING)
        endpoint = self.net.attempts[-1]
        self.assertEqual((endpoint.host, endpoint.port, endpoint.secure), ("relay.example", 9443, True))
        target, headers = parse_request(self.net.last[1].value())
        self.assertEqual(headers["servicebusauthorization"], token())
        query = parse_qs(urlsplit(target).query)
        self.assertEqual(urlsplit(target).path, "/$hc/hc1")
        self.assertEqual(query["sb-hc-action"], ["listen"])
        first_id = query["sb-hc-id"][0]
        self.assertEqual(len(first_id), 36)
        # Drop it: the reconnect uses another id.
        self.net.last[0].connectionLost(_lost())
        self.clock.advance(0)
        target2, _ = parse_request(self.net.last[1].value())
        second_id = parse_qs(urlsplit(target2).query)["sb-hc-id"][0]
        self.assertNotEqual(first_id, second_id)

    def test_connected_status_and_log(self) -> None:
        """An open channel is 'connected' with its start time and logs the HC name."""
        self.listener.start()
        with capturedLogs() as events:
            proto, transport = self.open_channel()
        self.assertEqual(self.listener.state, L.CONNECTED)
        status = self.listener.status()
        self.assertEqual(status["state"], "connected")
        self.assertEqual(status["connected_since"], 1234.0)
        self.assertIsNone(status["last_error"])
        self.assertEqual(status["token_expiry"], sas.expiry_of(token()))
        texts = [e.get("log_format", "").format(**e) for e in events if "log_format" in e]
        self.assertIn("control channel connected: hc1", texts)

    def test_ping_and_nodelay_options(self) -> None:
        """The channel pings every ping_interval and asks for TCP_NODELAY."""
        self.listener.start()
        proto, transport = self.net.last
        self.assertEqual(proto.factory.autoPingInterval, 30.0)
        self.assertTrue(0 < proto.factory.autoPingTimeout <= 30.0)
        self.assertTrue(proto.factory.tcpNoDelay)
        self.open_channel()
        # autobahn schedules the first ping on the (test) clock.
        self.clock.advance(30.5)
        frames = [op for op, _ in client_frames(transport.value())]
        self.assertIn(0x9, frames)


    def test_dead_path_noticed(self) -> None:
        """No pong within the timeout: the channel is dropped and reconnected."""
        self.listener.start()
        proto, transport = self.open_channel()
        self.clock.advance(30.5)  # ping sent
        self.assertFalse(transport.disconnecting)
        self.clock.advance(16)  # no pong
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(_lost())
        self.assertEqual(self.listener.reconnects, 1)
        self.assertIn("ping timeout", self.listener.last_error or "")
        self.assertEqual(round(self.next_delay(), 3), 0.0)


class BackoffTests(ListenerTestBase):
    def test_backoff_sequence(self) -> None:
        """Refused connects back off 0, 1, 2, 5, 10, 30, 30 s."""
        self.net.refuse = True
        self.listener.start()
        delays = []
        for _ in range(7):
            delays.append(round(self.next_delay(), 3))
            self.assertEqual(self.listener.state, L.BACKING_OFF)
            self.assertIn("ConnectionRefusedError", self.listener.last_error or "")
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [0.0, 1.0, 2.0, 5.0, 10.0, 30.0, 30.0])
        self.assertEqual(len(self.net.attempts), 8)

    def test_jitter_bounds(self) -> None:
        """Jitter stays within +-20 % of the base delay."""
        for rng, factor in ((0.0, 0.8), (1.0, 1.2)):
            clock = MemoryReactorClock()
            use_clock(self, clock)
            self.clock = clock
            self.net = FakeNetwork()
            self.net.refuse = True
            listener = self.make(rng=rng)
            listener.start()
            self.clock.advance(0)  # first retry (0 s)
            self.assertAlmostEqual(self.next_delay(), 1.0 * factor)

    def test_success_resets_after_stable_channel(self) -> None:
        """A channel that stayed up long enough resets the back-off to 0 s."""
        self.net.refuse = True
        self.listener.start()
        for _ in range(3):
            self.clock.advance(self.next_delay())
        self.net.refuse = False
        self.clock.advance(self.next_delay())
        proto, _ = self.open_channel()
        self.clock.advance(L.STABLE_AFTER + 1)
        proto.dataReceived(close_frame(1011, "NameRenewalFailed"))
        proto.connectionLost(_lost())
        self.assertEqual(round(self.next_delay(), 3), 0.0)
        self.assertEqual(self.listener.reconnects, 1)
        self.assertIn("1011", self.listener.last_error or "")

    def test_flapping_channel_keeps_backing_off(self) -> None:
        """A channel closed right after opening does not reconnect in a tight loop."""
        self.listener.start()
        delays = []
        for _ in range(4):
            proto, _ = self.open_channel()
            proto.dataReceived(close_frame(1008, "token expired"))
            proto.connectionLost(_lost())
            delays.append(round(self.next_delay(), 3))
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [0.0, 1.0, 2.0, 5.0])
        self.assertIn("1008", self.listener.last_error or "")

    def test_not_found_retried_slowly(self) -> None:
        """404 on listen is reported and retried every 60 s, not hammered."""
        self.listener.start()
        self.refuse_upgrade("404 Endpoint does not exist.")
        self.assertEqual(self.listener.state, L.FAILED)
        self.assertIn("404", self.listener.last_error or "")
        self.assertIn("Endpoint does not exist.", self.listener.last_error or "")
        self.assertEqual(round(self.next_delay(), 3), 60.0)
        self.clock.advance(60)
        self.assertEqual(self.listener.state, L.CONNECTING)
        self.refuse_upgrade("404 Endpoint does not exist.")
        self.assertEqual(round(self.next_delay(), 3), 60.0)
        self.assertEqual(len(self.net.attempts), 2)

    def test_unauthorized_reported_with_reason(self) -> None:
        """401 carries the relay's reason; a new token reconnects at once."""
        self.listener.start()
        self.refuse_upgrade("401 ExpiredToken: the token has expired.")
        self.assertEqual(self.listener.state, L.FAILED)
        self.assertEqual(self.listener.last_error, "HTTP 401 ExpiredToken: the token has expired.")
        self.assertEqual(round(self.next_delay(), 3), 0.0)
        self.clock.advance(0)
        self.refuse_upgrade("403 Unauthorized: the rule does not grant Listen.")
        self.assertIn("403", self.listener.last_error or "")
        self.assertEqual(round(self.next_delay(), 3), 1.0)
        attempts = len(self.net.attempts)
        fresh = token(now=1_700_000_100)
        self.listener.renew(fresh)
        self.assertEqual(len(self.net.attempts), attempts + 1)
        _, headers = parse_request(self.net.last[1].value())
        self.assertEqual(headers["servicebusauthorization"], fresh)

    def test_tls_failure_reported(self) -> None:
        """A TLS failure before the upgrade is reported as such: 'failed', still retried."""
        self.listener.start()
        proto, _ = self.net.last
        proto.connectionLost(Failure(SSL.Error([("SSL routines", "", "certificate verify failed")])))
        self.assertEqual(self.listener.state, L.FAILED)
        self.assertIn("TLS", self.listener.last_error or "")
        self.assertIn("certificate verify failed", self.listener.last_error or "")
        self.assertEqual(round(self.next_delay(), 3), 0.0)

    def test_endpoint_raising_counts_as_failure(self) -> None:
        """An endpoint that raises at once is a failed attempt, retried with back-off."""
        def broken(host: str, port: int, secure: bool, timeout: float) -> Any:
            raise ValueError("bad host")

        listener = L.Listener(spec(), self.clock, on_accept=self.accepts.append,
                              endpoint_maker=broken, rng=lambda: 0.5)
        listener.start()
        self.assertEqual(listener.state, L.BACKING_OFF)
        self.assertEqual(listener.last_error, "ValueError: bad host")
        self.assertEqual(round(self.next_delay(), 3), 0.0)
        self.successResultOf(listener.stop())

    def test_stop_while_backing_off(self) -> None:
        """Stopping cancels the pending retry."""
        self.net.refuse = True
        self.listener.start()
        self.clock.advance(0)
        d = self.listener.stop()
        self.successResultOf(d)
        self.assertEqual(self.listener.state, L.STOPPED)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_while_connected_closes_cleanly(self) -> None:
        """Stopping a live channel sends Close 1000 and does not reconnect."""
        self.listener.start()
        proto, transport = self.open_channel()
        d = self.listener.stop()
        self.assertNoResult(d)
        self.assertEqual(client_frames(transport.value())[-1][0], 0x8)
        proto.dataReceived(close_frame(1000))
        proto.connectionLost(_lost())
        self.successResultOf(d)
        self.assertEqual(self.listener.state, L.STOPPED)
        self.assertEqual(self.listener.reconnects, 0)
        attempts = len(self.net.attempts)
        self.clock.advance(100)
        self.assertEqual(len(self.net.attempts), attempts)


class MessageTests(ListenerTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.listener.start()
        self.proto, self.transport = self.open_channel()

    def send(self, obj: Any) -> None:
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.proto.dataReceived(server_frame(data))

    def test_renew_sends_renew_token(self) -> None:
        """renew() sends {"renewToken":{"token":...}} and reconnects use the new token."""
        fresh = token(now=1_700_000_500)
        self.listener.renew(fresh)
        self.assertEqual(text_messages(self.transport.value()), [{"renewToken": {"token": fresh}}])
        self.assertEqual(self.listener.token_expiry, sas.expiry_of(fresh))
        self.proto.connectionLost(_lost())
        self.clock.advance(0)
        _, headers = parse_request(self.net.last[1].value())
        self.assertEqual(headers["servicebusauthorization"], fresh)

    def test_renew_while_connecting(self) -> None:
        """A token that arrives during the upgrade is sent as soon as the channel opens."""
        self.proto.connectionLost(_lost())
        self.clock.advance(0)
        fresh = token(now=1_700_000_900)
        self.listener.renew(fresh)
        _, headers = parse_request(self.net.last[1].value())
        self.assertNotEqual(headers["servicebusauthorization"], fresh)
        _, transport = self.open_channel()
        self.assertEqual(text_messages(transport.value()), [{"renewToken": {"token": fresh}}])

    def test_accept_dispatched(self) -> None:
        accept = messages.Accept(address="wss://relay.example:9443/$hc/hc1?sb-hc-action=accept&sb-hc-id=a1",
                                 id="a1", connect_headers={"Sec-WebSocket-Key": "x"})
        self.send(accept.to_json())
        self.assertEqual(self.accepts, [accept])

    def test_malformed_ignored(self) -> None:
        """Malformed messages are logged without their content and skipped."""
        secret = "SharedAccessSignature sr=x&sig=SECRET"
        with capturedLogs() as events:
            self.send(b"not json " + secret.encode())
            self.send({"accept": 5})
            self.send({"accept": {"id": "no address", "token": secret}})
            self.send([1, 2])
            self.send({"somethingNew": {}})
            self.proto.dataReceived(server_frame(b"\x00\xff", opcode=0x2))
        self.assertEqual(self.listener.state, L.CONNECTED)
        self.assertEqual(self.accepts, [])
        text = " ".join(str(e) for e in events)
        self.assertNotIn("SECRET", text)
        # Still working afterwards.
        self.send({"accept": {"address": "wss://h/$hc/hc1?sb-hc-action=accept", "id": "a2"}})
        self.assertEqual(len(self.accepts), 1)

    def test_http_request_answered_501(self) -> None:
        """An HTTP-mode request gets a 501 response on the control channel."""
        self.send({"request": {"address": "wss://h/$hc/hc1?sb-hc-action=request&sb-hc-id=r1",
                               "id": "r1", "requestTarget": "/hc1/x", "method": "GET",
                               "requestHeaders": {}, "body": False}})
        [reply] = text_messages(self.transport.value())
        self.assertEqual(reply["response"]["requestId"], "r1")
        self.assertEqual(reply["response"]["statusCode"], 501)
        self.assertEqual(reply["response"]["statusDescription"], "Not Implemented")
        self.assertIs(reply["response"]["body"], False)
        self.assertEqual(self.requests, [])

    def test_rendezvous_only_request_handed_on(self) -> None:
        """A rendezvous-only request (no method) goes to the request handler."""
        self.send({"request": {"address": "wss://h/$hc/hc1?sb-hc-action=request&sb-hc-id=r2",
                               "id": "r2"}})
        self.assertEqual([r.id for r in self.requests], ["r2"])
        self.assertEqual(text_messages(self.transport.value()), [])


class SpecTests(SynchronousTestCase):
    def test_from_json(self) -> None:
        item = {"name": "hc1", "url": URL, "endpoint": "db:1433", "token": "t",
                "ca_certificates": ["/x/ca.pem"], "ping_interval": 10, "connect_timeout": 2}
        s = L.HcSpec.from_json(item)
        self.assertEqual((s.name, s.endpoint, s.ca_certificates, s.ping_interval), ("hc1", "db:1433", ("/x/ca.pem",), 10.0))
        self.assertNotIn("t", repr(s).replace("hc1", "").replace("HcSpec", "").replace("endpoint", ""))

    def test_from_json_errors(self) -> None:
        for bad, word in (
            ([], "object"),
            ({"url": URL, "token": "t"}, "name"),
            ({"name": "a", "url": "http://x", "token": "t"}, "url"),
            ({"name": "a", "url": URL}, "token"),
            ({"name": "a", "url": URL, "token": "t", "endpoint": "nohost"}, "endpoint"),
            ({"name": "a", "url": URL, "token": "t", "ping_interval": -1}, "ping_interval"),
        ):
            with self.assertRaises(MalformedInput) as cm:
                L.HcSpec.from_json(bad)
            self.assertIn(word, str(cm.exception))

    def test_host_port(self) -> None:
        self.assertEqual(L.parse_host_port("[::1]:80"), ("::1", 80))
        self.assertEqual(L.parse_host_port("db.internal:1433"), ("db.internal", 1433))
        self.assertRaises(MalformedInput, L.parse_host_port, "db:0")

    def test_fresh_id_replaces(self) -> None:
        url = L.with_fresh_id(URL + "&sb-hc-id=old", "new")
        self.assertEqual(parse_qs(urlsplit(url).query)["sb-hc-id"], ["new"])
