"""The whole path with every relay connection through a real HTTP CONNECT proxy (tinyproxy).

app -> hcm-sender --CONNECT--> tinyproxy -> hcm-relay <- tinyproxy <--CONNECT-- agent -> endpoint

The agent's config names the proxy (with Basic credentials) and no endpoint, so the runtime GET
of the HC's user metadata goes through the proxy too.  The bytes are hashed at both ends and
tinyproxy's log must show the CONNECTs; the password is in no log and no status output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

import tomli_w
from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.agent import admin
from tests.e2e import harness
from tests.e2e.harness import wait_for
from tests.e2e.relayfixture import start_relay

TINYPROXY = shutil.which("tinyproxy") or (
    "/usr/bin/tinyproxy" if os.path.exists("/usr/bin/tinyproxy") else None)
USER, PASSWORD = "hcm", "proxy-secret-4711"


class AgentThroughProxy(SynchronousTestCase):
    def setUp(self) -> None:
        if TINYPROXY is None:
            raise self.skipTest("tinyproxy is not installed (apt-get install tinyproxy)")
        self.root = Path(tempfile.mkdtemp(prefix="hcm-e2e-proxy-", dir="/tmp"))  # noqa: S108
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
        self.echo = harness.EchoServer()
        self.addCleanup(self.echo.close)
        metadata = json.dumps([{"key": "endpoint",
                                "value": f"127.0.0.1:{self.echo.port}"}])
        self.relay = start_relay(self.root / "relay",
                                 hcs=({"name": "hc1", "user-metadata": metadata},))
        self.addCleanup(self.relay.stop)
        self.proxy_port = harness.free_port()
        self.proxy_log = self.root / "tinyproxy-access.log"
        conf = self.root / "tinyproxy.conf"
        conf.write_text("\n".join([
            f"Port {self.proxy_port}", "Listen 127.0.0.1", "Timeout 60",
            f'LogFile "{self.proxy_log}"', "LogLevel Connect", "MaxClients 50",
            "Allow 127.0.0.1", f"ConnectPort {self.relay.port}", f"BasicAuth {USER} {PASSWORD}",
        ]) + "\n")
        self.tinyproxy = harness.Proc([TINYPROXY, "-d", "-c", str(conf)], self.root, "tinyproxy")
        self.addCleanup(self.tinyproxy.stop)
        harness.wait_port(self.proxy_port, timeout=10)

    def proxy_url(self, password: str = PASSWORD) -> str:
        return f"http://{USER}:{password}@127.0.0.1:{self.proxy_port}"

    def start_agent(self, password: str = PASSWORD) -> tuple[harness.Proc, str]:
        directory = self.root / "agent"
        directory.mkdir()
        path = directory / "hcm.toml"
        path.write_text(tomli_w.dumps({
            "agent": {"workers": 2, "ca-certificates": str(self.relay.ca_path),
                      "drain-timeout": 1, "proxy": self.proxy_url(password)},
            "hybrid-connection": [{"connection-string": self.relay.connection_string("hc1")}],
        }))
        path.chmod(0o600)
        proc = harness.twist("hcm", path, cwd=directory, name="hcm-agent")
        self.addCleanup(self.check_log_and_stop, proc)
        proc.wait_log(r"hcm agent ready", timeout=30)
        return proc, f"unix:{directory / 'hcm.sock'}"

    def check_log_and_stop(self, proc: harness.Proc) -> None:
        proc.stop()
        log = proc.log_path.read_text(errors="replace")
        self.assertNotIn(PASSWORD, log)
        for key in harness.TEST_KEYS.values():
            self.assertNotIn(key, log)

    def status(self, admin_endpoint: str) -> dict[str, Any]:
        code, body = admin.request(admin_endpoint, "GET", "/status/hc1")
        self.assertEqual(code, 200)
        result: dict[str, Any] = body
        return result

    def connects(self) -> int:
        text = self.proxy_log.read_text(errors="replace") if self.proxy_log.exists() else ""
        return text.count(f"CONNECT localhost:{self.relay.port} HTTP/1.1")

    def test_data_through_proxy(self) -> None:
        agent, admin_endpoint = self.start_agent()
        item = wait_for("both workers connected through the proxy", lambda: (
            (s := self.status(admin_endpoint))["connected"] and len(s["workers"]) == 2
            and all(w["state"] == "connected" for w in s["workers"]) and s))
        self.assertEqual(item["endpoint"], f"127.0.0.1:{self.echo.port}")
        # The runtime GET and two control channels.
        self.assertGreaterEqual(self.connects(), 3)
        self.assertNotIn(PASSWORD, json.dumps(item))

        sender_dir = self.root / "sender"
        sender_dir.mkdir()
        app_port = harness.free_port()
        sender_config = sender_dir / "hcm-sender.toml"
        sender_config.write_text(tomli_w.dumps({
            "ca-certificates": str(self.relay.ca_path),
            "proxy": self.proxy_url(),
            "hybrid-connection": [{
                "connection-string": self.relay.connection_string("hc1", "defaultSender"),
                "listen": f"tcp:{app_port}:interface=127.0.0.1",
            }],
        }))
        sender_config.chmod(0o600)
        sender = harness.twist("hcm-sender", sender_config, cwd=sender_dir, name="hcm-sender")
        self.addCleanup(self.check_log_and_stop, sender)
        sender.wait_log(r"hcm-sender listening on", timeout=30)
        before = self.connects()

        payload = os.urandom(4 * 1024 * 1024 + 3)
        with socket.create_connection(("127.0.0.1", app_port), timeout=30) as app:
            received = hashlib.sha256()
            count = 0

            def reader() -> None:
                nonlocal count
                while True:
                    data = app.recv(65536)
                    if not data:
                        break
                    received.update(data)
                    count += len(data)

            thread = threading.Thread(target=reader, daemon=True)
            thread.start()
            app.sendall(payload)
            app.shutdown(socket.SHUT_WR)
            thread.join(60)
        self.assertEqual(count, len(payload))
        self.assertEqual(received.hexdigest(), hashlib.sha256(payload).hexdigest())
        # The sender's leg and the agent's rendezvous leg each went through the proxy.
        wait_for("two more CONNECTs", lambda: self.connects() >= before + 2, 10)

    def test_wrong_proxy_password(self) -> None:
        agent, admin_endpoint = self.start_agent(password="wrong-password-0815")
        item = wait_for("the proxy's refusal in the status", lambda: (
            (s := self.status(admin_endpoint))["error"] or any(
                w.get("last_error") for w in s["workers"])) and s)
        self.assertFalse(item["connected"])
        text = json.dumps(item)
        self.assertIn("proxy 127.0.0.1:", text)
        self.assertRegex(text, r"40[17]")
        self.assertNotIn("wrong-password-0815", text)
        self.assertNotIn("wrong-password-0815", agent.output())

    def test_hcm_test_through_proxy(self) -> None:
        directory = self.root / "diag"
        directory.mkdir()
        path = directory / "hcm.toml"

        def run(proxy: str) -> dict[str, Any]:
            path.write_text(tomli_w.dumps({
                "agent": {"ca-certificates": str(self.relay.ca_path), "proxy": proxy},
                "hybrid-connection": [{"connection-string": self.relay.connection_string("hc1")}],
            }))
            path.chmod(0o600)
            result = harness.hcm_cli(["--config", str(path), "--json", "test", "hc1"], timeout=60)
            self.assertIn(result.returncode, (0, 1), result.stderr)
            self.assertNotIn(PASSWORD, result.stdout + result.stderr)
            report: dict[str, Any] = json.loads(result.stdout)
            return {s["name"]: s for s in report["steps"]}

        steps = run(self.proxy_url())
        self.assertEqual(steps["proxy"]["verdict"], "ok")
        self.assertIn(f"http://{USER}:***@127.0.0.1:{self.proxy_port}", steps["proxy"]["detail"])
        self.assertEqual(steps["relay DNS"]["verdict"], "skip")
        for name in ("relay TCP", "relay TLS", "listen", "endpoint", "endpoint TCP"):
            self.assertEqual(steps[name]["verdict"], "ok", steps[name])
        self.assertIn("through the proxy", steps["relay TCP"]["detail"])
        self.assertIn("from the HC's user metadata", steps["endpoint"]["detail"])

        steps = run(self.proxy_url("not-the-password"))
        self.assertEqual(steps["relay TCP"]["verdict"], "FAIL")
        self.assertRegex(steps["relay TCP"]["detail"], r"refused CONNECT localhost:\d+: HTTP/1\.[01] 40[17]")
        self.assertIn("proxy", steps["relay TCP"]["advice"])
        self.assertNotIn("not-the-password", json.dumps(steps))
