"""HTTP mode framing without sockets: request/response messages, bodies, deadlines."""

from __future__ import annotations

import json
import struct
from typing import Any
from xml.etree import ElementTree

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from hcm_twisted.relay import httpmode
from tests.relay.common import (
    Conn,
    RelayUnitTest,
    Transport,
    client_frame,
    close_frame,
    send_token,
)


class HttpConn:
    """An HTTP client connection to the relay's port (through the sniffer)."""

    def __init__(self, test: RelayUnitTest) -> None:
        self.proto = test.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 3))
        self.transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 3))
        self.proto.makeConnection(self.transport)

    def request(self, method: str, target: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> None:
        lines = [f"{method} {target} HTTP/1.1", "Host: localhost:9443",
                 f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        # After the first request head the sniffer has handed the connection over.
        proto = getattr(self.transport, "protocol", None) or self.proto
        proto.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def take_response(self) -> tuple[int, str, dict[str, str], bytes]:
        """The response so far, then forget it (the next one on this connection follows)."""
        out = self.response()
        self.transport.clear()
        return out

    def response(self) -> tuple[int, str, dict[str, str], bytes]:
        data = self.transport.value()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        _, code, reason = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding") == "chunked":
            out = b""
            while True:
                size_line, _, body = body.partition(b"\r\n")
                size = int(size_line, 16)
                if size == 0:
                    break
                out += body[:size]
                body = body[size + 2:]
            body = out
        return int(code), reason, headers, body


class HttpModeTests(RelayUnitTest):
    def messages_of(self, conn: Conn) -> list[tuple[int, bytes]]:
        return [(op, payload) for _, op, payload in conn.frames()]

    def test_request_on_control_channel_and_response(self) -> None:
        listener = self.listen()
        http = HttpConn(self)
        http.request("POST", "/hc1/a/b?x=1&sb-hc-id=zz&sb-hc-flag", b"body!",
                     {"ServiceBusAuthorization": send_token(now=self.now()),
                      "Content-Type": "text/plain", "Connection": "keep-alive"})
        (op1, text), (op2, body) = self.messages_of(listener)
        self.assertEqual((op1, op2, body), (1, 2, b"body!"))
        msg = json.loads(text)["request"]
        self.assertEqual(msg["requestTarget"], "/hc1/a/b?x=1&sb-hc-flag")
        self.assertEqual(msg["method"], "POST")
        self.assertTrue(msg["body"])
        self.assertEqual(msg["remoteEndpoint"], {"address": "127.0.0.1", "port": 3})
        self.assertEqual(msg["requestHeaders"], {"Content-Type": "text/plain"})
        self.assertTrue(msg["address"].startswith("ws://localhost:9443/$hc/hc1/a/b?"
                                                  "sb-hc-action=request&sb-hc-id="))
        self.assertEqual(http.transport.value(), b"")
        listener.text(json.dumps({"response": {"requestId": msg["id"], "statusCode": 207,
                                               "statusDescription": "Multi",
                                               "responseHeaders": {"X-A": "1",
                                                                   "Bad Name": "x",
                                                                   "X-B": "a\r\nInjected: 1"},
                                               "body": True}}))
        listener.send(client_frame(2, b"an", fin=False) + client_frame(0, b"swer"))
        code, reason, headers, body = http.response()
        self.assertEqual((code, reason, body), (207, "Multi", b"answer"))
        self.assertEqual(headers["x-a"], "1")
        self.assertEqual(headers["x-b"], "a Injected: 1")
        self.assertNotIn("injected", headers)
        self.assertNotIn("bad name", headers)
        self.assertEqual(headers["via"], "1.1 localhost")
        self.assertEqual(self.hub.pending, {})

    def test_body_false_then_empty_binary(self) -> None:
        listener = self.listen("open")
        http = HttpConn(self)
        http.request("GET", "/open/x")
        (_, text), = self.messages_of(listener)
        msg = json.loads(text)["request"]
        self.assertFalse(msg["body"])
        listener.text(json.dumps({"response": {"requestId": msg["id"], "statusCode": "204",
                                               "body": False}}))
        listener.binary(b"")
        self.assertEqual(http.response()[0], 204)
        self.assertEqual(listener.frames(), [])  # the channel is fine

    def test_rendezvous_only_above_64k(self) -> None:
        listener = self.listen("open")
        http = HttpConn(self)
        http.request("PUT", "/open/big", b"z" * 70_000)
        (_, text), = self.messages_of(listener)
        stub = json.loads(text)["request"]
        self.assertEqual(set(stub), {"address", "id"})
        rdv = self.open(stub["address"][stub["address"].index("/$hc/"):])
        self.assertIn(" 101 ", rdv.status)
        (op1, full), (op2, body) = self.messages_of(rdv)
        self.assertEqual((op1, op2, len(body)), (1, 2, 70_000))
        self.assertEqual(json.loads(full)["request"]["method"], "PUT")
        rdv.text(json.dumps({"response": {"requestId": stub["id"], "statusCode": 200,
                                          "body": True}}))
        rdv.send(client_frame(2, b"x" * 100_000, fin=False))
        # Streamed to the sender as it arrives.
        self.assertIn(b"x" * 1000, http.transport.value())
        # A slow HTTP client pauses the rendezvous it is fed from.
        channel: Any = http.transport.producer
        channel.pauseProducing()
        self.assertEqual(rdv.transport.producerState, "paused")
        channel.resumeProducing()
        self.assertEqual(rdv.transport.producerState, "producing")
        rdv.send(client_frame(0, b"y", fin=True))
        code, _, _, body = http.response()
        self.assertEqual((code, len(body), body[-1:]), (200, 100_001, b"y"))

    def _rendezvous_request(self, listener: Conn, http: HttpConn) -> tuple[Conn, str]:
        """A 70 kB PUT on ``http``: answered on the rendezvous it makes (204, no body)."""
        http.request("PUT", "/open/big", b"z" * 70_000)
        (_, text), = self.messages_of(listener)
        stub = json.loads(text)["request"]
        rdv = self.open(stub["address"][stub["address"].index("/$hc/"):])
        self.assertIn(" 101 ", rdv.status)
        (_, full), (_, body) = self.messages_of(rdv)
        self.assertEqual((json.loads(full)["request"]["method"], len(body)), ("PUT", 70_000))
        rdv.text(json.dumps({"response": {"requestId": stub["id"], "statusCode": 204,
                                          "body": False}}))
        self.assertEqual(http.take_response()[0], 204)
        return rdv, stub["id"]

    def test_rendezvous_kept_for_the_senders_later_requests(self) -> None:
        """Spec section 7: once a sender's HTTP connection has a rendezvous, its later
        requests arrive on it (whatever their size) and are answered on it."""
        listener = self.listen("open")
        http = HttpConn(self)
        rdv, first_id = self._rendezvous_request(listener, http)
        self.assertEqual(rdv.frames(), [], "the rendezvous stays open")
        # A small GET: on the rendezvous, not the control channel.
        http.request("GET", "/open/two?a=1&sb-hc-id=zz", headers={"X-Step": "2"})
        self.assertEqual(listener.frames(), [])
        (op, text), = self.messages_of(rdv)
        msg = json.loads(text)["request"]
        self.assertEqual((op, msg["method"], msg["requestTarget"], msg["body"]),
                         (1, "GET", "/open/two?a=1", False))
        self.assertEqual(msg["requestHeaders"], {"X-Step": "2"})
        self.assertNotEqual(msg["id"], first_id)
        rdv.text(json.dumps({"response": {"requestId": msg["id"], "statusCode": 200,
                                          "body": True}}))
        rdv.binary(b"two")
        self.assertEqual(http.take_response()[::3], (200, b"two"))
        # A POST with a small body: the request, then its body, on the rendezvous.
        http.request("POST", "/open/three", b"payload")
        (op1, text), (op2, body) = self.messages_of(rdv)
        msg = json.loads(text)["request"]
        self.assertEqual((op1, op2, msg["method"], msg["body"], body),
                         (1, 2, "POST", True, b"payload"))
        # A response for another request id is ignored; the right one is taken.
        rdv.text(json.dumps({"response": {"requestId": first_id, "statusCode": 500}}))
        self.assertEqual(http.transport.value(), b"")
        rdv.text(json.dumps({"response": {"requestId": msg["id"], "statusCode": 201,
                                          "body": False}}))
        self.assertEqual(http.take_response()[0], 201)
        self.assertEqual(listener.frames(), [])
        self.assertEqual(self.hub.pending, {})
        # The listener drops the rendezvous: the relay drops the sender's connection.
        self.assertFalse(http.transport.disconnecting)
        rdv.send(close_frame(1000))
        rdv.proto.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(http.transport.disconnecting)
        self.assertTrue(listener.proto.is_live_listener())

    def test_kept_rendezvous_closed_with_the_senders_connection(self) -> None:
        listener = self.listen("open")
        http = HttpConn(self)
        rdv, _ = self._rendezvous_request(listener, http)
        http.transport.protocol.connectionLost(Failure(ConnectionDone()))
        (fin, op, payload), = rdv.frames()
        self.assertEqual((op, struct.unpack("!H", payload[:2])[0]), (8, 1000))

    def test_connection_close_does_not_keep_the_rendezvous(self) -> None:
        listener = self.listen("open")
        http = HttpConn(self)
        http.request("PUT", "/open/big", b"z" * 70_000, {"Connection": "close"})
        (_, text), = self.messages_of(listener)
        stub = json.loads(text)["request"]
        rdv = self.open(stub["address"][stub["address"].index("/$hc/"):])
        rdv.take()
        rdv.text(json.dumps({"response": {"requestId": stub["id"], "statusCode": 200,
                                          "body": False}}))
        self.assertEqual(http.response()[0], 200)
        (_, op, payload), = rdv.frames()
        self.assertEqual((op, struct.unpack("!H", payload[:2])[0]), (8, 1000))

    def test_response_rendezvous_is_not_kept(self) -> None:
        """A rendezvous the listener opens only to send a large response is closed after
        it (hyco-https does not read requests from it); later requests use the control
        channel."""
        listener = self.listen("open")
        http = HttpConn(self)
        http.request("GET", "/open/one")
        (_, text), = self.messages_of(listener)
        msg = json.loads(text)["request"]
        rdv = self.open(msg["address"][msg["address"].index("/$hc/"):])
        self.assertIn(" 101 ", rdv.status)
        rdv.text(json.dumps({"response": {"requestId": msg["id"], "statusCode": 200,
                                          "body": True}}))
        rdv.binary(b"r" * 100_000)
        code, _, _, body = http.take_response()
        self.assertEqual((code, len(body)), (200, 100_000))
        (_, op, payload), = rdv.frames()
        self.assertEqual((op, struct.unpack("!H", payload[:2])[0]), (8, 1000))
        http.request("GET", "/open/two")
        (_, text), = self.messages_of(listener)
        self.assertEqual(json.loads(text)["request"]["requestTarget"], "/open/two")

    def test_deadline_504_and_no_listener_502(self) -> None:
        http = HttpConn(self)
        http.request("GET", "/open/x")
        self.assertEqual(http.response()[0], 502)
        listener = self.listen("open")
        http = HttpConn(self)
        http.request("GET", "/open/x")
        self.clock.advance(59)
        self.assertEqual(http.transport.value(), b"")
        self.clock.advance(2)
        code, _, _, body = http.response()
        self.assertEqual(code, 504)
        self.assertEqual(json.loads(body)["error"]["code"], "GatewayTimeout")
        self.assertEqual(self.hub.pending, {})
        self.assertTrue(listener.proto.is_live_listener())

    def test_listener_gone_502(self) -> None:
        listener = self.listen("open")
        http = HttpConn(self)
        http.request("GET", "/open/x")
        listener.proto.connectionLost(Failure(ConnectionError("x")))
        self.assertEqual(http.response()[0], 502)

    def test_request_headers_filter(self) -> None:
        from twisted.web.test.requesthelper import DummyRequest

        req: Any = DummyRequest([b""])
        for name, value in [(b"Host", b"h"), (b"Authorization", b"a"), (b"X-Y", b"1"),
                            (b"X-Y", b"2"), (b"ServiceBusAuthorization", b"t"),
                            (b"Transfer-Encoding", b"chunked")]:
            req.requestHeaders.addRawHeader(name, value)
        self.assertEqual(httpmode.request_headers(req, drop_authorization=True), {"X-Y": "1, 2"})
        self.assertEqual(httpmode.request_headers(req, drop_authorization=False),
                         {"Authorization": "a", "X-Y": "1, 2"})

    def test_runtime_entry(self) -> None:
        entity = self.namespace.entities["hc1"]
        root = ElementTree.fromstring(httpmode.runtime_entry(entity, 3))
        ns = "{http://schemas.microsoft.com/netservices/2010/10/servicebus/connect}"
        desc: Any = root.find(f"{{http://www.w3.org/2005/Atom}}content/{ns}HybridConnectionDescription")
        self.assertEqual([c.tag.replace(ns, "") for c in desc],
                         ["CreatedAt", "UpdatedAt", "RequiresClientAuthorization",
                          "UserMetadata", "ListenerCount"])
        self.assertEqual(desc.findtext(f"{ns}UserMetadata"),
                         '[{"key":"endpoint","value":"db:1433"}]')
        self.assertEqual(root.findtext("{http://www.w3.org/2005/Atom}title"), "hc1")


class BodyLimitTests(RelayUnitTest):
    """``max-request-body``: a larger body gets 413 before the relay stores it."""

    config_overrides = {"max-request-body": 1000}

    def test_at_the_limit_passes(self) -> None:
        listener = self.listen("open")
        http = HttpConn(self)
        http.request("POST", "/open/x", b"b" * 1000)
        (_, text), (_, body) = [(op, p) for _, op, p in listener.frames()]
        self.assertEqual((json.loads(text)["request"]["method"], body), ("POST", b"b" * 1000))
        self.assertFalse(http.transport.disconnecting)

    def test_content_length_over_the_limit(self) -> None:
        listener = self.listen("open")
        http = HttpConn(self)
        http.request("POST", "/open/x", b"b" * 1001, {"Expect": "100-continue"})
        code, _, headers, body = http.response()
        self.assertEqual(code, 413)
        self.assertEqual(json.loads(body)["error"]["code"], "RequestEntityTooLarge")
        self.assertIn("1000 bytes", json.loads(body)["error"]["message"])
        self.assertNotIn(b"100 Continue", http.transport.value())
        self.assertTrue(http.transport.disconnecting)
        self.assertEqual(listener.frames(), [])
        self.assertEqual(self.hub.pending, {})

    def test_chunked_body_over_the_limit(self) -> None:
        listener = self.listen("open")
        http = HttpConn(self)
        head = (b"POST /open/x HTTP/1.1\r\nHost: localhost:9443\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"258\r\n" + b"c" * 600 + b"\r\n"  # 600 bytes a chunk
        http.proto.dataReceived(head + chunk)
        self.assertEqual(http.transport.value(), b"")
        proto = http.transport.protocol  # the HTTP channel, after the sniffer
        proto.dataReceived(chunk + chunk + b"0\r\n\r\n")
        self.assertEqual(http.response()[0], 413)
        self.assertTrue(http.transport.disconnecting)
        self.assertEqual(listener.frames(), [])
