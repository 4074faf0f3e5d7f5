"""The whole path with real processes: app -> hcm-sender -> hcm-relay -> hcm agent -> endpoint.

The app clients and the echo endpoint run in this process; bytes are hashed at both ends.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.e2e import harness
from tests.e2e.relayfixture import Relay, start_relay
from tests.e2e.stack import Echo, PatternClient, listen, reactor, run_pattern, sleep
from tests.e2e.test_sender import sender_hc, write_sender_config
from tests.timers import cancel_batched_timers


def write_agent_config(directory: Path, relay: Relay, hcs: dict[str, str],
                       workers: int = 2) -> Path:
    sock_dir = Path(tempfile.mkdtemp(prefix="hcmt-"))  # unix socket paths must be short
    doc = {
        "agent": {
            "workers": workers,
            "admin": f"unix:{sock_dir / 'admin.sock'}:mode=600",
            "ca-certificates": str(relay.ca_path),
        },
        "hybrid-connection": [
            {"name": hc, "connection-string": relay.connection_string(hc), "endpoint": endpoint}
            for hc, endpoint in hcs.items()
        ],
    }
    path = directory / "hcm.toml"
    path.write_text(tomli_w.dumps(doc))
    path.chmod(0o600)
    return path


class FullPathTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.addCleanup(cancel_batched_timers)
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        self.echo = listen(Echo)
        self.addCleanup(self.echo.stopListening)
        echo_port = self.echo.getHost().port
        self.flow_echo = listen(Echo)  # stops reading while its own writes are stuck
        self.addCleanup(self.flow_echo.stopListening)
        flow_port = self.flow_echo.getHost().port
        closed_port = harness.free_port()  # nothing listens there
        self.metadata_port = harness.free_port()
        self.relay = start_relay(self.directory / "relay", hcs=(
            "hc1",
            "down",
            "flow",
            {"name": "meta",
             "user-metadata": f'[{{"key":"endpoint","value":"127.0.0.1:{echo_port}"}}]'},
        ))
        self.addCleanup(self.relay.stop)
        agent_config = write_agent_config(self.directory, self.relay, {
            "hc1": f"127.0.0.1:{echo_port}",
            "down": f"127.0.0.1:{closed_port}",
            "flow": f"127.0.0.1:{flow_port}",
            "meta": f"127.0.0.1:{echo_port}",
        })
        self.addCleanup(shutil.rmtree, Path(tomli_w_load_admin(agent_config)).parent, True)
        self.agent = harness.twist("hcm", agent_config, cwd=self.directory, name="hcm-agent")
        self.addCleanup(self.agent.stop)
        self.agent.wait_log(r"hcm agent ready", timeout=30)
        for hc in ("hc1", "down", "flow", "meta"):
            self.agent.wait_log(rf"control channel connected: {hc}", timeout=30)
        self.port = harness.free_port()
        self.down_port = harness.free_port()
        self.flow_port = harness.free_port()
        sender_config = write_sender_config(self.directory, self.relay, [
            sender_hc(self.relay, "hc1", self.port),
            sender_hc(self.relay, "down", self.down_port),
            sender_hc(self.relay, "flow", self.flow_port),
            {"name": "meta",
             "connection-string": self.relay.connection_string("meta", "defaultSender"),
             "address": "127.0.0.7"},
        ])
        self.sender = harness.twist("hcm-sender", sender_config, cwd=self.directory)
        self.addCleanup(self.sender.stop)
        self.sender.wait_log(rf"hcm-sender listening on 127\.0\.0\.1:{self.port} for hc1")
        self.meta_port = echo_port

    @defer.inlineCallbacks
    def test_64mib_byte_exact(self) -> Any:
        size = 64 << 20
        started = time.monotonic()
        client = yield run_pattern(self.port, size)
        elapsed = time.monotonic() - started
        self.assertEqual(client.count, size)
        self.assertEqual(client.received.hexdigest(), client.sent.hexdigest())
        print(f"\n64 MiB echoed app->sender->relay->agent->endpoint and back in {elapsed:.2f} s")

    @defer.inlineCallbacks
    def test_50_concurrent_transfers(self) -> Any:
        sizes = [(i * 7919) % (256 * 1024) + 1 for i in range(50)]
        clients = yield defer.gatherResults([run_pattern(self.port, n) for n in sizes])
        for client, n in zip(clients, sizes, strict=True):
            self.assertEqual(client.count, n)
            self.assertEqual(client.received.hexdigest(), client.sent.hexdigest())

    @defer.inlineCallbacks
    def test_unreachable_endpoint_is_rejected_fast(self) -> Any:
        """The agent rejects; the sender closes the app's connection and logs the status."""
        started = time.monotonic()
        client = yield run_pattern(self.down_port, 1000)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(client.count, 0)
        for _ in range(40):
            if "down: connection from" in self.sender.output():
                break
            yield sleep(0.05)
        log = self.sender.output()
        self.assertRegex(log, r"down: connection from 127\.0\.0\.1:\d+ closed, the relay did not "
                              r"connect it: \d{3} ")
        self.assertNotIn(harness.TEST_KEYS["defaultSender"], log)

    @defer.inlineCallbacks
    def test_dns_name_mode_from_metadata(self) -> Any:
        """No listen: the endpoint comes from the HC's user metadata, bound on 127.0.0.7."""
        self.sender.wait_log(
            rf"hcm-sender listening on 127\.0\.0\.7:{self.meta_port} for meta "
            rf"\(apps use 127\.0\.0\.1:{self.meta_port}\)"
        )
        client = yield run_pattern(self.meta_port, 100_000, host="127.0.0.7")
        self.assertEqual(client.count, 100_000)
        self.assertEqual(client.received.hexdigest(), client.sent.hexdigest())


    @defer.inlineCallbacks
    def test_app_not_reading_stops_everything_with_bounded_memory(self) -> Any:
        """Flow control end to end: an app that does not read stalls its own writes.

        The endpoint echoes with flow control, so the app's unread replies back up
        through sender, relay and agent to the endpoint and then to the app's
        writes.  Memory of the sender and of the agent's workers stays bounded.
        """
        self.sender.wait_log(rf"hcm-sender listening on 127\.0\.0\.1:{self.flow_port} for flow")
        workers = child_pids(self.agent.pid)
        self.assertTrue(workers)
        before = {pid: rss(pid) for pid in [self.sender.pid, *workers]}
        relay_pid = self.relay.proc.pid  # type: ignore[union-attr]
        relay_before = rss(relay_pid)
        size = 256 << 20
        client = PatternClient(size)
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.flow_port)
        yield endpoints.connectProtocol(ep, client)
        client.transport.pauseProducing()  # type: ignore[union-attr]  # the app does not read
        last = -1
        for _ in range(100):  # until the app's writes stall
            yield sleep(0.1)
            if size - client.written == last:
                break
            last = size - client.written
        yield sleep(1.0)
        print(f"\nstalled after {client.written >> 20} MiB written; growth "
              f"{ {p: (rss(p) - b) >> 20 for p, b in before.items()} } MiB, relay "
              f"{(rss(relay_pid) - relay_before) >> 20} MiB")
        self.assertGreater(size - client.written, size // 2, "the app could write most of 256 MiB")
        for pid, start in before.items():
            grown = rss(pid) - start
            self.assertLess(grown, 48 << 20, f"pid {pid} grew by {grown >> 20} MiB")
        client.transport.resumeProducing()  # type: ignore[union-attr]
        yield client.closed
        self.assertEqual(client.count, size)
        self.assertEqual(client.received.hexdigest(), client.sent.hexdigest())


@implementer(IHalfCloseableProtocol)
def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out.extend(int(c) for c in (task / "children").read_text().split())
    return out


def tomli_w_load_admin(config: Path) -> str:
    import tomllib

    admin = tomllib.loads(config.read_text())["agent"]["admin"]
    return str(admin.split(":", 1)[1].split(":mode")[0])
