"""End to end: a real ``hcm-relay`` process, WebSocket listeners and senders over TLS."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from twisted.internet import defer
from twisted.trial import unittest

from tests.e2e import relayclient as rc
from tests.e2e.harness import TEST_KEYS
from tests.e2e.relayfixture import Relay, start_relay

LISTEN_KEY = TEST_KEYS["defaultListener"]
SEND_KEY = TEST_KEYS["defaultSender"]


_SHARED: list[Relay] = []
_HC_COUNT = [0]
SHARED_HCS = 40


def shared_relay() -> Relay:
    """One relay process for the tests that can share it (stopped at exit)."""
    if not _SHARED or _SHARED[0].proc is None or _SHARED[0].proc.popen.poll() is not None:
        directory = Path(tempfile.mkdtemp(prefix="hcm-relay-shared-"))
        relay = start_relay(directory, [f"hc{i}" for i in range(1, SHARED_HCS + 1)])
        atexit.register(relay.stop)
        _SHARED[:] = [relay]
    return _SHARED[0]


def _shared_done() -> None:
    """Stop the shared relay after the last shared test of a full module run."""
    _HC_DONE[0] += 1
    total = sum(
        len([n for n in dir(cls) if n.startswith("test_")])
        for cls in list(globals().values())
        if isinstance(cls, type) and issubclass(cls, RelayTestCase) and cls.shared
    )
    if _HC_DONE[0] >= total and _SHARED:
        _SHARED[0].stop()


_HC_DONE = [0]


def next_hc() -> str:
    _HC_COUNT[0] = _HC_COUNT[0] % SHARED_HCS + 1
    return f"hc{_HC_COUNT[0]}"


class RelayTestCase(unittest.TestCase):
    timeout = 60
    extra_toml = ""
    hcs: tuple[str | dict[str, object], ...] = ("hc1",)
    shared = False  # share one relay process per module; each test gets its own HC

    def setUp(self) -> None:
        if self.shared:
            self.relay: Relay = shared_relay()
            self.hc = next_hc()
            self.addCleanup(_shared_done)
        else:
            self.relay = start_relay(Path(self.mktemp()), self.hcs, self.extra_toml)
            self.addCleanup(self.relay.stop)
            self.hc = "hc1"
        self.port = self.relay.port
        self.ca = str(self.relay.ca_path)
        self.clients: list[rc.Client] = []
        self.addCleanup(self._drop_clients)

    def _drop_clients(self) -> None:
        for c in self.clients:
            if c.transport is not None and c.state != c.STATE_CLOSED:
                c.transport.abortConnection()

    def listen_token(self, hc: str | None = None, lifetime: float = 3600) -> str:
        return rc.token(self.port, hc or self.hc, "defaultListener", LISTEN_KEY, lifetime)

    def send_token(self, hc: str | None = None, lifetime: float = 3600) -> str:
        return rc.token(self.port, hc or self.hc, "defaultSender", SEND_KEY, lifetime)

    async def connect(self, url: str, headers: dict[str, str] | None = None,
                      protocols: list[str] | None = None) -> rc.Client:
        client = await rc.connect(url, self.ca, headers, protocols)
        self.clients.append(client)
        return client

    async def listen(self, hc: str | None = None, token: str | None = None,
                     id: str | None = None) -> rc.Client:
        hc = hc or self.hc
        tok = token or self.listen_token(hc)
        return await self.connect(rc.listen_url(self.port, hc, id=id),
                                  {"ServiceBusAuthorization": tok})

    async def handshake_error(self, d: defer.Deferred[rc.Client]) -> rc.HandshakeFailed:
        try:
            client = await d
        except rc.HandshakeFailed as e:
            return e
        self.clients.append(client)
        self.fail("the handshake succeeded")

    async def pair(self, protocols: list[str] | None = None, extra: dict[str, str] | None = None,
                   ) -> tuple[rc.Client, rc.Client, rc.Client, dict[str, object]]:
        """listener, sender, rendezvous leg, accept message."""
        listener = await self.listen()
        headers = {"ServiceBusAuthorization": self.send_token(), **(extra or {})}
        sender_d = rc.connect(
            rc.connect_url(self.port, self.hc, id="sender-id-1", suffix="/sub/path",
                           query="app=1&x=y%20z"),
            self.ca, headers, protocols,
        )
        accept = (await listener.json())["accept"]
        self.assertFalse(sender_d.called, "the sender's upgrade must wait for the listener")
        rdv = await self.connect(accept["address"], protocols=protocols[:1] if protocols else None)
        sender = await sender_d
        self.clients.append(sender)
        return listener, sender, rdv, accept


class ConnectTests(RelayTestCase):
    shared = True
    async def test_accept_message(self) -> None:
        """The accept message carries the sender's headers, id, suffix and query."""
        _, sender, rdv, accept = await self.pair(
            protocols=["chat", "superchat"], extra={"X-Custom-Header": "Value 1"}
        )
        self.assertEqual(accept["id"], "sender-id-1")
        headers = accept["connectHeaders"]
        assert isinstance(headers, dict)
        self.assertIn("Sec-WebSocket-Key", headers)
        self.assertEqual(headers.get("X-Custom-Header"), "Value 1")
        self.assertNotIn("servicebusauthorization", {h.lower() for h in headers})
        address = str(accept["address"])
        self.assertTrue(address.startswith(f"wss://localhost:{self.port}/$hc/{self.hc}/sub/path?"))
        self.assertIn("app=1&x=y%20z&", address)
        self.assertIn("sb-hc-action=accept", address)
        self.assertNotIn("sb-hc-token", address)
        remote = accept["remoteEndpoint"]
        assert isinstance(remote, dict)
        self.assertEqual(remote["address"], "127.0.0.1")
        self.assertEqual(sender.response.protocol, "chat")
        self.assertEqual(rdv.response.protocol, "chat")

    async def test_round_trip_byte_exact(self) -> None:
        """Several MB each way arrive byte-exact; text stays text; message boundaries kept."""
        _, sender, rdv, _ = await self.pair()
        size = 4 * 1024 * 1024
        chunk = 256 * 1024 + 7

        def blob(seed: int) -> bytes:
            return hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)

        up, down = blob(1), blob(2)
        n_up = n_down = 0
        for i in range(0, size, chunk):
            sender.sendMessage(up[i:i + chunk], isBinary=True)
            rdv.sendMessage(down[i:i + chunk], isBinary=True)
            n_up += 1
            n_down += 1
        sender.sendMessage("héllo text".encode(), isBinary=False)
        rdv.sendMessage(b"", isBinary=True)

        async def collect(client: rc.Client, count: int) -> tuple[bytes, list[int]]:
            h = hashlib.sha256()
            sizes = []
            for _ in range(count):
                payload, binary = await client.messages.get()
                self.assertTrue(binary)
                h.update(payload)
                sizes.append(len(payload))
            return h.digest(), sizes

        got_up, sizes_up = await collect(rdv, n_up)
        got_down, sizes_down = await collect(sender, n_down)
        self.assertEqual(got_up, hashlib.sha256(up).digest())
        self.assertEqual(got_down, hashlib.sha256(down).digest())
        self.assertEqual(sizes_up[0], chunk)
        self.assertEqual(sum(sizes_up), size)
        self.assertEqual(await rdv.messages.get(), ("héllo text".encode(), False))
        self.assertEqual(await sender.messages.get(), (b"", True))

    async def test_close_propagates(self) -> None:
        """A Close on one leg closes the other with the same code."""
        _, sender, rdv, _ = await self.pair()
        sender.sendClose(4001, "bye")
        code, reason = await rdv.closed
        self.assertEqual((code, reason), (4001, "bye"))
        # The sender's close handshake is answered with the other side's reply.
        code, _ = await sender.closed
        self.assertEqual(code, 1000)
        self.assertTrue(sender.wasClean)

    async def test_half_close(self) -> None:
        """After one leg's Close the other direction keeps flowing until the peer closes."""
        _, sender, rdv, _ = await self.pair()
        rdv.hold_close = True
        sender.sendClose(4002, "half")
        # The rendezvous leg holds its answer to the Close and can still send.
        self.assertEqual(await rdv.held_close, (4002, b"half"))
        rdv.sendMessage(b"late data", isBinary=True)
        payload, binary = await sender.messages.get()
        self.assertEqual((payload, binary), (b"late data", True))
        rdv.sendCloseFrame(code=1000, isReply=True)
        code, _ = await sender.closed
        self.assertEqual(code, 1000)
        self.assertTrue(sender.wasClean)

    async def test_sender_lost_closes_leg_1011(self) -> None:
        """A sender lost without a Close: the listener's leg gets 1011 (maybe truncated)."""
        _, sender, rdv, _ = await self.pair()
        sender.transport.abortConnection()
        code, _ = await rdv.closed
        self.assertEqual(code, 1011)

    async def test_slow_reader_pauses_writer(self) -> None:
        """A reader that stops reading pauses the writer: the relay's memory stays bounded."""
        _, sender, rdv, _ = await self.pair()
        assert self.relay.proc is not None
        pid = self.relay.proc.pid

        def rss_mb() -> float:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
            raise AssertionError("no VmRSS")

        rdv.transport.pauseProducing()
        before = rss_mb()
        size, step = 48 * 1024 * 1024, 1024 * 1024
        data = hashlib.shake_256(b"slow").digest(size)
        for off in range(0, size, step):
            sender.sendMessage(data[off:off + step], isBinary=True)
        await rc.sleep(2.0)
        grown = rss_mb() - before
        self.assertLess(grown, 24, f"relay grew by {grown:.1f} MB while the reader was paused")
        rdv.transport.resumeProducing()
        h = hashlib.sha256()
        got = 0
        while got < size:
            payload, _ = await rdv.messages.get()
            h.update(payload)
            got += len(payload)
        self.assertEqual(h.digest(), hashlib.sha256(data).digest())

    async def test_reject(self) -> None:
        """Reject: 410 to the listener, the listener's code and description to the sender."""
        listener = await self.listen()
        sender_d = rc.connect(rc.connect_url(self.port, self.hc, tok=self.send_token()), self.ca)
        accept = (await listener.json())["accept"]
        url = (f"{accept['address']}&sb-hc-statusCode=401"
               f"&sb-hc-statusDescription={quote('Status Description from test', safe='')}")
        err = await self.handshake_error(rc.connect(url, self.ca))
        self.assertEqual(err.status, 410)
        err = await self.handshake_error(sender_d)
        self.assertEqual((err.status, err.reason), (401, "Status Description from test"))

    async def test_reject_unprefixed(self) -> None:
        listener = await self.listen()
        sender_d = rc.connect(rc.connect_url(self.port, self.hc, tok=self.send_token()), self.ca)
        accept = (await listener.json())["accept"]
        url = f"{accept['address']}&statusCode=503&statusDescription=busy"
        err = await self.handshake_error(rc.connect(url, self.ca))
        self.assertEqual(err.status, 410)
        err = await self.handshake_error(sender_d)
        self.assertEqual((err.status, err.reason), (503, "busy"))

    async def test_accept_address_single_use(self) -> None:
        _, _, _, accept = await self.pair()
        err = await self.handshake_error(rc.connect(str(accept["address"]), self.ca))
        self.assertEqual(err.status, 403)

    async def test_no_listener_404(self) -> None:
        err = await self.handshake_error(
            rc.connect(rc.connect_url(self.port, self.hc, tok=self.send_token()), self.ca))
        self.assertEqual(err.status, 404)
        self.assertIn("Endpoint does not exist.", err.reason)
        err = await self.handshake_error(
            rc.connect(rc.connect_url(self.port, "nope", tok=self.send_token("nope")), self.ca))
        self.assertEqual(err.status, 404)


class AuthTests(RelayTestCase):
    shared = True
    async def test_refusals(self) -> None:
        """401 for a wrong key, an expired token and a wrong audience; 403 for a Listen key."""
        await self.listen()
        cases = [
            (rc.token(self.port, self.hc, "defaultSender", "d3Jvbmcta2V5LXdyb25nLWtleQ=="), 401),
            (rc.token(self.port, self.hc, "defaultSender", SEND_KEY, now=time.time() - 3600,
                      lifetime=60), 401),
            (rc.token(self.port, "other", "defaultSender", SEND_KEY), 401),
            (rc.token(self.port, self.hc, "defaultListener", LISTEN_KEY), 403),
            (None, 401),
        ]
        for tok, status in cases:
            err = await self.handshake_error(rc.connect(
                rc.connect_url(self.port, self.hc), self.ca,
                {"ServiceBusAuthorization": tok} if tok else None))
            self.assertEqual(err.status, status, tok)
        # Send rights are not enough to listen.
        err = await self.handshake_error(rc.connect(
            rc.listen_url(self.port, self.hc, tok=self.send_token()), self.ca))
        self.assertEqual(err.status, 403)

    async def test_namespace_rule_and_audiences(self) -> None:
        """The namespace rule works; audiences with and without port and trailing slash."""
        root = TEST_KEYS["RootManageSharedAccessKey"]
        from hcm_twisted.core import sas

        for aud in (f"http://localhost:{self.port}/{self.hc}", f"http://localhost/{self.hc}/",
                    f"sb://localhost:443/{self.hc}", "http://localhost/"):
            tok = sas.mint(aud, "RootManageSharedAccessKey", root)
            c = await self.listen(token=tok)
            c.sendClose(1000)
            await c.closed

    async def test_max_listeners(self) -> None:
        """25 listeners per HC; the 26th is refused with 403 MaximumListenersPerEndpoint."""
        tok = self.listen_token()
        for _ in range(25):
            await self.listen(token=tok)
        err = await self.handshake_error(rc.connect(
            rc.listen_url(self.port, self.hc, tok=tok), self.ca))
        self.assertEqual(err.status, 403)
        self.assertIn("MaximumListenersPerEndpoint", err.reason)


class KeyTests(RelayTestCase):
    async def test_regenerated_key_takes_effect_in_a_running_relay(self) -> None:
        """hcm relay regenerate-key: old key refused at once, the new one accepted."""
        from hcm_twisted.core import connstr
        from tests.e2e import harness

        await self.listen()
        result = harness.hcm_cli(["relay", "regenerate-key", "--config",
                                  str(self.relay.config_path), "defaultListener", "--hc", "hc1"])
        self.assertEqual(result.returncode, 0, result.stderr)
        new_key = result.stdout.strip()
        self.assertNotEqual(new_key, LISTEN_KEY)
        self.assertNotIn(new_key, self.relay.output())
        err = await self.handshake_error(rc.connect(
            rc.listen_url(self.port, "hc1", tok=self.listen_token()), self.ca))
        self.assertEqual(err.status, 401)
        tok = rc.token(self.port, "hc1", "defaultListener", new_key)
        await self.listen(token=tok)
        result = harness.hcm_cli(["relay", "connection-string", "--config",
                                  str(self.relay.config_path), "hc1", "--rule", "defaultListener"])
        self.assertEqual(result.returncode, 0, result.stderr)
        cs = connstr.parse(result.stdout.strip())
        self.assertEqual((cs.key, cs.port, cs.entity_path), (new_key, self.port, "hc1"))


    async def test_restart_on_same_port(self) -> None:
        """stop() closes listeners with 1001; start() again: same port and CA."""
        listener = await self.listen()
        ca_before = Path(self.ca).read_bytes()
        self.relay.stop()
        code, _ = await listener.closed
        self.assertEqual(code, 1001)  # a clean "going away" from the relay
        self.relay.start()
        self.assertEqual(Path(self.ca).read_bytes(), ca_before)
        await self.listen()


    async def test_sigusr1_recycles_listeners(self) -> None:
        """SIGUSR1: every control channel is closed with 1011; listeners may reconnect."""
        import signal

        listener = await self.listen()
        assert self.relay.proc is not None
        self.relay.proc.signal(signal.SIGUSR1)
        code, _ = await listener.closed
        self.assertEqual(code, 1011)
        await self.listen()


    async def test_sighup_reloads_hybrid_connections(self) -> None:
        """SIGHUP: a new HC can be used at once; listeners of a removed HC get 1001."""
        import signal

        from tests.e2e.relayfixture import relay_toml

        listener = await self.listen()
        assert self.relay.proc is not None
        self.relay.config_path.write_text(relay_toml(self.port, ("added",)))
        self.relay.proc.signal(signal.SIGHUP)
        code, _ = await listener.closed
        self.assertEqual(code, 1001)
        self.relay.proc.wait_log(r"reloaded .*added: added; removed: hc1", timeout=10)
        await self.listen("added")
        # A broken file is refused and the running config kept.
        self.relay.config_path.write_text("namespace = [")
        self.relay.proc.signal(signal.SIGHUP)
        self.relay.proc.wait_log(r"reload of .* failed", timeout=10)
        await self.listen("added")


class MetricsTests(RelayTestCase):
    def setUp(self) -> None:
        from tests.e2e.harness import free_port

        self.metrics_port = free_port()
        self.extra_toml = f'metrics = "tcp:{self.metrics_port}:interface=127.0.0.1"'
        super().setUp()

    async def test_counters(self) -> None:
        """The optional metrics endpoint counts accepts, bytes and listeners per HC."""
        import urllib.request

        from twisted.internet import threads

        _, sender, rdv, _ = await self.pair()
        sender.sendMessage(b"x" * 1000, isBinary=True)
        await rdv.messages.get()
        text = await threads.deferToThread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                           timeout=10).read().decode())
        self.assertIn('hcm_relay_accepted_total{hc="hc1"} 1.0', text)
        self.assertIn('hcm_relay_bytes_to_listener_total{hc="hc1"} 1000.0', text)
        self.assertIn('hcm_relay_listeners{hc="hc1"} 1.0', text)


class RenewTests(RelayTestCase):
    extra_toml = "token-grace = 1"

    async def test_renew_keeps_channel_and_lapse_closes_1008(self) -> None:
        """renewToken keeps a 3 s token channel alive past 8 s; without it: 1008."""
        renewed = await self.listen(token=self.listen_token(lifetime=3))
        lapsing = await self.listen(token=self.listen_token(lifetime=3))
        start = time.monotonic()
        while time.monotonic() - start < 8.5:
            await rc.sleep(2.0)
            msg = {"renewToken": {"token": self.listen_token(lifetime=3)}}
            renewed.sendMessage(json.dumps(msg).encode(), isBinary=False)
        self.assertTrue(lapsing.closed.called)
        self.assertEqual(lapsing.close_code, 1008)
        self.assertFalse(renewed.closed.called)
        # A renewed channel still gets accepts.
        sender_d = rc.connect(rc.connect_url(self.port, "hc1", tok=self.send_token()), self.ca)
        accept = (await renewed.json())["accept"]
        await self.connect(str(accept["address"]))
        self.clients.append(await sender_d)

    async def test_bad_renew_closes_1008(self) -> None:
        listener = await self.listen()
        listener.sendMessage(json.dumps({"renewToken": {"token": "SharedAccessSignature x=y"}})
                             .encode(), isBinary=False)
        code, _ = await listener.closed
        self.assertEqual(code, 1008)

    async def test_garbage_control_message_closes_one_connection(self) -> None:
        bad = await self.listen()
        good = await self.listen()
        bad.sendMessage(b"{not json", isBinary=False)
        code, _ = await bad.closed
        self.assertEqual(code, 1008)
        big = await self.listen()
        big.sendMessage(b"x" * (70 * 1024), isBinary=False)
        code, _ = await big.closed
        self.assertEqual(code, 1009)
        self.assertFalse(good.closed.called)
        self.assertIsNone(self.relay.proc.popen.poll() if self.relay.proc else 1)


if os.environ.get("HCM_SKIP_E2E"):
    del ConnectTests, AuthTests, KeyTests, MetricsTests, RenewTests
