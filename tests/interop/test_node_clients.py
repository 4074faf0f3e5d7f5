"""Microsoft's Node clients against hcm-relay (issue 2, item 5).

* hyco-ws 1.0.5 (ws 1.1.5): a listener (``createRelayedServer``) and a sender
  (``relayedConnect``) exchange about 1 MiB each way through the relay, byte-exact, with
  sha256 computed independently in the two Node processes.
* hyco-https 1.4.5 (ws 6.2.7): a listener (``createRelayedServer`` + ``listen()``) answers
  HTTPS requests that Python sends to ``https://localhost:PORT/hc1/...`` with a Send token:
  GET (small and large responses), POST small and POST > 64 kB (the rendezvous path).

The Node scripts live next to this file; ``npm ci`` in this directory installs the packages
(``scripts/test.sh`` does it).  Without node or node_modules these tests fail, saying so.
The clients' URL helpers add ``:443`` to the namespace, so the URLs are built here; tokens
are minted by the clients' own ``createRelayToken`` (they sign ``http://localhost:PORT/hc1``).
The private CA of the relay reaches Node through ``NODE_EXTRA_CA_CERTS``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

from twisted.trial import unittest

from hcm_twisted.core import sas
from tests.e2e import harness

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
HC = "hc1"
MIB = 1024 * 1024

Event = dict[str, Any]


def node_executable() -> str:
    """The node binary, or a failure message naming what is missing."""
    node = shutil.which("node")
    if node is None:
        raise AssertionError(
            "node is not on PATH: the interop tests need Node.js >= 18 with npm "
            "(.ci/run installs them); then run `npm ci` in tests/interop"
        )
    for package in ("hyco-ws", "hyco-https"):
        if not (NODE_MODULES / package / "package.json").is_file():
            raise AssertionError(
                f"{NODE_MODULES / package} is missing: run `npm ci` in tests/interop "
                "(scripts/test.sh does this when npm is installed)"
            )
    return node


def seeded_bytes(seed: str, length: int) -> bytes:
    """The same bytes as ``seededBytes`` in common.js (sha256 in counter mode)."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:length])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_lines(text: str) -> list[Event]:
    events: list[Event] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


class NodeClientsMixin:
    """Start a relay and Node scripts; helpers shared by the tests below."""

    relay: Any
    node: str
    directory: Path

    # Provided by trial's TestCase.
    mktemp: Callable[[], str]
    addCleanup: Callable[..., None]

    def start_relay(self, extra_toml: str = "", hcs: tuple[str, ...] = (HC,)) -> None:
        from tests.e2e.relayfixture import start_relay

        self.node = node_executable()
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        self.relay = start_relay(self.directory / "relay", hcs=hcs, extra_toml=extra_toml)
        self.addCleanup(self.relay.stop)

    @property
    def ws_base(self) -> str:
        return f"wss://localhost:{self.relay.port}/$hc/{HC}"

    def node_env(self, key_name: str) -> dict[str, str]:
        return {
            "NODE_EXTRA_CA_CERTS": str(Path(self.relay.ca_path).resolve()),
            "HCM_INTEROP_KEY": harness.TEST_KEYS[key_name],
        }

    def start_listener(self, script: str, name: str, hc: str = HC,
                       **options: Any) -> harness.Proc:
        """Start a Node listener script on ``hc``; wait until its control channel is open."""
        config = {
            "url": f"wss://localhost:{self.relay.port}/$hc/{hc}?sb-hc-action=listen",
            "keyName": "defaultListener",
            "maxSeconds": 120,
            **options,
        }
        proc = harness.Proc(
            [self.node, str(HERE / script), json.dumps(config)],
            cwd=self.directory, name=name, env=self.node_env("defaultListener"),
        )
        self.addCleanup(proc.stop)
        self.wait_event(proc, lambda e: e.get("event") == "listening", 20.0)
        return proc

    def wait_event(self, proc: harness.Proc, match: Callable[[Event], bool],
                   timeout: float, nth: int = 1, errors_fail: bool = True) -> Event:
        """The ``nth`` JSON line of ``proc`` that ``match``es; fail on errors, exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            seen = 0
            for event in json_lines(proc.output()):
                if errors_fail and event.get("event") in ("control-error", "error"):
                    raise AssertionError(
                        f"{proc.name}: {event}\n--- relay log tail:\n{self.relay_log()}")
                if match(event):
                    seen += 1
                    if seen == nth:
                        return event
            if proc.popen.poll() is not None:
                raise AssertionError(
                    f"{proc.name} exited ({proc.popen.returncode}):\n{proc.output()[-3000:]}"
                    f"\n--- relay log tail:\n{self.relay_log()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{proc.name}: no expected event after {timeout} s:\n{proc.output()[-3000:]}"
                    f"\n--- relay log tail:\n{self.relay_log()}")
            time.sleep(0.05)

    def relay_log(self) -> str:
        try:
            return str(self.relay.proc.output()[-3000:])
        except Exception as e:  # diagnostics only
            return f"(no relay log: {e})"

    def run_sender(self, config: dict[str, Any], timeout: float = 90.0,
                   key: str | None = None) -> Event:
        """Run ws_sender.js to completion; its result line."""
        done = self.run_sender_process(config, timeout, key)
        wanted = "results" if config.get("parallel", 1) > 1 else "result"
        results = [e for e in json_lines(done.stdout) if e.get("event") == wanted]
        if done.returncode != 0 or not results:
            raise AssertionError(
                f"ws_sender.js failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                f"{done.stderr[-3000:]}\n--- relay log tail:\n{self.relay_log()}")
        return results[-1]

    def run_failing_sender(self, config: dict[str, Any], key: str | None = None) -> str:
        """Run ws_sender.js expecting it to fail; its error message."""
        done = self.run_sender_process(config, 30.0, key)
        errors = [e for e in json_lines(done.stdout) if e.get("event") == "error"]
        if done.returncode == 0 or not errors:
            raise AssertionError(
                f"ws_sender.js did not fail ({done.returncode}):\n{done.stdout[-3000:]}\n"
                f"{done.stderr[-3000:]}")
        return str(errors[-1]["message"])

    def run_sender_process(self, config: dict[str, Any], timeout: float,
                           key: str | None) -> subprocess.CompletedProcess[str]:
        config = {
            "url": f"{self.ws_base}?sb-hc-action=connect",
            "keyName": "defaultSender",
            "timeout": timeout - 10,
            **config,
        }
        env = harness.child_env(self.node_env("defaultSender"))
        if key is not None:
            env["HCM_INTEROP_KEY"] = key
        try:
            done = subprocess.run(
                [self.node, str(HERE / "ws_sender.js"), json.dumps(config)],
                cwd=self.directory, env=env, capture_output=True, text=True,
                timeout=timeout, stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as e:
            raise AssertionError(
                f"ws_sender.js did not finish in {timeout} s\n--- relay log tail:\n"
                f"{self.relay_log()}") from e
        return done

    def https(self) -> http.client.HTTPSConnection:
        context = ssl.create_default_context(cafile=str(Path(self.relay.ca_path).resolve()))
        conn = http.client.HTTPSConnection("localhost", self.relay.port, context=context,
                                           timeout=30)
        self.addCleanup(conn.close)
        return conn

    def send_token(self, hc: str = HC) -> str:
        return sas.mint(f"http://localhost:{self.relay.port}/{hc}", "defaultSender",
                        harness.TEST_KEYS["defaultSender"])

    def request(self, conn: http.client.HTTPSConnection, method: str, target: str,
                body: bytes | Iterator[bytes] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """Send a request with a Send token for the HC named by the target's first segment."""
        status, _, response_headers, data = self.request_full(conn, method, target, body, headers)
        return status, response_headers, data

    def request_full(
        self, conn: http.client.HTTPSConnection, method: str, target: str,
        body: bytes | Iterator[bytes] | None = None, headers: dict[str, str] | None = None,
    ) -> tuple[int, str, dict[str, str], bytes]:
        """Status, reason, headers (lower-case names) and body of one request."""
        hc = target.lstrip("/").split("/", 1)[0].split("?", 1)[0]
        all_headers = {"ServiceBusAuthorization": self.send_token(hc), **(headers or {})}
        conn.request(method, target, body=body, headers=all_headers,
                     encode_chunked=body is not None and not isinstance(body, bytes))
        response = conn.getresponse()
        data = response.read()
        return (response.status, response.reason,
                {k.lower(): v for k, v in response.getheaders()}, data)


class HycoWsTests(NodeClientsMixin, unittest.TestCase):
    """hyco-ws listener + hyco-ws sender through the relay."""

    def setUp(self) -> None:
        self.start_relay()
        self.listener = self.start_listener("ws_listener.js", "ws-listener")

    def listener_closed(self, n: int) -> Event:
        return self.wait_event(
            self.listener, lambda e: e.get("event") == "closed" and e.get("n") == n, 20.0)

    def test_echo_round_trip(self) -> None:
        """1 MiB from the sender comes back byte-exact; boundaries and text survive."""
        result = self.run_sender({"mode": "echo", "size": MIB})
        closed = self.listener_closed(1)

        self.assertEqual(result["sent"], MIB)
        # What the listener received is what the sender sent (hashed in each process) ...
        self.assertEqual(closed["received"], MIB)
        self.assertEqual(closed["received_sha256"], result["sent_sha256"])
        # ... and what the sender got back is what the listener sent.
        self.assertEqual(result["received"], MIB)
        self.assertEqual(result["received_sha256"], closed["sent_sha256"])
        self.assertEqual(result["received_sha256"], result["sent_sha256"])
        self.assertTrue(result["boundaries_kept"], result)
        self.assertEqual(result["echoed_text"], "text passes as text")
        self.assertEqual(result["listener"]["text_messages"], 2)
        self.assertEqual(result["close_code"], 1000)
        self.assertFalse(closed.get("incomplete", False), closed)
        # The sender's Close (1000 "done") reaches the listener, and the TCP ends cleanly: a reset
        # makes ws 1.1.5 report 1006 even after a complete closing handshake.
        self.assertEqual((closed["code"], closed["reason"]), (1000, "done"))

    def test_both_directions(self) -> None:
        """1 MiB sender -> listener and a different 1 MiB listener -> sender at the same time."""
        result = self.run_sender({"mode": "reply", "size": MIB, "replySize": MIB})
        closed = self.listener_closed(1)

        self.assertEqual((result["sent"], closed["received"]), (MIB, MIB))
        self.assertEqual(closed["received_sha256"], result["sent_sha256"])
        self.assertEqual((closed["sent"], result["received"]), (MIB, MIB))
        self.assertEqual(result["received_sha256"], closed["sent_sha256"])
        self.assertNotEqual(result["received_sha256"], result["sent_sha256"])
        self.assertEqual(result["close_code"], 1000)

    def test_large_single_messages(self) -> None:
        """One 8 MiB binary message and one 200 kB text message, each kept whole."""
        result = self.run_sender({"mode": "echo", "size": 8 * MIB + 1000,
                                  "firstMessage": 8 * MIB, "bigText": 200_000})
        self.assertEqual(result["received_sha256"], result["sent_sha256"])
        self.assertTrue(result["boundaries_kept"], result)
        self.assertEqual(result["echoed_text"],
                         {"length": 200_000, "sha256": sha256(b"x" * 200_000)})
        self.assertEqual(self.listener_closed(1)["received_sha256"], result["sent_sha256"])

    def test_listener_closes_after_its_data(self) -> None:
        """The listener sends 1 MiB and closes at once: every byte arrives before the close."""
        result = self.run_sender({"mode": "reply", "size": 1000, "replySize": MIB,
                                  "listenerCloses": True})
        closed = self.listener_closed(1)
        self.assertEqual((result["received"], closed["sent"]), (MIB, MIB))
        self.assertEqual(result["received_sha256"], closed["sent_sha256"])
        self.assertEqual(closed["received_sha256"], result["sent_sha256"])
        self.assertEqual(closed["code"], 1000)
        # The sender only answered the listener's Close, which the relay passed on as it was.
        self.assertEqual((result["close_code"], result["close_reason"]), (1000, "listener done"))

    def test_sender_leaves_early(self) -> None:
        """The sender closes after the first message of 4 MiB: the close reaches the listener.

        (What the relay still forwards after the sender's Close is up to it: half-close.)
        """
        result = self.run_sender({"mode": "reply", "size": 0, "replySize": 4 * MIB,
                                  "closeEarly": True})
        self.assertEqual(result["close_code"], 1000)
        closed = self.listener_closed(1)
        self.assertEqual((closed["code"], closed["reason"]), (1000, "sender leaves early"))
        self.assertEqual(closed["sent"], 4 * MIB)

    def test_two_senders_one_after_the_other(self) -> None:
        """The listener keeps its control channel: a second connection is accepted too."""
        first = self.run_sender({"mode": "echo", "size": 4096})
        second = self.run_sender({"mode": "echo", "size": 70_000})
        self.assertEqual(first["received_sha256"], first["sent_sha256"])
        self.assertEqual(second["received_sha256"], second["sent_sha256"])
        self.assertEqual(self.listener_closed(2)["received_sha256"], second["sent_sha256"])


    def test_parallel_senders_with_the_same_key(self) -> None:
        """Four connections opened in the same millisecond share ws 1.1.5's Sec-WebSocket-Key."""
        results = self.run_sender({"mode": "echo", "size": 256 * 1024, "parallel": 4})["results"]
        self.assertEqual(len(results), 4)
        for result in results:
            self.assertEqual(result["received_sha256"], result["sent_sha256"], result["index"])
            self.assertEqual(result["listener"]["received_sha256"], result["sent_sha256"])
        closed = [self.listener_closed(n) for n in range(1, 5)]
        self.assertEqual(sorted(c["received_sha256"] for c in closed),
                         sorted(r["sent_sha256"] for r in results))
        accepts = [e for e in json_lines(self.listener.output()) if e.get("event") == "accept"]
        self.assertEqual(len({a["id"] for a in accepts}), 4)
        keys = {a["connectHeaders"].get("Sec-WebSocket-Key") for a in accepts}
        self.assertEqual(len(keys), 1, keys)

    def test_subprotocol_chosen_by_listener(self) -> None:
        """The listener takes the first offered subprotocol; the sender's 101 carries it."""
        result = self.run_sender({"mode": "echo", "size": 10_000,
                                  "protocols": ["chat", "superchat"]})
        self.assertEqual(result["protocol"], "chat")
        self.assertEqual(result["received_sha256"], result["sent_sha256"])
        self.assertEqual(self.listener_closed(1)["protocol"], "chat")

    def test_accept_message_seen_by_the_listener(self) -> None:
        """Token in the query, a suffix, an app query and a custom header (spec sections 5, 14).

        The token is what ``createRelayToken`` makes of the whole URL: it signs the suffix too.
        """
        result = self.run_sender({
            "url": f"{self.ws_base}/sub/path?app=1&sb-hc-action=connect",
            "tokenIn": "query", "headers": {"X-Custom": "hello"},
            "mode": "echo", "size": 100_000,
        })
        self.assertEqual(result["received_sha256"], result["sent_sha256"])
        accept = self.wait_event(self.listener, lambda e: e.get("event") == "accept", 5)
        headers = {k.lower(): v for k, v in accept["connectHeaders"].items()}
        self.assertTrue(headers.get("sec-websocket-key"), headers)
        self.assertEqual(headers.get("x-custom"), "hello")
        self.assertNotIn("servicebusauthorization", headers)
        address = accept["address"]
        self.assertTrue(address.startswith(f"wss://localhost:{self.relay.port}/$hc/{HC}/sub/path?"),
                        address)
        self.assertIn("app=1", address)
        self.assertIn("sb-hc-action=accept", address)
        self.assertNotIn("sb-hc-token", address)
        self.assertEqual(self.listener_closed(1)["received_sha256"], result["sent_sha256"])

    def test_sender_with_wrong_key_is_refused(self) -> None:
        """A token signed with the wrong key fails the sender's handshake with 401."""
        wrong = "d3Jvbmcta2V5LWZvci10ZXN0cy1vbmx5LTMzMzMzMzMzMw=="
        message = self.run_failing_sender({"mode": "echo", "size": 10}, key=wrong)
        self.assertIn("(401)", message)
        self.assertEqual(
            [e for e in json_lines(self.listener.output()) if e.get("event") == "connection"], [])


class TokenRenewalTests(NodeClientsMixin, unittest.TestCase):
    """The clients' own renewToken code (interval shortened) keeps their control channels.

    Tokens live 2 s, the relay allows 1 s of grace and pings every 0.5 s; the clients renew
    every 0.7 s.  A relay that ignored or refused ``renewToken`` would close the channels (1008)
    after about 3 s, and the clients would reconnect: a second "listening" line.
    """

    def setUp(self) -> None:
        # hyco-https cannot take WebSocket accepts, so it listens on a second HC.
        self.start_relay("token-grace = 1.0\nping-interval = 0.5\n", hcs=(HC, "hc2"))

    def test_hyco_ws_and_hyco_https_renew(self) -> None:
        options: dict[str, Any] = {"tokenSeconds": 2, "renewEveryMs": 700}
        ws_listener = self.start_listener("ws_listener.js", "ws-listener", **options)
        https_listener = self.start_listener("https_listener.js", "https-listener", hc="hc2",
                                             keepAliveMs=200, **options)
        time.sleep(4.5)
        result = self.run_sender({"mode": "echo", "size": 50_000}, timeout=30)
        self.assertEqual(result["received_sha256"], result["sent_sha256"])
        status, _, body = self.request(self.https(), "POST", "/hc2/renewed", b"still here")
        self.assertEqual(status, 200, body[:500])
        self.assertEqual(json.loads(body)["sha256"], sha256(b"still here"))
        for proc in (ws_listener, https_listener):
            events = [e["event"] for e in json_lines(proc.output())]
            self.assertEqual(events.count("listening"), 1, proc.output()[-2000:])
            self.assertNotIn("control-closed", events, proc.output()[-2000:])


class NoListenerTests(NodeClientsMixin, unittest.TestCase):
    """What Microsoft's sender sees when nobody listens (spec section 14)."""

    def setUp(self) -> None:
        self.start_relay()

    def test_ws_sender_gets_404(self) -> None:
        message = self.run_failing_sender({"mode": "echo", "size": 10})
        self.assertIn("(404)", message)

    def test_https_request_gets_502(self) -> None:
        status, _, body = self.request(self.https(), "GET", f"/{HC}/nobody")
        self.assertEqual(status, 502, body[:500])


class HycoHttpsTests(NodeClientsMixin, unittest.TestCase):
    """A hyco-https listener answers HTTPS requests sent through the relay."""

    def setUp(self) -> None:
        self.start_relay()
        self.listener = self.start_listener("https_listener.js", "https-listener")

    def listener_saw(self, method: str, url: str) -> Event:
        return self.wait_event(
            self.listener,
            lambda e: e.get("event") == "request" and e.get("method") == method
            and e.get("url") == url,
            10.0,
        )

    def test_get_small(self) -> None:
        status, headers, body = self.request(self.https(), "GET", f"/{HC}/hello/world?x=1&y=two")
        self.assertEqual(status, 200, body[:500])
        self.assertEqual(headers.get("x-listener"), "hyco-https")
        self.assertEqual(headers.get("content-type"), "application/json")
        answer = json.loads(body)
        self.assertEqual(answer["method"], "GET")
        self.assertEqual(answer["url"], f"/{HC}/hello/world?x=1&y=two")
        self.assertEqual(answer["received"], 0)
        self.assertNotIn("serviceBusAuthorization".lower(), answer["headers"])
        self.listener_saw("GET", f"/{HC}/hello/world?x=1&y=two")

    def test_encoded_target_and_large_header(self) -> None:
        """Percent-escapes reach the listener as sent; a 16 kB header passes."""
        target = f"/{HC}/%E2%9C%93/a%20b?q=%2F%20x&empty=&plus=a+b"
        status, _, body = self.request(self.https(), "GET", target, headers={"X-Big": "a" * 16000})
        self.assertEqual(status, 200, body[:500])
        answer = json.loads(body)
        self.assertEqual(answer["url"], target)
        self.assertEqual(answer["headers"].get("x-big"), "a" * 16000)

    def test_post_4mib(self) -> None:
        data = os.urandom(4 * MIB)
        status, _, body = self.request(self.https(), "POST", f"/{HC}/big", data)
        self.assertEqual(status, 200, body[:500])
        answer = json.loads(body)
        self.assertEqual((answer["received"], answer["sha256"]), (len(data), sha256(data)))

    def test_token_in_query_is_removed(self) -> None:
        """``sb-hc-token`` authenticates and never reaches the listener."""
        conn = self.https()
        token = quote(self.send_token(), safe="")
        conn.request("GET", f"/{HC}/q?a=1&sb-hc-token={token}&b=2")
        response = conn.getresponse()
        body = response.read()
        self.assertEqual(response.status, 200, body[:500])
        self.assertEqual(json.loads(body)["url"], f"/{HC}/q?a=1&b=2")

    def test_request_with_wrong_key_is_refused(self) -> None:
        """401 from the relay; the listener never sees the request."""
        token = sas.mint(f"http://localhost:{self.relay.port}/{HC}", "defaultSender",
                         "d3Jvbmcta2V5LWZvci10ZXN0cy1vbmx5LTMzMzMzMzMzMw==")
        status, _, body = self.request(self.https(), "GET", f"/{HC}/secret",
                                       headers={"ServiceBusAuthorization": token})
        self.assertEqual(status, 401, body[:500])
        self.assertEqual(
            [e for e in json_lines(self.listener.output()) if e.get("event") == "request"], [])

    def test_get_large_response(self) -> None:
        """A 300 kB response (over 64 kB: hyco-https answers on a rendezvous), byte-exact."""
        expected = seeded_bytes("large", 300_000)
        status, headers, body = self.request(
            self.https(), "GET", f"/{HC}/blob?size=300000&seed=large")
        self.assertEqual(status, 200, body[:500])
        self.assertEqual(len(body), len(expected))
        self.assertEqual(sha256(body), sha256(expected))
        self.assertEqual(headers.get("x-body-sha256"), sha256(expected))

    def test_get_response_in_many_writes(self) -> None:
        """A response written in 7 pieces (a fragmented binary message), byte-exact."""
        expected = seeded_bytes("pieces", 200_000)
        status, _, body = self.request(
            self.https(), "GET", f"/{HC}/blob?size=200000&seed=pieces&writes=7")
        self.assertEqual(status, 200, body[:500])
        self.assertEqual(sha256(body), sha256(expected))

    def test_small_response_in_many_writes(self) -> None:
        """20 kB in 4 writes: a fragmented binary message on the control channel."""
        expected = seeded_bytes("small-pieces", 20_000)
        status, _, body = self.request(
            self.https(), "GET", f"/{HC}/blob?size=20000&seed=small-pieces&writes=4")
        self.assertEqual(status, 200, body[:500])
        self.assertEqual(sha256(body), sha256(expected))

    def test_post_small(self) -> None:
        data = os.urandom(1000)
        status, _, body = self.request(
            self.https(), "POST", f"/{HC}/upload", data,
            {"Content-Type": "application/octet-stream"})
        self.assertEqual(status, 200, body[:500])
        answer = json.loads(body)
        self.assertEqual((answer["method"], answer["received"]), ("POST", 1000))
        self.assertEqual(answer["sha256"], sha256(data))
        self.assertEqual(answer["headers"].get("content-type"), "application/octet-stream")
        self.assertEqual(self.listener_saw("POST", f"/{HC}/upload")["sha256"], sha256(data))

    def test_post_large(self) -> None:
        """A 256 KiB body (over 64 kB: the relay sends it on a rendezvous), byte-exact."""
        data = os.urandom(256 * 1024)
        status, _, body = self.request(
            self.https(), "POST", f"/{HC}/upload/large?k=v", data,
            {"Content-Type": "application/octet-stream"})
        self.assertEqual(status, 200, body[:500])
        answer = json.loads(body)
        self.assertEqual((answer["method"], answer["received"]), ("POST", len(data)))
        self.assertEqual(answer["url"], f"/{HC}/upload/large?k=v")
        self.assertEqual(answer["sha256"], sha256(data))

    def test_keep_alive_sequence(self) -> None:
        """Small and large requests and responses one after the other on one connection."""
        conn = self.https()
        small, large = os.urandom(500), os.urandom(100_000)
        for step, (method, target, data) in enumerate([
            ("GET", f"/{HC}/one", None),
            ("POST", f"/{HC}/two", large),
            ("POST", f"/{HC}/three", small),
            ("GET", f"/{HC}/blob?size=150000&seed=four", None),
            ("GET", f"/{HC}/five", None),
        ]):
            status, headers, body = self.request(conn, method, target, data)
            self.assertEqual(status, 200, f"step {step}: {body[:500]!r}")
            if "blob" in target:
                self.assertEqual(sha256(body), sha256(seeded_bytes("four", 150_000)))
            else:
                answer = json.loads(body)
                self.assertEqual(answer["url"], target, f"step {step}")
                self.assertEqual(answer["sha256"], sha256(data or b""), f"step {step}")
        # Step two (over 64 kB) made a rendezvous; the relay kept it for this connection and
        # sent the three later requests on it, where hyco-https answered them (spec section 7).
        harness.wait_for("the relay's log", lambda: self.relay.output().count(
            "sent on the sender's rendezvous") >= 3, 10)
        self.assertEqual(self.relay.output().count("sent on the sender's rendezvous"), 3)

    def test_large_request_and_large_response(self) -> None:
        """Over 64 kB both ways: rendezvous for the body and for the answer."""
        data = os.urandom(200_000)
        status, headers, body = self.request(
            self.https(), "PUT", f"/{HC}/blob?size=300000&seed=both", data)
        self.assertEqual(status, 200, body[:500])
        self.assertEqual(headers.get("x-request-sha256"), sha256(data))
        self.assertEqual(sha256(body), sha256(seeded_bytes("both", 300_000)))

    def test_chunked_request_body(self) -> None:
        """A chunked upload (no Content-Length) arrives whole and byte-exact."""
        parts = [os.urandom(n) for n in (1000, 70_000, 5)]
        status, _, body = self.request(
            self.https(), "POST", f"/{HC}/chunked", iter(parts),
            {"Content-Type": "application/octet-stream"})
        self.assertEqual(status, 200, body[:500])
        answer = json.loads(body)
        self.assertEqual(answer["received"], sum(map(len, parts)))
        self.assertEqual(answer["sha256"], sha256(b"".join(parts)))

    def test_status_reason_and_headers_pass_through(self) -> None:
        conn = self.https()
        status, reason, headers, body = self.request_full(
            conn, "POST", f"/{HC}/status?code=418&reason=Short%20and%20stout", b"tea")
        self.assertEqual((status, reason, body), (418, "Short and stout", b""))
        self.assertEqual(headers.get("x-listener"), "hyco-https")
        self.assertEqual(headers.get("x-request-sha256"), sha256(b"tea"))
        # 204: hyco-https sends "body": false and then an empty binary message anyway.
        status, _, headers, body = self.request_full(conn, "GET", f"/{HC}/status?code=204")
        self.assertEqual((status, body), (204, b""))
        # The stray empty message must not become the body of the next answer.
        status, _, _, body = self.request_full(conn, "GET", f"/{HC}/after-204")
        self.assertEqual(status, 200, body[:500])
        self.assertEqual(json.loads(body)["url"], f"/{HC}/after-204")

    def test_head_then_get_on_one_connection(self) -> None:
        conn = self.https()
        status, _, headers, body = self.request_full(conn, "HEAD", f"/{HC}/head")
        self.assertEqual((status, body), (200, b""))
        self.assertEqual(headers.get("x-listener"), "hyco-https")
        status, _, _, body = self.request_full(conn, "GET", f"/{HC}/after-head")
        self.assertEqual(status, 200, body[:500])
        self.assertEqual(json.loads(body)["url"], f"/{HC}/after-head")

    def test_concurrent_requests_do_not_mix(self) -> None:
        """Eight senders at once, answers out of order, small and large bodies."""
        sizes = [10, 70_000, 300, 150_000, 0, 65_000, 66_000, 1]

        def one(i: int) -> tuple[int, str, str]:
            data = os.urandom(sizes[i])
            delay = (len(sizes) - i) * 40
            status, _, body = self.request(
                self.https(), "POST", f"/{HC}/c{i}?delay={delay}", data)
            answer = json.loads(body) if status == 200 else {}
            return status, answer.get("sha256", "") + answer.get("url", ""), (
                sha256(data) + f"/{HC}/c{i}?delay={delay}")

        with ThreadPoolExecutor(len(sizes)) as pool:
            results = list(pool.map(one, range(len(sizes))))
        for i, (status, got, want) in enumerate(results):
            self.assertEqual(status, 200, f"request {i}")
            self.assertEqual(got, want, f"request {i}")

    def test_concurrent_large_responses(self) -> None:
        """Six answers over 64 kB at once: each on its own rendezvous, none mixed up."""

        def one(i: int) -> tuple[int, bool, int]:
            size = 70_000 + 40_000 * i
            status, _, body = self.request(
                self.https(), "GET", f"/{HC}/blob?size={size}&seed=c{i}&delay={(6 - i) * 50}")
            return status, sha256(body) == sha256(seeded_bytes(f"c{i}", size)), len(body)

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(one, range(6)))
        for i, (status, exact, length) in enumerate(results):
            self.assertEqual(status, 200, f"request {i}")
            self.assertTrue(exact, f"request {i}: {length} bytes, not the expected ones")

    def test_listener_gone_while_request_pending(self) -> None:
        """A listener that dies with a request in hand: the sender gets 502 at once."""
        conn = self.https()
        started = time.monotonic()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self.request, conn, "GET", f"/{HC}/slow?delay=20000")
            self.listener_saw("GET", f"/{HC}/slow?delay=20000")
            self.listener.kill()
            status, _, body = pending.result(timeout=30)
        self.assertEqual(status, 502, body[:500])
        self.assertLess(time.monotonic() - started, 15)

    def test_listener_comes_back_after_relay_restart(self) -> None:
        """hyco-https reconnects (0, 1, 2 s backoff) to a restarted relay; requests work again."""
        self.relay.stop()
        self.relay.start()
        self.wait_event(self.listener, lambda e: e.get("event") == "listening", 20.0, nth=2,
                        errors_fail=False)
        status, _, body = self.request(self.https(), "GET", f"/{HC}/again")
        self.assertEqual(status, 200, body[:500])
        self.assertEqual(json.loads(body)["url"], f"/{HC}/again")
