"""End to end: the relay's HTTP side (HTTP senders, runtime GET) against a real process."""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

from twisted.internet import threads
from twisted.trial import unittest

from tests.e2e import relayclient as rc
from tests.e2e.harness import TEST_KEYS
from tests.e2e.relayfixture import Relay, start_relay

METADATA = '[{"key":"endpoint","value":"db.internal:1433"}]'


class Reply:
    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes) -> None:
        self.status, self.reason, self.headers, self.body = status, reason, headers, body


class HttpTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.relay: Relay = start_relay(
            Path(self.mktemp()),
            ({"name": "hc1", "user-metadata": METADATA},
             {"name": "open", "requires-client-authorization": False}),
            "request-timeout = 1.5",
        )
        self.addCleanup(self.relay.stop)
        self.port = self.relay.port
        self.ca = str(self.relay.ca_path)
        self.clients: list[rc.Client] = []
        self.addCleanup(self._drop)

    def _drop(self) -> None:
        for c in self.clients:
            if c.transport is not None and c.state != c.STATE_CLOSED:
                c.transport.abortConnection()

    def send_token(self, hc: str = "hc1") -> str:
        return rc.token(self.port, hc, "defaultSender", TEST_KEYS["defaultSender"])

    async def listen(self, hc: str = "hc1") -> rc.Client:
        tok = rc.token(self.port, hc, "defaultListener", TEST_KEYS["defaultListener"])
        c = await rc.connect(rc.listen_url(self.port, hc), self.ca, {"ServiceBusAuthorization": tok})
        self.clients.append(c)
        return c

    def http(self, method: str, target: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Any:
        def run() -> Reply:
            ctx = ssl.create_default_context(cafile=self.ca)
            conn = http.client.HTTPSConnection("localhost", self.port, context=ctx, timeout=30)
            try:
                conn.request(method, target, body=body, headers=headers or {})
                r = conn.getresponse()
                return Reply(r.status, r.reason, {k.lower(): v for k, v in r.getheaders()},
                             r.read())
            finally:
                conn.close()

        return threads.deferToThread(run)

    async def test_small_request_on_control_channel(self) -> None:
        """Request JSON then the body as one binary message; response on the control channel."""
        listener = await self.listen()
        tok = quote(self.send_token(), safe="")
        reply_d = self.http("POST", f"/hc1/abc/def?myarg=value&sb-hc-token={tok}",
                            b"hello body", {"X-Custom": "yes", "Content-Type": "text/plain",
                                            "Authorization": "kept for the listener"})
        msg = (await listener.json())["request"]
        self.assertEqual(msg["method"], "POST")
        self.assertEqual(msg["requestTarget"], "/hc1/abc/def?myarg=value")
        self.assertTrue(msg["body"])
        names = {k.lower(): v for k, v in msg["requestHeaders"].items()}
        self.assertEqual(names.get("x-custom"), "yes")
        self.assertNotIn("servicebusauthorization", names)
        self.assertNotIn("content-length", names)
        self.assertEqual(names.get("authorization"), "kept for the listener")
        self.assertIn("address", msg)
        self.assertEqual(await listener.messages.get(), (b"hello body", True))
        listener.sendMessage(json.dumps({"response": {
            "requestId": msg["id"], "statusCode": "201", "statusDescription": "Made it",
            "responseHeaders": {"x-answer": "42", "Content-Length": "999"}, "body": True,
        }}).encode(), isBinary=False)
        listener.sendMessage(b"answer body", isBinary=True)
        reply = await reply_d
        self.assertEqual((reply.status, reply.reason, reply.body), (201, "Made it", b"answer body"))
        self.assertEqual(reply.headers.get("x-answer"), "42")
        self.assertIn("via", reply.headers)

    async def test_large_request_and_response_on_rendezvous(self) -> None:
        """A body over 64 kB: rendezvous-only request; the response streams back on it."""
        listener = await self.listen()
        body = hashlib.shake_256(b"req").digest(300_000)
        answer = hashlib.shake_256(b"resp").digest(3_000_000)
        reply_d = self.http("PUT", "/hc1/big", body, {"Authorization": self.send_token()})
        stub = (await listener.json())["request"]
        self.assertNotIn("method", stub)
        rdv = await rc.connect(stub["address"], self.ca)
        self.clients.append(rdv)
        msg = (await rdv.json())["request"]
        self.assertEqual((msg["method"], msg["id"], msg["body"]), ("PUT", stub["id"], True))
        self.assertNotIn("authorization", {k.lower() for k in msg["requestHeaders"]})
        payload, binary = await rdv.messages.get()
        self.assertTrue(binary)
        self.assertEqual(hashlib.sha256(payload).digest(), hashlib.sha256(body).digest())
        rdv.sendMessage(json.dumps({"response": {
            "requestId": msg["id"], "statusCode": 200, "body": True,
            "responseHeaders": {"content-type": "application/octet-stream"}}}).encode(),
            isBinary=False)
        # The body as one message in several frames.
        rdv.beginMessage(isBinary=True)
        step = 700_001
        for off in range(0, len(answer), step):
            rdv.sendMessageFrame(answer[off:off + step])
        rdv.endMessage()
        reply = await reply_d
        self.assertEqual(reply.status, 200)
        self.assertEqual(hashlib.sha256(reply.body).digest(), hashlib.sha256(answer).digest())

    async def test_response_on_rendezvous_for_control_request(self) -> None:
        """A control-channel request may be answered on its rendezvous address."""
        listener = await self.listen("open")
        reply_d = self.http("GET", "/open/x")
        msg = (await listener.json())["request"]
        self.assertFalse(msg["body"])
        rdv = await rc.connect(msg["address"], self.ca)
        self.clients.append(rdv)
        rdv.sendMessage(json.dumps({"response": {
            "requestId": msg["id"], "statusCode": 200, "body": True}}).encode(), isBinary=False)
        rdv.sendMessage(b"via rendezvous", isBinary=True)
        reply = await reply_d
        self.assertEqual((reply.status, reply.body), (200, b"via rendezvous"))

    async def test_no_listener_502_timeout_504_auth_401(self) -> None:
        reply = await self.http("GET", "/hc1/x", headers={"Authorization": self.send_token()})
        self.assertEqual(reply.status, 502)
        reply = await self.http("GET", "/hc1/x")
        self.assertEqual(reply.status, 401)
        reply = await self.http("GET", "/nothere/x")
        self.assertEqual(reply.status, 404)
        listener = await self.listen("open")
        reply = await self.http("GET", "/open/slow")
        self.assertEqual(reply.status, 504)
        self.assertEqual(json.loads(reply.body)["error"]["code"], "GatewayTimeout")
        msg = (await listener.json())["request"]
        self.assertEqual(msg["requestTarget"], "/open/slow")
        # A late answer is ignored and the channel survives.
        listener.sendMessage(json.dumps({"response": {
            "requestId": msg["id"], "statusCode": 200, "body": False}}).encode(), isBinary=False)
        listener.sendMessage(b"", isBinary=True)
        await rc.sleep(0.2)
        self.assertFalse(listener.closed.called)

    async def test_runtime_get(self) -> None:
        """GET /{hc}?api-version=2016-07: the Atom entry with metadata and listener count."""
        await self.listen()
        await self.listen()
        tok = rc.token(self.port, "hc1", "defaultListener", TEST_KEYS["defaultListener"])
        reply = await self.http("GET", "/hc1?api-version=2016-07", headers={"Authorization": tok})
        self.assertEqual(reply.status, 200)
        self.assertTrue(reply.headers["content-type"].startswith("application/atom+xml"))
        root = ElementTree.fromstring(reply.body)
        ns = "{http://schemas.microsoft.com/netservices/2010/10/servicebus/connect}"
        desc: Any = root.find(f"{{http://www.w3.org/2005/Atom}}content/{ns}HybridConnectionDescription")
        names = [child.tag.replace(ns, "") for child in desc]
        self.assertEqual(names, ["CreatedAt", "UpdatedAt", "RequiresClientAuthorization",
                                 "UserMetadata", "ListenerCount"])
        self.assertEqual(desc.findtext(f"{ns}UserMetadata"), METADATA)
        self.assertEqual(desc.findtext(f"{ns}ListenerCount"), "2")
        self.assertEqual(desc.findtext(f"{ns}RequiresClientAuthorization"), "true")
        reply = await self.http("GET", "/hc1?api-version=2016-07")
        self.assertEqual(reply.status, 401)
        reply = await self.http("GET", "/nope?api-version=2016-07", headers={"Authorization": tok})
        self.assertEqual(reply.status, 404)

    async def test_plain_get_on_websocket_path_is_400(self) -> None:
        reply = await self.http("GET", "/$hc/hc1?sb-hc-action=listen")
        self.assertEqual(reply.status, 400)
        self.assertIn("web-socket", reply.reason)
