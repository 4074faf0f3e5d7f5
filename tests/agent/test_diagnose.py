"""``hcm test NAME`` against a real local relay: passing and failing verdicts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.trial.unittest import TestCase

from hcm_twisted.agent import diagnose
from hcm_twisted.core import connstr
from tests.e2e import harness
from tests.e2e.relayfixture import Relay, start_relay
from tests.timers import cancel_batched_timers

META = '[{"key":"endpoint","value":"127.0.0.1:%d"}]'


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


def verdicts(steps: list[diagnose.Step]) -> dict[str, str]:
    return {s.name: s.verdict for s in steps}


def step(steps: list[diagnose.Step], name: str) -> diagnose.Step:
    return next(s for s in steps if s.name == name)


class DiagnoseTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.addCleanup(cancel_batched_timers)  # autobahn timers of the probes
        self.meta_port = harness.free_port()
        self.relay: Relay = start_relay(
            Path(self.mktemp()).resolve(),
            hcs=("hc1", {"name": "withmeta", "user-metadata": META % self.meta_port}),
        )
        self.addCleanup(self.relay.stop)

    @defer.inlineCallbacks
    def _echo(self) -> Any:
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def target(self, hc: str = "hc1", endpoint: str | None = None, cas: bool = True,
               cs: str | None = None, send: str | None = None) -> diagnose.Target:
        return diagnose.Target(
            name=hc,
            hc=connstr.parse(cs or self.relay.connection_string(hc)),
            endpoint=endpoint,
            ca_certificates=(str(self.relay.ca_path),) if cas else (),
            proxy="none",
            send=connstr.parse(send) if send else None,
        )

    @defer.inlineCallbacks
    def test_all_pass(self) -> Any:
        port = yield self._echo()
        steps = yield diagnose.run_checks(reactor, self.target(endpoint=f"127.0.0.1:{port}"), 10)
        self.assertEqual(
            [(s.name, s.verdict) for s in steps],
            [("config", "ok"), ("relay DNS", "ok"), ("relay TCP", "ok"), ("relay TLS", "ok"),
             ("listen", "ok"), ("endpoint", "ok"), ("endpoint DNS", "ok"),
             ("endpoint TCP", "ok"), ("end to end", "skip")],
        )
        self.assertIn("localhost -> ", step(steps, "relay DNS").detail)
        self.assertIn("hcm-relay private CA", step(steps, "relay TLS").detail)
        self.assertEqual(diagnose.exit_status(steps), 0)
        text = diagnose.render_text("hc1", steps)
        self.assertIn("result: all checks passed", text)
        self.assertNotIn(harness.TEST_KEYS["defaultListener"], text)
        self.assertIn("SharedAccessKey=***", text)

    @defer.inlineCallbacks
    def test_endpoint_from_metadata(self) -> Any:
        steps = yield diagnose.run_checks(reactor, self.target("withmeta"), 10)
        self.assertEqual(step(steps, "endpoint").verdict, "ok")
        self.assertEqual(step(steps, "endpoint").detail,
                         f"127.0.0.1:{self.meta_port} (from the HC's user metadata)")
        # Nothing listens there.
        tcp = step(steps, "endpoint TCP")
        self.assertEqual(tcp.verdict, "FAIL")
        self.assertIn("connection refused", tcp.detail)
        self.assertIn("is the service running", tcp.advice)
        self.assertEqual(diagnose.exit_status(steps), 1)

    @defer.inlineCallbacks
    def test_wrong_key(self) -> Any:
        cs = self.relay.connection_string("hc1").replace(
            harness.TEST_KEYS["defaultListener"], "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=")
        steps = yield diagnose.run_checks(reactor, self.target(cs=cs, endpoint="127.0.0.1:1"), 10)
        listen = step(steps, "listen")
        self.assertEqual(listen.verdict, "FAIL")
        self.assertIn("HTTP 401", listen.detail)
        self.assertIn("rotated", listen.advice)
        self.assertNotIn("d3Jvbmcta2V5", diagnose.render_text("hc1", steps))

    @defer.inlineCallbacks
    def test_unknown_hc(self) -> Any:
        cs = self.relay.connection_string("hc1").replace("EntityPath=hc1", "EntityPath=nope")
        steps = yield diagnose.run_checks(reactor, self.target(cs=cs, endpoint="127.0.0.1:1"), 10)
        listen = step(steps, "listen")
        self.assertEqual(listen.verdict, "FAIL")
        self.assertIn("HTTP 404", listen.detail)
        self.assertIn("EntityPath", listen.advice)

    @defer.inlineCallbacks
    def test_untrusted_certificate(self) -> Any:
        steps = yield diagnose.run_checks(reactor, self.target(cas=False, endpoint="127.0.0.1:1"), 10)
        tls_step = step(steps, "relay TLS")
        self.assertEqual(tls_step.verdict, "FAIL")
        self.assertIn("certificate verify failed", tls_step.detail)
        self.assertIn("ca-certificates", tls_step.advice)
        self.assertEqual(step(steps, "listen").verdict, "skip")

    @defer.inlineCallbacks
    def test_relay_down(self) -> Any:
        dead = harness.free_port()
        cs = self.relay.connection_string("hc1").replace(f":{self.relay.port}/", f":{dead}/")
        steps = yield diagnose.run_checks(reactor, self.target(cs=cs), 10)
        v = verdicts(steps)
        self.assertEqual(v["relay TCP"], "FAIL")
        self.assertNotIn("relay TLS", v)
        self.assertEqual(v["listen"], "skip")
        # No endpoint in the config and no relay to ask: skipped, not failed twice.
        self.assertEqual((v["endpoint"], v["endpoint DNS"], v["endpoint TCP"]),
                         ("skip", "skip", "skip"))
        self.assertIn(f"localhost:{dead}: connection refused", step(steps, "relay TCP").detail)

    @defer.inlineCallbacks
    def test_send_without_agent(self) -> Any:
        port = yield self._echo()
        steps = yield diagnose.run_checks(
            reactor,
            self.target(endpoint=f"127.0.0.1:{port}",
                        send=self.relay.connection_string("hc1", "defaultSender")),
            10)
        e2e = step(steps, "end to end")
        self.assertEqual(e2e.verdict, "FAIL")
        self.assertIn("HTTP 404", e2e.detail)
        self.assertIn("is the agent running", e2e.advice)

    def _config(self, endpoint: str) -> Path:
        path = Path(self.mktemp()).resolve()
        path.write_text(
            "[agent]\n"
            f'admin = "tcp:0:interface=127.0.0.1"\nworkers = 1\n'
            f'ca-certificates = "{self.relay.ca_path}"\n\n'
            "[[hybrid-connection]]\n"
            'name = "hc1"\n'
            f'connection-string = "{self.relay.connection_string("hc1")}"\n'
            f'endpoint = "{endpoint}"\n'
        )
        path.chmod(0o600)
        return path

    def _main(self, args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [harness.PYTHON, "-m", "hcm_twisted.agent.diagnose", *args], input=stdin,
            capture_output=True, text=True, timeout=60, env=harness.child_env())

    @defer.inlineCallbacks
    def test_main_with_agent_end_to_end(self) -> Any:
        port = yield self._echo()
        config = self._config(f"127.0.0.1:{port}")
        agent = harness.twist("hcm", config, cwd=config.parent, name="agent")
        self.addCleanup(agent.stop)
        yield _wait_log(agent, r"control channel connected")
        send = self.relay.connection_string("hc1", "defaultSender")
        result = yield _in_thread(self._main, ["--config", str(config), "hc1", "--json",
                                               "--send-connection-string", "-"], send + "\n")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        report = json.loads(result.stdout)
        self.assertTrue(report["ok"])
        self.assertEqual(report["steps"][-1]["name"], "end to end")
        self.assertEqual(report["steps"][-1]["verdict"], "ok")
        self.assertNotIn(harness.TEST_KEYS["defaultSender"], result.stdout + result.stderr)

    @defer.inlineCallbacks
    def test_main_unknown_name(self) -> Any:
        config = self._config("127.0.0.1:1")
        result = yield _in_thread(self._main, ["--config", str(config), "nothere"])
        self.assertEqual(result.returncode, 1)
        self.assertIn("[FAIL] config", result.stdout)
        self.assertIn("no hybrid connection named 'nothere'", result.stdout)
        self.assertIn("hcm list", result.stdout)
        usage = yield _in_thread(self._main, [])
        self.assertEqual(usage.returncode, 2)


def _in_thread(f: Any, *args: Any) -> defer.Deferred[Any]:
    from twisted.internet import threads

    return threads.deferToThread(f, *args)


def _wait_log(proc: harness.Proc, pattern: str) -> defer.Deferred[Any]:
    return _in_thread(proc.wait_log, pattern, 30.0)
