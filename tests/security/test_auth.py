"""Rights, tokens and the one endpoint: against a real relay and agent.

- a Listen key cannot send, a Send key cannot listen;
- tokens with a wrong audience, a tampered expiry or signature, or a lapsed expiry fail;
- a sender reaches only the HC's configured endpoint, whatever suffix path or query it uses;
- keys and token signatures never appear in any log, in ``hcm show --json``, ``/status`` or
  ``/metrics``; the admin socket and the files holding keys are 0600.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.e2e import harness, relayclient
from tests.e2e.stack import Echo, Stack, listen, run_pattern, secret_findings, sleep
from tests.timers import cancel_batched_timers

K = harness.TEST_KEYS


def tamper(token: str, **changes: str) -> str:
    """The token with fields replaced (``se``, ``sig``, ``sr``), the rest kept."""
    assert token.startswith("SharedAccessSignature ")
    fields = dict(parse_qsl(token.split(" ", 1)[1], keep_blank_values=True))
    fields.update(changes)
    return "SharedAccessSignature " + urlencode(fields, quote_via=quote)


class AuthTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.addCleanup(cancel_batched_timers)  # relayclient's autobahn timers
        self.echo = listen(Echo)
        self.addCleanup(self.echo.stopListening)
        self.trap = listen(Echo)
        self.addCleanup(self.trap.stopListening)
        self.stack = Stack(Path(self.mktemp()), {
            "hc1": f"127.0.0.1:{self.echo.getHost().port}",
            "hc2": f"127.0.0.1:{self.echo.getHost().port}",
        }, workers=1)
        self.stack.start()
        self.addCleanup(self.stack.stop)
        assert self.stack.relay is not None
        self.relay = self.stack.relay
        self.ca = str(self.relay.ca_path)

    def tok(self, rule: str, hc: str = "hc1", lifetime: float = 600, **kw: Any) -> str:
        return relayclient.token(self.relay.port, hc, rule, K[rule], lifetime=lifetime, **kw)

    async def refused(self, url: str, headers: dict[str, str] | None = None) -> int:
        try:
            client = await relayclient.connect(url, self.ca, headers=headers)
        except relayclient.HandshakeFailed as e:
            return e.status
        client.dropConnection(abort=True)
        raise AssertionError(f"{url.split('?')[0]}: the relay accepted it")

    async def echo_through(self, url: str) -> bytes:
        client = await relayclient.connect(url, self.ca)
        client.sendMessage(b"ping through the relay", isBinary=True)
        got = b""
        while len(got) < 22:
            payload, _ = await client.messages.get()
            got += payload
        client.sendClose(1000)
        return got

    def test_rights(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._rights())

    async def _rights(self) -> None:
        port = self.relay.port
        # A Send key cannot listen.
        status = await self.refused(relayclient.listen_url(port, "hc1", self.tok("defaultSender")))
        self.assertIn(status, (401, 403))
        # A Listen key cannot send (the agent listens, so it is not a 404).
        status = await self.refused(relayclient.connect_url(port, "hc1",
                                                            self.tok("defaultListener")))
        self.assertIn(status, (401, 403))
        # A rule on hc2 does not open hc1 (same key text, other HC).
        status = await self.refused(relayclient.connect_url(
            port, "hc1", self.tok("defaultSender", hc="hc2")))
        self.assertIn(status, (401, 403))
        # Control: the right token works.
        got = await self.echo_through(relayclient.connect_url(port, "hc1",
                                                               self.tok("defaultSender")))
        self.assertEqual(got, b"ping through the relay")

    def test_tampered_tokens(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._tampered())

    async def _tampered(self) -> None:
        port = self.relay.port
        good = self.tok("defaultSender")
        fields = dict(parse_qsl(good.split(" ", 1)[1]))
        sig = fields["sig"]
        bad_sig = ("A" if sig[0] != "A" else "B") + sig[1:]
        cases = {
            "expiry moved": tamper(good, se=str(int(fields["se"]) + 86400)),
            "signature changed": tamper(good, sig=bad_sig),
            "signature missing": tamper(good, sig=""),
            "audience of another HC": tamper(good, sr=f"http://localhost:{port}/hc2"),
            "lapsed": self.tok("defaultSender", now=time.time() - 7200, lifetime=60),
            "wrong key": relayclient.token(port, "hc1", "defaultSender", K["defaultListener"]),
            "unknown rule": relayclient.token(port, "hc1", "nobody", K["defaultSender"]),
        }
        for what, token in cases.items():
            for url, headers in (
                (relayclient.connect_url(port, "hc1", token), None),
                (relayclient.connect_url(port, "hc1"), {"ServiceBusAuthorization": token}),
            ):
                status = await self.refused(url, headers)
                self.assertIn(status, (401, 403), what)
        print(f"\nrefused tokens: {sorted(cases)}")

    def test_only_the_configured_endpoint(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._one_endpoint())

    async def _one_endpoint(self) -> None:
        port = self.relay.port
        trap = self.trap.getHost().port
        tricks = [
            ("", f"endpoint=127.0.0.1:{trap}"),
            (f"/127.0.0.1:{trap}", ""),
            (f"/..%2F..%2F127.0.0.1%3A{trap}", f"host=127.0.0.1&port={trap}"),
            ("/x", f"sb-hc-endpoint=127.0.0.1:{trap}&address=127.0.0.1:{trap}"),
            ("%2F..%2Fhc2", f"remoteEndpoint=127.0.0.1:{trap}"),
        ]
        for suffix, query in tricks:
            url = relayclient.connect_url(port, "hc1", self.tok("defaultSender"),
                                          suffix=suffix, query=query)
            try:
                got = await self.echo_through(url)
            except relayclient.HandshakeFailed as e:
                self.assertIn(e.status, (400, 401, 403, 404), f"{suffix}?{query}: {e}")
                continue
            self.assertEqual(got, b"ping through the relay", f"{suffix}?{query}")
        await sleep(0.2)
        self.assertEqual(self.trap.factory.connections, 0, "the agent connected elsewhere")
        self.assertGreaterEqual(self.echo.factory.connections, 1)

    def test_no_secret_in_logs_status_metrics(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._no_secrets())

    async def _no_secrets(self) -> None:
        stack = self.stack
        # Some traffic, a refused token and a bad request first, so that every path logs.
        client = await run_pattern(stack.sender_ports["hc1"], 256 << 10)
        self.assertTrue(client.complete, client.describe())
        await self.refused(relayclient.connect_url(self.relay.port, "hc1",
                                                   tamper(self.tok("defaultSender"), sig="x")))
        texts: list[tuple[str, str]] = []
        for path in ("/status", "/status/hc1", "/metrics", "/"):
            code, body = stack.admin("GET", path)
            self.assertEqual(code, 200, path)
            texts.append((f"admin {path}", body.decode("utf-8", "replace")))
        for args in (("show", "hc1", "--json"), ("list", "--json"), ("show", "hc1")):
            result = stack.hcm(*args)
            self.assertEqual(result.returncode, 0, result.stderr)
            texts.append(("hcm " + " ".join(args), result.stdout + result.stderr))
        shown = json.loads(stack.hcm("show", "hc1", "--json").stdout)
        self.assertEqual(shown["name"], "hc1")
        # A bad reload (a traceback would be the place a key leaks) and a failing add.
        stack.agent_config.write_text(stack.agent_config.read_text() + "\n[agent2]\n")
        code, body = stack.admin("POST", "/reload")
        self.assertEqual(code, 400)
        texts.append(("reload", body.decode()))
        stack.write_agent_config()
        bad = stack.hcm("add", self.relay.connection_string("hc1").replace("sb://", "sb:/"))
        texts.append(("hcm add bad", bad.stdout + bad.stderr))
        await sleep(0.3)
        texts.extend(stack.logs())
        self.assertGreaterEqual(len(stack.log_files()), 3)  # relay, agent (+ workers), sender
        found = secret_findings(texts, K.values())
        self.assertEqual(found, [])

    def test_file_modes(self) -> None:
        stack = self.stack

        def mode(path: Path) -> int:
            return stat.S_IMODE(path.stat().st_mode)

        self.assertTrue(stat.S_ISSOCK(stack.admin_sock.stat().st_mode))
        self.assertEqual(mode(stack.admin_sock), 0o600, "admin socket")
        relay_dir = self.relay.directory
        for name in ("relay-state.sqlite", "relay.key", "relay-ca.key"):
            self.assertEqual(mode(relay_dir / name), 0o600, name)
        # hcm add writes the agent config with 0600, also when it creates it.
        fresh = stack.directory / "fresh" / "hcm.toml"
        fresh.parent.mkdir()
        result = harness.hcm_cli(["--config", str(fresh), "add",
                                  self.relay.connection_string("hc1"),
                                  "--endpoint", "127.0.0.1:1"], cwd=stack.directory)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(mode(fresh), 0o600, "agent config written by hcm add")
        # Replacing the key keeps it 0600.
        result = harness.hcm_cli(["--config", str(fresh), "add",
                                  self.relay.connection_string("hc1", "defaultSender")],
                                 cwd=stack.directory)
        self.assertEqual(mode(fresh), 0o600)
        # Rotation on the relay keeps the state file 0600.
        result = harness.hcm_cli(["relay", "regenerate-key", "--config",
                                  str(self.relay.config_path), "defaultListener", "--hc", "hc2",
                                  "--secondary"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(mode(relay_dir / "relay-state.sqlite"), 0o600)
        self.assertEqual(secret_findings([("regenerate", result.stderr)], K.values()), [])
