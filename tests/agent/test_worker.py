"""The worker's AMP responders, over iosim, with scripted relay connections."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.agent import commands
from hcm_twisted.agent.worker import Worker, WorkerProtocol
from hcm_twisted.core import sas
from tests.agent.wsfake import (
    FakeNetwork,
    client_frames,
    close_frame,
    switching_protocols,
    text_messages,
    use_clock,
)

KEY = "bGlzdGVuLWtleS1mb3ItdGVzdHMtb25seS0xMTExMTE="
STATUS_KEYS = {"state", "last_error", "token_expiry", "open", "accepted", "rejected",
               "bytes_in", "bytes_out", "endpoint_reachable", "reconnects"}


def token(hc: str = "hc1", now: float = 1_700_000_000) -> str:
    return sas.mint(f"http://relay.example/{hc}/", "defaultListener", KEY, 3600, now=now)


def item(name: str = "hc1", **kw: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "name": name,
        "url": f"wss://relay.example:9443/$hc/{name}?sb-hc-action=listen",
        "endpoint": "127.0.0.1:7001",
        "token": token(name),
        "ca_certificates": [],
        "ping_interval": 30,
        "connect_timeout": 5,
    }
    value.update(kw)
    return value


class WorkerAmpTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        use_clock(self, self.clock)
        self.net = FakeNetwork()
        self.tcp = FakeNetwork()
        self.worker = Worker(
            self.clock, pid=4242, relay_endpoints=self.net, tcp_endpoints=self.tcp.tcp,
            listener_options={"rng": lambda: 0.5},
        )
        self.lost: list[bool] = []
        self.client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: WorkerProtocol(self.worker, on_lost=lambda: self.lost.append(True)),
            amp.AMP,
        )

    def call(self, command: type[amp.Command], **kw: Any) -> Any:
        d = self.client.callRemote(command, **kw)
        self.pump.flush()
        return self.successResultOf(d)

    def open(self, index: int) -> tuple[Any, Any]:
        proto, transport = self.net.connections[index]
        request = transport.value()
        transport.clear()
        proto.dataReceived(switching_protocols(request))
        return proto, transport

    def test_set_and_status(self) -> None:
        """SetHybridConnections opens channels; GetStatus reports each HC with all fields."""
        self.assertEqual(self.call(commands.SetHybridConnections, hcs=[item("hc1"), item("hc2")]), {})
        self.assertEqual(len(self.net.connections), 2)
        self.open(0)
        status = self.call(commands.GetStatus)["status"]
        self.assertEqual(status["pid"], 4242)
        self.assertEqual(set(status["hcs"]), {"hc1", "hc2"})
        for entry in status["hcs"].values():
            self.assertLessEqual(STATUS_KEYS, set(entry))
        self.assertEqual(status["hcs"]["hc1"]["state"], "connected")
        self.assertEqual(status["hcs"]["hc2"]["state"], "connecting")
        self.assertEqual(status["hcs"]["hc1"]["token_expiry"], sas.expiry_of(token("hc1")))
        self.assertEqual(status["hcs"]["hc1"]["open"], 0)
        # No token (or signature) in the status.
        text = json.dumps(status)
        self.assertNotIn("SharedAccessSignature", text)
        self.assertNotIn(sas.parse(token("hc1")).sig, text)

    def test_update_token(self) -> None:
        """UpdateToken sends renewToken on the live channel."""
        self.call(commands.SetHybridConnections, hcs=[item("hc1")])
        proto, transport = self.open(0)
        fresh = token("hc1", now=1_700_001_000)
        self.assertEqual(self.call(commands.UpdateToken, name="hc1", token=fresh), {})
        self.assertEqual(text_messages(transport.value()), [{"renewToken": {"token": fresh}}])
        # Unknown names are ignored, not errors.
        self.assertEqual(self.call(commands.UpdateToken, name="nope", token=fresh), {})

    def test_reconcile(self) -> None:
        """Removed HCs are closed, new ones opened, changed ones updated in place."""
        self.call(commands.SetHybridConnections, hcs=[item("hc1"), item("hc2")])
        hc1, hc1_t = self.open(0)
        hc2, hc2_t = self.open(1)
        fresh = token("hc2", now=1_700_002_000)
        self.call(commands.SetHybridConnections,
                  hcs=[item("hc2", endpoint="127.0.0.1:7002", token=fresh), item("hc3")])
        # hc1 closed cleanly.
        self.assertEqual(client_frames(hc1_t.value())[-1][0], 0x8)
        # hc2 kept its channel, got the token, uses the new endpoint.
        self.assertEqual(text_messages(hc2_t.value()), [{"renewToken": {"token": fresh}}])
        self.assertEqual(self.worker._hcs["hc2"].acceptor.spec.endpoint, "127.0.0.1:7002")
        # hc3 is connecting.
        self.assertEqual(len(self.net.connections), 3)
        hc1.dataReceived(close_frame(1000))
        hc1.connectionLost(Failure(ConnectionDone()))
        status = self.call(commands.GetStatus)["status"]
        self.assertEqual(set(status["hcs"]), {"hc2", "hc3"})
        self.assertEqual(status["hcs"]["hc2"]["state"], "connected")
        # A changed URL reconnects.
        self.call(commands.SetHybridConnections,
                  hcs=[item("hc2", url="wss://relay.example:9444/$hc/hc2?sb-hc-action=listen",
                            token=fresh), item("hc3")])
        self.assertEqual(client_frames(hc2_t.value())[-1][0], 0x8)
        hc2.dataReceived(close_frame(1000))
        hc2.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.net.attempts[-1].port, 9444)

    def test_staged_parts(self) -> None:
        """StageHybridConnections parts are added to the next SetHybridConnections."""
        self.assertEqual(self.call(commands.StageHybridConnections, hcs=[item("hc1")]), {})
        self.assertEqual(self.call(commands.StageHybridConnections, hcs=[item("hc2")]), {})
        # Nothing happens until the set is complete.
        self.assertEqual(self.call(commands.GetStatus)["status"]["hcs"], {})
        self.call(commands.SetHybridConnections, hcs=[item("hc3")])
        status = self.call(commands.GetStatus)["status"]
        self.assertEqual(set(status["hcs"]), {"hc1", "hc2", "hc3"})
        # The next set starts afresh.
        self.call(commands.SetHybridConnections, hcs=[item("hc3")])
        self.assertEqual(set(self.call(commands.GetStatus)["status"]["hcs"]), {"hc3"})

    def test_status_fits_one_amp_value(self) -> None:
        """With very many HCs the status is cut to fit AMP's 64 kB, and says so."""
        items = [item(f"hc{i:04d}", ping_interval=30) for i in range(400)]
        self.net.refuse = True
        for start in range(0, 300, 100):
            self.call(commands.StageHybridConnections, hcs=items[start:start + 100])
        self.call(commands.SetHybridConnections, hcs=items[300:])
        self.assertEqual(len(self.worker.status(limit=10**9)["hcs"]), 400)
        status = self.call(commands.GetStatus)["status"]
        self.assertTrue(status["truncated"])
        self.assertLess(len(json.dumps(status)), 65535)
        self.assertGreater(len(status["hcs"]), 100)
        self.flushLoggedErrors()

    def test_bad_items_skipped(self) -> None:
        """A malformed item is logged and skipped; the others are applied."""
        result = self.call(commands.SetHybridConnections,
                           hcs=[{"name": "bad"}, item("good"), "junk"])
        self.assertEqual(result, {})
        status = self.call(commands.GetStatus)["status"]
        self.assertEqual(set(status["hcs"]), {"good"})
        self.flushLoggedErrors()

    def test_drain(self) -> None:
        """Drain closes the control channels and answers once connections are done."""
        self.call(commands.SetHybridConnections, hcs=[item("hc1")])
        proto, transport = self.open(0)
        d = self.client.callRemote(commands.Drain, timeout=5.0)
        self.pump.flush()
        self.assertEqual(client_frames(transport.value())[-1][0], 0x8)
        self.assertNoResult(d)
        proto.dataReceived(close_frame(1000))
        proto.connectionLost(Failure(ConnectionDone()))
        self.pump.flush()
        self.assertEqual(self.successResultOf(d), {})
        status = self.call(commands.GetStatus)["status"]
        self.assertEqual(status["hcs"]["hc1"]["state"], "stopped")

    def test_master_gone(self) -> None:
        """A closed AMP pipe tells the worker to exit."""
        self.client.transport.loseConnection()  # type: ignore[union-attr]
        self.pump.flush()
        self.assertEqual(self.lost, [True])
