"""TLS failures are errors for the agent and the sender: no connection, the reason shown.

The relay serves a certificate that is wrong in one way (host name, issuer, expired); the
agent and the sender trust only the test CA.  The agent's status shows the HC not connected
with a TLS error; the sender closes the app's connection without data and logs why.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.e2e import harness
from tests.e2e.relayfixture import Relay, relay_toml
from tests.e2e.stack import Echo, Stack, listen, run_pattern, secret_findings, wait_until
from tests.security.certs import CA

TLS_ERROR = re.compile(r"certificate|verif|hostname|host name|expired|tls|ssl", re.I)


class TlsFailures(TestCase):
    timeout = 90

    def start(self, case: str) -> None:
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        ca = CA(self.directory / "ca")
        if case == "wrong-host":
            cert, key = ca.server("relay", ["wrong.example"])
        elif case == "untrusted":
            cert, key = CA(self.directory / "other", "other CA").server("relay", ["localhost"])
        else:
            cert, key = ca.server("relay", ["localhost", "127.0.0.1"], expired=True)
        relay_dir = self.directory / "relay"
        relay_dir.mkdir()
        port = harness.free_port()
        text = relay_toml(port, ["hc1"]).replace(
            f'endpoint = "ssl:{port}:interface=127.0.0.1"',
            f'endpoint = "ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"')
        self.assertIn("certKey", text)
        config = relay_dir / "hcm-relay.toml"
        config.write_text(text)
        self.relay = Relay(relay_dir, port, config).start()
        self.addCleanup(self.relay.stop)
        self.echo = listen(Echo)
        self.addCleanup(self.echo.stopListening)
        self.stack = Stack(self.directory, {"hc1": f"127.0.0.1:{self.echo.getHost().port}"},
                           workers=1)
        self.stack.relay = self.relay
        doc = self.stack.agent_document()
        doc["agent"]["ca-certificates"] = str(ca.path)
        self.stack.write_agent_config(doc)
        self.stack.agent = harness.twist("hcm", self.stack.agent_config, cwd=self.directory,
                                         name="hcm-agent")
        self.addCleanup(self.stack.agent.stop)
        self.stack.agent.wait_log(r"hcm agent ready", timeout=30)
        port2 = harness.free_port()
        self.stack.sender_ports["hc1"] = port2
        self.stack.relay = self.relay
        self.ca = ca

    async def check(self, case: str) -> None:
        self.start(case)
        stack = self.stack

        def failed() -> Any:
            item = stack.status()[0]
            errors = [w.get("last_error") or "" for w in item.get("workers", [])]
            return item if errors and all(TLS_ERROR.search(e) for e in errors) else None

        item = await wait_until(failed, 20, what=f"{case}: TLS error in /status")
        self.assertFalse(item["connected"])
        agent_log = stack.agent.output()  # type: ignore[union-attr]
        self.assertNotIn("control channel connected", agent_log)
        self.assertRegex(agent_log, TLS_ERROR)
        # An error, not a warning: the line reporting the failure is logged at error level.
        failure_lines = [line for line in agent_log.splitlines()
                         if "control channel hc1 failed" in line]
        self.assertTrue(failure_lines)
        self.assertTrue(all("#error]" in line for line in failure_lines), failure_lines[0])
        print(f"\n{case}: agent status error {item['workers'][0]['last_error']!r}")
        # The sender: the app's connection is closed, no data, the reason logged.
        stack.sender_extra = {"ca-certificates": str(self.ca.path)}  # trust only the test CA
        sender = stack.start_sender()
        self.addCleanup(sender.stop)
        client = await run_pattern(stack.sender_ports["hc1"], 10_000, timeout=20)
        self.assertEqual(client.count, 0, client.describe())
        await wait_until(lambda: "did not connect it" in sender.output(), 10,
                         what=f"{case}: the sender's failure line")
        lines = [line for line in sender.output().splitlines() if "did not connect it" in line]
        self.assertTrue(all(TLS_ERROR.search(line) for line in lines), lines[0])
        self.assertTrue(all("#error]" in line for line in lines), lines[0])
        self.assertEqual(self.relay.output().count("listener "), 0)
        self.assertEqual(secret_findings(stack.logs(), harness.TEST_KEYS.values()), [])

    def test_wrong_host_name(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self.check("wrong-host"))

    def test_untrusted_ca(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self.check("untrusted"))

    def test_expired_certificate(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self.check("expired"))
