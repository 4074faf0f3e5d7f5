"""Short-lived tokens and key rotation under load: no control channel lost, no failed transfer.

``HCM_FAULT_TOKEN_SECONDS`` sets the agent's token-lifetime (default 10 s) and
``HCM_FAULT_TOKEN_RUN`` how long the load runs (default 60 s; 300 for the issue's 5 minutes).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.e2e import harness, relayclient
from tests.e2e.stack import Echo, Stack, listen, secret_findings, sleep, wait_until
from tests.faults.load import Load, check_no_loss
from tests.timers import cancel_batched_timers

LIFETIME = float(os.environ.get("HCM_FAULT_TOKEN_SECONDS", "10"))
RUN = float(os.environ.get("HCM_FAULT_TOKEN_RUN", "60"))


class TokenTests(TestCase):
    timeout = RUN + 120

    def setUp(self) -> None:
        self.addCleanup(cancel_batched_timers)  # relayclient's autobahn timers
        self.echo = listen(Echo)
        self.addCleanup(self.echo.stopListening)
        self.stack = Stack(Path(self.mktemp()), {"hc1": f"127.0.0.1:{self.echo.getHost().port}"},
                           workers=2, agent={"token-lifetime": LIFETIME},
                           relay_toml='token-grace = 1\nlog-level = "debug"')
        self.stack.start()
        self.addCleanup(self.stack.stop)
        self.port = self.stack.sender_ports["hc1"]

    def load(self, **kw: Any) -> Load:
        load = Load(self.port, **kw)
        self.addCleanup(lambda: defer.ensureDeferred(load.stop()))
        return load

    def connects(self) -> int:
        assert self.stack.agent is not None
        return self.stack.agent.output().count("control channel connected: hc1")

    def test_short_tokens_renewed_under_load(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._short_tokens())

    async def _short_tokens(self) -> None:
        relay = self.stack.relay
        assert relay is not None
        load = self.load(concurrency=2, size=64 << 10, rate=256 << 10).start()
        started = time.monotonic()
        while time.monotonic() - started < RUN:
            await sleep(1.0)
        clients = await load.stop()
        summary = check_no_loss(self, clients)
        out = relay.output()
        renewals = len(re.findall(r"renewed its token", out))
        print(f"\ntoken-lifetime {LIFETIME:g} s over {RUN:g} s: {summary}, "
              f"{renewals} renewals")
        self.assertEqual(summary["failed"], 0)
        # Each of the 2 workers renews at about 80 % of the lifetime, on its open channel.
        self.assertGreaterEqual(renewals, 2 * int(RUN / LIFETIME) - 2, "workers renewed")
        self.assertNotIn("token expired without renewal", out)
        self.assertEqual(self.connects(), 2, "no control channel was lost")
        for item in self.stack.status():
            self.assertTrue(item["connected"])
        self.assertEqual(secret_findings(self.stack.logs(), harness.TEST_KEYS.values()), [])

    test_short_tokens_renewed_under_load.timeout = RUN + 120  # type: ignore[attr-defined]

    def test_key_rotation(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._rotation())

    async def _rotation(self) -> None:
        """Switch the agent to the secondary key (config edit + reload), regenerate the
        primary on the relay: no transfer fails, no 401, and channels that reconnect
        afterwards (relay recycle) use the secondary key."""
        stack = self.stack
        relay = stack.relay
        assert relay is not None and relay.proc is not None
        result = harness.hcm_cli(["relay", "connection-string", "--config",
                                  str(relay.config_path), "hc1", "--rule", "defaultListener",
                                  "--secondary", "--json"])
        self.assertEqual(result.returncode, 0, result.stderr)
        secondary = json.loads(result.stdout)
        secondary_cs = secondary["connectionString"]
        self.assertNotIn(harness.TEST_KEYS["defaultListener"], secondary_cs)
        load = self.load(concurrency=2, size=128 << 10, rate=512 << 10).start()
        await wait_until(lambda: len(load.completed()) >= 4, 20, what="first transfers")
        # 1. The agent moves to the secondary key.
        connects_before = self.connects()
        doc = stack.agent_document()
        doc["hybrid-connection"][0]["connection-string"] = secondary_cs
        stack.write_agent_config(doc)
        reload = stack.hcm("reload")
        self.assertEqual(reload.returncode, 0, reload.stdout + reload.stderr)
        await sleep(3.0)
        # 2. The relay replaces the primary key.
        result = harness.hcm_cli(["relay", "regenerate-key", "--config", str(relay.config_path),
                                  "defaultListener", "--hc", "hc1"])
        self.assertEqual(result.returncode, 0, result.stderr)
        await sleep(3.0)
        # The old primary is dead on the relay now.
        old = relayclient.token(relay.port, "hc1", "defaultListener",
                                harness.TEST_KEYS["defaultListener"])
        try:
            client = await relayclient.connect(relayclient.listen_url(relay.port, "hc1", old),
                                               str(relay.ca_path))
        except relayclient.HandshakeFailed as e:
            self.assertEqual(e.status, 401)
        else:
            client.dropConnection(abort=True)
            self.fail("the regenerated primary key still works")
        rotated = time.monotonic()
        # operations.md: "no channel is reopened" -- the workers renewed on their channels.
        self.assertEqual(self.connects(), connects_before, "a control channel was reopened")
        failed_before = [c for c in load.clients if not c.complete]
        # 3. Channels opened from now on must use the secondary key.  The recycle comes
        # after channels lived > 10 s (listener STABLE_AFTER) so they reconnect at once.
        await sleep(max(0.0, 11.0 - 6.0))
        want = self.connects() + 2
        relay.proc.signal(signal.SIGUSR1)
        await wait_until(lambda: self.connects() >= want, 10,
                         what="both workers reconnected after the rotation")
        recycled = time.monotonic()
        await wait_until(lambda: len(load.completed(after=recycled)) >= 2, 20,
                         what="transfers after the recycle")
        clients = await load.stop()
        summary = check_no_loss(self, clients)
        print(f"\nkey rotation: {summary}; failed during rotation: {len(failed_before)}")
        self.assertEqual(failed_before, [], "a transfer failed during the rotation")
        self.assertTrue([c for c in clients if c.complete and c.started > rotated])
        agent_log = stack.agent.output() if stack.agent else ""
        self.assertNotIn("control channel hc1 failed", agent_log)  # no 401 (or any refusal)
        self.assertNotRegex(agent_log, r"renew\S* .*\b40[13]\b")
        for item in stack.status():
            self.assertTrue(item["connected"], item)
        texts = stack.logs()
        self.assertEqual(secret_findings(texts, [*harness.TEST_KEYS.values(),
                                                 _key_of(secondary_cs)]), [])


def _key_of(cs: str) -> str:
    for part in cs.split(";"):
        if part.startswith("SharedAccessKey="):
            return part.split("=", 1)[1]
    raise AssertionError("no key in the connection string")
