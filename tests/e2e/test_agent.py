"""The whole agent (``twist hcm``: master + workers) against a real ``hcm-relay``.

app (blocking sockets here) -> hcm-sender (process) -> hcm-relay (process) -> agent workers
(processes) -> echo endpoint (a thread here).  The ``hcm`` command is run as a real process
where its output matters; polling uses the same admin client in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import tomli_w
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.agent import admin
from tests.e2e import harness
from tests.e2e.harness import wait_for
from tests.e2e.relayfixture import Relay, start_relay

_log = Logger()


def alive(pid: int) -> bool:
    """Is ``pid`` a live process (zombies count as dead)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class AgentE2E(SynchronousTestCase):
    relay: Relay
    root: Path
    echo: harness.EchoServer

    def setUp(self) -> None:
        # A short directory: the admin unix socket lives beside the agent's config.
        self.root = Path(tempfile.mkdtemp(prefix="hcm-e2e-agent-", dir="/tmp"))  # noqa: S108
        if not os.environ.get("HCM_KEEP_E2E"):
            self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
        self.echo = harness.EchoServer()
        self.addCleanup(self.echo.close)
        port = self.echo.port
        metadata = json.dumps([{"key": "endpoint", "value": f"127.0.0.1:{port}"}])
        self.relay = start_relay(
            self.root / "relay", hcs=("hc1", "hc2", {"name": "hcmeta", "user-metadata": metadata}),
        )
        self.addCleanup(self.relay.stop)

    # ---- helpers --------------------------------------------------------

    @property
    def echo_endpoint(self) -> str:
        return f"127.0.0.1:{self.echo.port}"

    def start_agent(self, workers: int, hcs: list[str],
                    drain_timeout: float = 1) -> tuple[harness.Proc, Path]:
        directory = Path(tempfile.mkdtemp(prefix="a-", dir=self.root))
        path = directory / "hcm.toml"
        doc: dict[str, Any] = {
            "agent": {"workers": workers, "ca-certificates": str(self.relay.ca_path),
                      "drain-timeout": drain_timeout},
            "hybrid-connection": [
                {"connection-string": self.relay.connection_string(hc), "endpoint": self.echo_endpoint}
                for hc in hcs
            ],
        }
        path.write_text(tomli_w.dumps(doc))
        path.chmod(0o600)
        proc = harness.twist("hcm", path, cwd=directory, name="hcm-agent")
        self.addCleanup(self._stop, proc)
        proc.wait_log(r"hcm agent ready", timeout=30)
        return proc, path

    def _stop(self, proc: harness.Proc) -> None:
        proc.stop()
        log = proc.log_path.read_text(errors="replace")
        for key in harness.TEST_KEYS.values():
            self.assertNotIn(key, log)

    def status(self, path: Path) -> list[dict[str, Any]]:
        endpoint = f"unix:{path.parent / 'hcm.sock'}"
        code, body = admin.request(endpoint, "GET", "/status")
        self.assertEqual(code, 200)
        result: list[dict[str, Any]] = body
        return result

    def hc(self, path: Path, name: str) -> dict[str, Any] | None:
        return next((i for i in self.status(path) if i["name"] == name), None)

    def all_connected(self, path: Path, name: str, workers: int) -> dict[str, Any] | None:
        item = self.hc(path, name)
        if item is None or len(item["workers"]) != workers:
            return None
        if all(w["state"] == "connected" for w in item["workers"]):
            return item
        return None

    def cli(self, path: Path, *args: str) -> Any:
        result = harness.hcm_cli(["--config", str(path), *args])
        for key in harness.TEST_KEYS.values():
            self.assertNotIn(key, result.stdout + result.stderr)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result

    def round_trip(self, port: int, size: int) -> None:
        """Send ``size`` random bytes through the sender and half-close; the echo returns them
        all, then the end of stream comes back (close propagation both ways)."""
        payload = os.urandom(size)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sender = threading.Thread(
                target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR))
            )
            sender.start()
            received = hashlib.sha256()
            count = 0
            while True:
                data = s.recv(65536)
                if not data:
                    break
                received.update(data)
                count += len(data)
            sender.join(10)
        self.assertEqual(count, size)
        self.assertEqual(received.hexdigest(), hashlib.sha256(payload).hexdigest())

    # ---- tests ----------------------------------------------------------

    def test_two_workers(self) -> None:
        """Both workers listen; `hcm show --json` says so; data crosses through the agent."""
        agent, path = self.start_agent(2, ["hc1"])
        wait_for("both workers connected", lambda: self.all_connected(path, "hc1", 2), 20)
        shown = json.loads(self.cli(path, "show", "hc1", "--json").stdout)
        self.assertIs(shown["connected"], True)
        self.assertEqual(shown["endpoint"], self.echo_endpoint)
        self.assertEqual([w["state"] for w in shown["workers"]], ["connected", "connected"])
        pids = {w["pid"] for w in shown["workers"]}
        self.assertEqual(len(pids), 2)
        self.assertTrue(all(alive(pid) for pid in pids))
        listed = json.loads(self.cli(path, "list", "--json").stdout)
        self.assertEqual([i["name"] for i in listed], ["hc1"])

        port = self.start_sender(path, "hc1")
        for size in [1, 300_000, 1_000_000, 65536, 12345, 4_000_000]:
            self.round_trip(port, size)

        def counted() -> dict[str, Any] | None:
            item = self.hc(path, "hc1")
            assert item is not None
            workers = item["workers"]
            done = sum(w["accepted"] for w in workers) == 6 and sum(w["open"] for w in workers) == 0
            return item if done else None

        wait_for("6 accepted, none open", counted, 10)

    def start_sender(self, path: Path, hc: str) -> int:
        port = harness.free_port()
        sender_path = path.parent / "hcm-sender.toml"
        sender_path.write_text(tomli_w.dumps({
            "ca-certificates": str(self.relay.ca_path),
            "hybrid-connection": [{
                "name": hc,
                "connection-string": self.relay.connection_string(hc, "defaultSender"),
                "listen": f"tcp:{port}:interface=127.0.0.1",
            }],
        }))
        sender = harness.twist("hcm-sender", sender_path, cwd=path.parent, name="hcm-sender")
        self.addCleanup(sender.stop)
        self.sender = sender
        sender.wait_log(r"hcm-sender listening on", timeout=30)
        return port

    def test_add_remove_live(self) -> None:
        """`hcm add`/`remove` take effect in the running agent; other HCs are untouched."""
        agent, path = self.start_agent(1, ["hc1"])
        before = wait_for("hc1 connected", lambda: self.all_connected(path, "hc1", 1), 20)
        out = self.cli(path, "add", self.relay.connection_string("hc2"), "--endpoint",
                       self.echo_endpoint).stdout
        self.assertIn("reloaded", out)
        wait_for("hc2 connected", lambda: self.all_connected(path, "hc2", 1), 10)
        # Without --endpoint: the endpoint comes from the HC's user metadata.
        self.cli(path, "add", self.relay.connection_string("hcmeta"))
        meta = wait_for("hcmeta connected", lambda: self.all_connected(path, "hcmeta", 1), 10)
        self.assertEqual(meta["endpoint"], self.echo_endpoint)
        self.assertEqual(meta["endpoint_source"], "metadata")
        after = self.hc(path, "hc1")
        assert after is not None
        self.assertEqual(after["workers"][0]["pid"], before["workers"][0]["pid"])
        self.assertEqual(after["workers"][0]["connected_since"], before["workers"][0]["connected_since"])
        self.assertEqual(after["workers"][0]["reconnects"], before["workers"][0]["reconnects"])

        self.cli(path, "remove", "hc1")
        names = [i["name"] for i in self.status(path)]
        self.assertEqual(names, ["hc2", "hcmeta"])
        self.assertTrue(self.all_connected(path, "hc2", 1))
        agent.wait_log(r"closing hybrid connection hc1", timeout=10)

    def test_master_killed(self) -> None:
        """When the master dies (SIGKILL), no worker is left within 2 s."""
        agent, path = self.start_agent(2, ["hc1"])
        item = wait_for("both workers connected", lambda: self.all_connected(path, "hc1", 2), 20)
        pids = [w["pid"] for w in item["workers"]]
        self.assertTrue(all(alive(pid) for pid in pids))
        start = time.monotonic()
        agent.kill()
        wait_for("workers gone", lambda: not any(alive(pid) for pid in pids), 2.0, step=0.02)
        took = time.monotonic() - start
        self.assertLess(took, 2.0)
        _log.info("workers gone {took:.2f} s after the master was killed", took=took)

    def test_worker_killed(self) -> None:
        """`kill -9` on one worker: a replacement listens within 5 s; the other is untouched."""
        agent, path = self.start_agent(2, ["hc1"])
        item = wait_for("both workers connected", lambda: self.all_connected(path, "hc1", 2), 20)
        victim, survivor = item["workers"][0]["pid"], item["workers"][1]["pid"]
        start = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def replaced() -> dict[str, Any] | None:
            now = self.all_connected(path, "hc1", 2)
            if now is None:
                return None
            pids = [w["pid"] for w in now["workers"]]
            return now if victim not in pids and survivor in pids else None

        now = wait_for("replacement connected", replaced, 5.0, step=0.05)
        took = time.monotonic() - start
        self.assertLess(took, 5.0)
        _log.info("replacement worker listening {took:.2f} s after kill -9", took=took)
        self.assertEqual(now["workers"][0]["restarts"], 1)
        self.assertIn("signal 9", now["workers"][0]["last_exit"])
        self.assertTrue(alive(survivor))

    def test_drain_on_sigterm(self) -> None:
        """SIGTERM to the master: open connections keep working until they end, then it exits."""
        agent, path = self.start_agent(1, ["hc1"], drain_timeout=20)
        wait_for("worker connected", lambda: self.all_connected(path, "hc1", 1), 20)
        port = self.start_sender(path, "hc1")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"before")
            self.assertEqual(s.recv(100), b"before")
            agent.signal(signal.SIGTERM)  # the master only
            agent.wait_log(r"Received SIGTERM", timeout=5)
            time.sleep(0.5)
            s.sendall(b"during the drain")
            got = b""
            while len(got) < 16:
                got += s.recv(100)
            self.assertEqual(got, b"during the drain")
            self.assertIsNone(agent.popen.poll())  # still draining
            start = time.monotonic()
        agent.popen.wait(15)
        took = time.monotonic() - start
        _log.info("agent exited {took:.2f} s after the last connection closed", took=took)
        self.assertLess(took, 10)
        # twist re-raises the signal it stopped on: -SIGTERM is a clean stop here.
        self.assertIn(agent.popen.returncode, (0, -signal.SIGTERM))
        self.assertIn("stopped: exit status 0", agent.log_path.read_text())

    def test_many_hybrid_connections(self) -> None:
        """A set too big for one AMP value reaches the worker whole (sent in parts)."""
        names = ["hc1"] + [f"missing-{i:03d}-{'x' * 30}" for i in range(160)]
        agent, path = self.start_agent(1, names)
        wait_for("hc1 connected", lambda: self.all_connected(path, "hc1", 1), 20)
        agent.wait_log(r"hybrid connection missing-159", timeout=10)
        items = self.status(path)
        self.assertEqual([i["name"] for i in items], names)
        states = {i["workers"][0]["state"] for i in items[1:]}
        self.assertNotIn("not listening", states)  # the worker knows every one of them

    def test_ctrl_c_to_the_process_group(self) -> None:
        """Ctrl-C in a terminal (SIGINT to the whole group): workers leave it to the master,
        which drains them; every worker exits 0 and nothing logs a traceback."""
        agent, path = self.start_agent(2, ["hc1"])
        item = wait_for("both workers connected", lambda: self.all_connected(path, "hc1", 2), 20)
        pids = [w["pid"] for w in item["workers"]]
        os.killpg(agent.pid, signal.SIGINT)
        agent.popen.wait(15)
        wait_for("workers gone", lambda: not any(alive(pid) for pid in pids), 5.0, step=0.05)
        log = agent.log_path.read_text(errors="replace")
        self.assertEqual(log.count("stopped: exit status 0"), 2, log[-3000:])
        self.assertNotIn("Traceback", log)
        for pid in pids:
            self.assertNotIn(f"worker {pid}: [twisted.internet.base] Received SIGINT", log)

    def test_connections_spread_across_workers(self) -> None:
        """200 connections (16 at a time) through 2 workers: the relay's random choice gives
        each worker a share, every connection's bytes come back intact, and the status adds up."""
        agent, path = self.start_agent(2, ["hc1"])
        wait_for("both workers connected", lambda: self.all_connected(path, "hc1", 2), 20)
        port = self.start_sender(path, "hc1")
        sizes = [1 + (i * 7919) % 20000 for i in range(200)]
        errors: list[BaseException] = []

        def run(chunk: list[int]) -> None:
            try:
                for size in chunk:
                    self.round_trip(port, size)
            except BaseException as e:  # reported below, in the test's thread
                errors.append(e)

        threads = [threading.Thread(target=run, args=(sizes[i::16],)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])

        def settled() -> dict[str, Any] | None:
            item = self.hc(path, "hc1")
            assert item is not None
            workers = item["workers"]
            done = sum(w["accepted"] for w in workers) == 200 and sum(w["open"] for w in workers) == 0
            return item if done else None

        item = wait_for("200 accepted, none open", settled, 15)
        shares = sorted(w["accepted"] for w in item["workers"])
        _log.info("200 connections over 2 workers: {shares}", shares=shares)
        # Random choice: a share under 40 of 200 has probability below 1e-17.
        self.assertGreater(shares[0], 40, shares)
        self.assertEqual(sum(w["bytes_in"] for w in item["workers"]), sum(sizes))
        # One log line per connection, at its end, with its duration and bytes.
        lines = re.findall(r"hc1: connection \S+ from \S+ closed after [0-9.]+ s, (\d+) bytes in",
                           agent.output())
        self.assertEqual(sorted(int(n) for n in lines), sorted(sizes))
        sent = re.findall(r"hc1: connection from \S+ \(id \S+\) closed after [0-9.]+ s, (\d+) bytes out",
                          self.sender.output())
        self.assertEqual(sorted(int(n) for n in sent), sorted(sizes))
