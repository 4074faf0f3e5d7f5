"""A real worker behind a real relay: relay restarts and short-lived tokens."""

from __future__ import annotations

import hashlib
import shutil
import time
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from hcm_twisted.agent import commands
from hcm_twisted.core import connstr, urls
from tests.e2e import harness, relayclient
from tests.e2e.test_agent_worker import (
    SendFailed,
    WorkerStack,
    hc_item,
    mint,
    payload_of,
    send,
    sleep,
)


class WorkerResilience(WorkerStack, unittest.TestCase):
    timeout = 120

    async def start(self, extra_toml: str = "", lifetime: float = 3600,
                    hcs: tuple[str, ...] = ("hc1",)) -> None:
        await self.start_stack(hcs, {"hc1": None}, extra_toml=extra_toml, lifetime=lifetime)

    async def transfer(self, size: int = 64 * 1024, seed: int = 7) -> None:
        payload = payload_of(size, seed)
        received, digest = await send(self.relay, "hc1", payload, self.cas)
        self.assertEqual((received, digest), (size, hashlib.sha256(payload).hexdigest()))

    def test_relay_restart(self) -> defer.Deferred[None]:
        """After the relay is killed and restarted, new connections succeed within 10 s."""
        return defer.ensureDeferred(self._relay_restart())

    async def _relay_restart(self) -> None:
        await self.start()
        await self.transfer()
        assert self.relay.proc is not None
        self.relay.proc.kill()
        await self.wait_state(lambda s: s["state"] != "connected", 5)
        self.relay.start()
        restarted = time.monotonic()
        deadline = restarted + 10
        while True:
            try:
                await self.transfer(seed=8)
                break
            except SendFailed as e:
                # 404: no listener yet (the worker is still backing off).
                if time.monotonic() > deadline:
                    raise AssertionError(f"no connection 10 s after the restart: {e}") from None
                await sleep(0.2)
        elapsed = time.monotonic() - restarted
        await self.worker.wait_log(r"control channel connected: hc1", count=2, timeout=1)
        status = await self.worker.status("hc1")
        self.assertEqual(status["state"], "connected")
        self.assertGreaterEqual(status["reconnects"], 1)
        print(f"\nrelay restart: first new connection after {elapsed:.2f} s")

    def test_short_tokens_renewed(self) -> defer.Deferred[None]:
        """5 s tokens renewed every 4 s keep the channel up; without renewal it drops (1008)."""
        return defer.ensureDeferred(self._short_tokens())

    async def _short_tokens(self) -> None:
        await self.start(extra_toml="token-grace = 2", lifetime=5)
        started = time.monotonic()
        renewals = 0
        next_renewal = started + 4
        while time.monotonic() - started < 30:
            if time.monotonic() >= next_renewal:
                token = mint(self.relay, "hc1", "defaultListener", lifetime=5)
                await self.worker.call(commands.UpdateToken, name="hc1", token=token)
                renewals += 1
                next_renewal += 4
            await self.transfer(seed=renewals)
            await sleep(0.5)
        status = await self.worker.status("hc1")
        self.assertEqual(status["state"], "connected")
        self.assertEqual(status["reconnects"], 0)
        self.assertGreaterEqual(renewals, 7)
        self.assertEqual(self.worker.output.count("control channel connected: hc1"), 1)
        # Control: stop renewing, and the relay closes the channel for the lapsed token.
        await self.wait_state(lambda s: s["reconnects"] >= 1, 12)
        await self.worker.wait_log(r"control channel hc1 closed \(closed by relay: 1008", timeout=1)
        # Its reconnect with the lapsed token is refused (401) and reported as such.
        status = await self.wait_state(lambda s: s["state"] == "failed", 5)
        self.assertIn("401", status["last_error"])
        # A fresh token brings it back at once.
        token = mint(self.relay, "hc1", "defaultListener", lifetime=60)
        await self.worker.call(commands.UpdateToken, name="hc1", token=token)
        await self.worker.wait_log(r"control channel connected: hc1", count=2, timeout=3)

    def test_drain(self) -> defer.Deferred[None]:
        """Drain: the channel closes at once (new senders get 404), an open connection
        keeps working until the timeout, is then closed, and Drain answers."""
        return defer.ensureDeferred(self._drain())

    async def _drain(self) -> None:
        await self.start()
        url = urls.connect_url(connstr.parse(self.relay.connection_string("hc1", "defaultSender")))
        headers = {"ServiceBusAuthorization": mint(self.relay, "hc1", "defaultSender")}
        client = await relayclient.connect(url, str(self.relay.ca_path), headers)
        client.sendMessage(b"before", isBinary=True)
        self.assertEqual(await client.messages.get(), (b"before", True))
        started = time.monotonic()
        drained = defer.ensureDeferred(self.worker.call(commands.Drain, timeout=2.0))
        await self.wait_state(lambda s: s["state"] == "stopped", 5)
        # No listener any more: a new sender is refused by the relay.
        with self.assertRaises(relayclient.HandshakeFailed) as cm:
            await relayclient.connect(url, str(self.relay.ca_path), headers)
        self.assertEqual(cm.exception.status, 404)
        # The open connection still works until the drain timeout.
        client.sendMessage(b"during", isBinary=True)
        self.assertEqual(await client.messages.get(), (b"during", True))
        self.assertFalse(drained.called)
        code, _ = await client.closed
        self.assertEqual(await drained, {})
        elapsed = time.monotonic() - started
        self.assertEqual(code, 1001)
        self.assertGreater(elapsed, 1.8)
        self.assertLess(elapsed, 8.0)

    def test_through_proxy(self) -> defer.Deferred[None]:
        """With ``proxy`` set, control channel and rendezvous go through an HTTP CONNECT proxy."""
        return defer.ensureDeferred(self._through_proxy())

    async def _through_proxy(self) -> None:
        tinyproxy = shutil.which("tinyproxy")
        if tinyproxy is None:
            raise unittest.SkipTest("tinyproxy is not installed (apt-get install tinyproxy)")
        await self.start()
        port = harness.free_port()
        log = self.dir / "tinyproxy-access.log"
        conf = self.dir / "tinyproxy.conf"
        conf.write_text("\n".join([
            f"Port {port}", "Listen 127.0.0.1", "Timeout 30", f'LogFile "{log}"',
            "LogLevel Connect", "MaxClients 20", "Allow 127.0.0.1",
            f"ConnectPort {self.relay.port}", "BasicAuth hcm s3cret-proxy-pw",
        ]) + "\n")
        proxy = harness.Proc([tinyproxy, "-d", "-c", str(conf)], self.dir, "tinyproxy")
        self.addCleanup(proxy.stop)
        harness.wait_port(port, timeout=10)
        item = hc_item(self.relay, "hc1", f"127.0.0.1:{self.echo_port}")
        item["proxy"] = f"http://hcm:s3cret-proxy-pw@127.0.0.1:{port}"
        await self.worker.call(commands.SetHybridConnections, hcs=[item])
        await self.worker.wait_log(r"control channel connected: hc1", count=2)
        await self.transfer(size=1024 * 1024)
        text = log.read_text(errors="replace")
        self.assertGreaterEqual(text.count(f"CONNECT localhost:{self.relay.port}"), 2, text[-2000:])
        self.assertNotIn("s3cret-proxy-pw", self.worker.output)

    def test_many_hcs_reconciled(self) -> defer.Deferred[None]:
        """One worker, 30 HCs: all connect; a smaller set closes the removed ones."""
        return defer.ensureDeferred(self._many())

    async def _many(self) -> None:
        names = ("hc1",) + tuple(f"hc{i:02d}" for i in range(2, 31))
        await self.start(hcs=names)
        endpoint = f"127.0.0.1:{self.echo_port}"
        await self.worker.call(commands.SetHybridConnections,
                               hcs=[hc_item(self.relay, n, endpoint) for n in names])
        for n in names:
            await self.worker.wait_log(rf"control channel connected: {n}\b")
        status = (await self.worker.call(commands.GetStatus))["status"]["hcs"]
        self.assertEqual({n for n, s in status.items() if s["state"] == "connected"}, set(names))
        keep = names[:10]
        await self.worker.call(commands.SetHybridConnections,
                               hcs=[hc_item(self.relay, n, endpoint) for n in keep])
        status = (await self.worker.call(commands.GetStatus))["status"]["hcs"]
        self.assertEqual(set(status), set(keep))
        await self.transfer()
        # A removed HC has no listener any more: its senders get 404.
        deadline = time.monotonic() + 5
        while True:
            try:
                await send(self.relay, names[-1], b"x", self.cas)
            except SendFailed as e:
                self.assertEqual(e.status, 404)
                break
            if time.monotonic() > deadline:
                self.fail("a removed HC still accepted connections")
            await sleep(0.1)

    def test_untrusted_relay_reported(self) -> defer.Deferred[None]:
        """Without the relay's CA the channel fails TLS verification, and says so."""
        return defer.ensureDeferred(self._untrusted())

    async def _untrusted(self) -> None:
        await self.start()
        item = hc_item(self.relay, "hc1", "127.0.0.1:9")
        item["ca_certificates"] = []
        await self.worker.call(commands.SetHybridConnections, hcs=[item])
        status = await self.wait_state(
            lambda s: "certificate verify failed" in (s["last_error"] or ""), 10
        )
        self.assertIn(status["state"], ("failed", "connecting"))
        self.assertIn("TLS", status["last_error"])

    async def wait_state(self, predicate: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            status = await self.worker.status("hc1")
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"status not reached within {timeout} s: {status}")
            await sleep(0.1)
