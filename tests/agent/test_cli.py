"""Tests for the ``hcm`` command (:mod:`hcm_twisted.cli`), run in-process against temp configs."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted import cli
from hcm_twisted.agent import admin, config

KEY = "c2VjcmV0LWtleS1mb3ItY2xpLXRlc3RzLW9ubHktMDAwMA=="
CS = f"Endpoint=sb://localhost:9443/;SharedAccessKeyName=defaultListener;SharedAccessKey={KEY};EntityPath=hc1"


class CliTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "hcm.toml"
        self.requests: list[tuple[str, str, str]] = []
        self.agent: Any = None  # None: no agent; else a function (method, path) -> (status, body)
        patcher = mock.patch.object(admin, "request", self._request)
        patcher.start()
        self.addCleanup(patcher.stop)
        env = mock.patch.dict(os.environ, {"HCM_CONFIG": ""})
        env.start()
        self.addCleanup(env.stop)

    def _request(self, endpoint: str, method: str, path: str, timeout: float = 1) -> tuple[int, Any]:
        self.requests.append((endpoint, method, path))
        if self.agent is None:
            raise admin.AgentNotRunning("no agent answers at x")
        result: tuple[int, Any] = self.agent(method, path)
        return result

    def run_cli(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with mock.patch.object(sys, "stdout", out), mock.patch.object(sys, "stderr", err), \
                mock.patch.object(sys, "stdin", io.StringIO(stdin)):
            code = cli.main(["--config", str(self.path), *argv])
        self.assertNotIn(KEY, out.getvalue() + err.getvalue())
        return code, out.getvalue(), err.getvalue()

    def test_add_list_show_remove(self) -> None:
        """add, list, show, remove against a config file, with no agent running."""
        code, out, err = self.run_cli("add", CS, "--endpoint", "127.0.0.1:7001")
        self.assertEqual(code, 0, err)
        self.assertIn("added hc1", out)
        self.assertIn("SharedAccessKey=***", out)
        self.assertIn("no agent is running", out)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        cfg = config.load(self.path)
        self.assertEqual(cfg.hybrid_connections[0].connection_string.key, KEY)
        self.assertEqual(cfg.hybrid_connections[0].endpoint, "127.0.0.1:7001")

        code, out, err = self.run_cli("add", "--namespace", "myns", "--name", "hc2",
                                      "--key-name", "rule", "--key", "-", stdin=KEY + "\n")
        self.assertEqual(code, 0, err)
        hc2 = config.load(self.path).get("hc2")
        assert hc2 is not None
        self.assertEqual(hc2.connection_string.host, "myns.servicebus.windows.net")
        self.assertEqual(hc2.connection_string.key, KEY)
        self.assertIsNone(hc2.endpoint)

        code, out, err = self.run_cli("list")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0].split()[:4], ["NAME", "CONNECTED", "ENDPOINT", "WORKERS"])
        self.assertEqual(lines[1].split()[:3], ["hc1", "no", "127.0.0.1:7001"])
        self.assertEqual(lines[2].split()[:3], ["hc2", "no", "-"])
        self.assertIn("no agent is running", err)

        code, out, _ = self.run_cli("show", "hc1")
        self.assertEqual(code, 0)
        self.assertIn("name:              hc1", out)
        self.assertIn("SharedAccessKey=***", out)

        code, out, _ = self.run_cli("remove", "hc1")
        self.assertEqual(code, 0)
        self.assertEqual([h.name for h in config.load(self.path).hybrid_connections], ["hc2"])

    def test_replace_for_key_rotation(self) -> None:
        """add --replace swaps an HC's connection string (key rotation) in place; plain add
        refuses a taken name and --replace a missing one, both leaving the file as it was."""
        self.run_cli("add", CS, "--endpoint", "127.0.0.1:7001")
        self.run_cli("add", CS.replace("hc1", "hc2"), "--endpoint", "127.0.0.1:7002")
        before = self.path.read_bytes()
        code, _, err = self.run_cli("add", CS, "--endpoint", "127.0.0.1:7001")
        self.assertEqual(code, 1)
        self.assertIn("already exists (--replace changes it)", err)
        self.assertEqual(self.path.read_bytes(), before)
        code, _, err = self.run_cli("add", CS.replace("hc1", "hc3"), "--replace")
        self.assertEqual(code, 1)
        self.assertIn("no hybrid connection named 'hc3' to replace", err)
        self.assertEqual(self.path.read_bytes(), before)

        new_key = "bmV3LXNlY29uZGFyeS1rZXktZm9yLWNsaS10ZXN0cy0x"
        rotated = CS.replace("defaultListener", "secondListener").replace(KEY, new_key)
        self.agent = lambda method, path: (200, {"reloaded": True})
        code, out, err = self.run_cli("add", rotated, "--endpoint", "127.0.0.1:7001", "--replace")
        self.assertEqual(code, 0, err)
        self.assertIn("replaced hc1", out)
        self.assertNotIn(new_key, out)
        self.assertIn(("POST", "/reload"), [(m, p) for _, m, p in self.requests])
        cfg = config.load(self.path)
        self.assertEqual([h.name for h in cfg.hybrid_connections], ["hc1", "hc2"])
        hc1 = cfg.get("hc1")
        assert hc1 is not None
        self.assertEqual((hc1.connection_string.key_name, hc1.connection_string.key),
                         ("secondListener", new_key))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_json(self) -> None:
        """--json (before or after the command) prints the status objects of DESIGN "Status"."""
        self.run_cli("add", CS, "--endpoint", "127.0.0.1:7001")
        code, out, _ = self.run_cli("--json", "list")
        self.assertEqual(code, 0)
        (item,) = json.loads(out)
        self.assertEqual(item["name"], "hc1")
        self.assertIs(item["connected"], False)
        self.assertEqual(item["endpoint"], "127.0.0.1:7001")
        self.assertEqual(item["workers"], [])
        code, out, _ = self.run_cli("show", "hc1", "--json")
        self.assertEqual(json.loads(out), item)
        code, out, _ = self.run_cli("add", CS.replace("hc1", "hc9"), "--json")
        self.assertEqual(json.loads(out)["added"], "hc9")
        self.assertIs(json.loads(out)["reloaded"], False)

    def test_live_status(self) -> None:
        """With an agent running, list/show read its status, and edits ask it to reload."""
        live = [{"name": "hc1", "connected": True, "endpoint": "127.0.0.1:7001", "state": "active",
                 "workers": [{"pid": 11, "state": "connected", "open": 1, "accepted": 5, "connected": True},
                             {"pid": 12, "state": "connecting", "open": 0, "accepted": 0}]}]

        def agent(method: str, path: str) -> tuple[int, Any]:
            if (method, path) == ("GET", "/status"):
                return 200, live
            if (method, path) == ("POST", "/reload"):
                return 200, {"ok": True, "hybrid_connections": ["hc1"]}
            return 404, {"error": "no"}

        code, out, err = self.run_cli("add", CS, "--endpoint", "127.0.0.1:7001")
        self.assertEqual(code, 0, err)
        self.agent = agent
        code, out, err = self.run_cli("add", CS.replace("hc1", "hc2"), "--endpoint", "h:2")
        self.assertEqual(code, 0, err)
        self.assertIn("reloaded", out)
        self.assertEqual(self.requests[-1][1:], ("POST", "/reload"))
        self.assertEqual(self.requests[-1][0], config.load(self.path).admin)
        code, out, err = self.run_cli("--json", "show", "hc1")
        self.assertEqual(json.loads(out), live[0])
        self.assertEqual(err, "")
        code, out, _ = self.run_cli("list")
        self.assertEqual(out.splitlines()[1].split()[:4], ["hc1", "yes", "127.0.0.1:7001", "1/2"])
        code, out, _ = self.run_cli("show", "hc1")
        self.assertIn("worker ? pid 11: connected, open 1, accepted 5", out)

    def test_reload_refused(self) -> None:
        """The file is saved but a refusing agent makes the command fail."""
        self.agent = lambda method, path: (400, {"ok": False, "error": "bad thing"})
        code, out, err = self.run_cli("add", CS)
        self.assertEqual(code, 1)
        self.assertIn("bad thing", err)
        self.assertEqual(len(err.strip().splitlines()), 1)
        self.assertEqual(config.load(self.path).hybrid_connections[0].name, "hc1")

    def test_usage_errors(self) -> None:
        """Usage errors: one line on stderr, exit 2, the file untouched."""
        cases = [
            (),
            ("bogus",),
            ("add",),
            ("add", CS, "--key", "x"),
            ("add", "--namespace", "ns", "--name", "x"),
            ("add", "Endpoint=sb://x/;EntityPath=y"),
            ("add", CS, "--endpoint", "nohost"),
            ("add", CS.replace("sb://", "ftp://")),
            ("add", CS.replace(";EntityPath=hc1", "")),
            ("show",),
            ("help", "bogus"),
            ("list", "--frobnicate"),
        ]
        for argv in cases:
            code, out, err = self.run_cli(*argv)
            self.assertEqual(code, 2, (argv, err))
            self.assertEqual(len(err.strip().splitlines()), 1, (argv, err))
            self.assertTrue(err.startswith("hcm: error: "), err)
            self.assertFalse(self.path.exists())

    def test_other_errors(self) -> None:
        """Failures: one line on stderr, exit 1."""
        code, _, err = self.run_cli("remove", "hc1")
        self.assertEqual(code, 1)
        self.assertIn("no such config file", err)
        self.run_cli("add", CS)
        code, _, err = self.run_cli("add", CS)
        self.assertEqual(code, 1)
        self.assertIn("already exists", err)
        code, _, err = self.run_cli("show", "nope")
        self.assertEqual(code, 1)
        self.assertIn("'nope'", err)
        self.path.write_text("[agent]\nworkers = 'x'\n")
        code, _, err = self.run_cli("list")
        self.assertEqual(code, 1)
        self.assertIn("workers", err)
        self.assertEqual(len(err.strip().splitlines()), 1)

    def test_list_without_config(self) -> None:
        code, out, _ = self.run_cli("list")
        self.assertEqual(code, 0)
        self.assertIn("no hybrid connections", out)
        code, out, _ = self.run_cli("--json", "list")
        self.assertEqual(json.loads(out), [])

    def test_config_from_environment(self) -> None:
        other = self.dir / "other.toml"
        out, err = io.StringIO(), io.StringIO()
        with mock.patch.dict(os.environ, {"HCM_CONFIG": str(other)}), \
                mock.patch.object(sys, "stdout", out), mock.patch.object(sys, "stderr", err):
            self.assertEqual(cli.main(["add", CS]), 0)
        self.assertEqual(config.load(other).hybrid_connections[0].name, "hc1")

    def test_version_and_help(self) -> None:
        code, out, _ = self.run_cli("version")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("hcm-twisted "))
        code, out, _ = self.run_cli("--json", "version")
        self.assertIn("twisted", json.loads(out))
        code, out, _ = self.run_cli("help")
        self.assertEqual(code, 0)
        self.assertIn("add", out)
        code, out, _ = self.run_cli("help", "add")
        self.assertIn("--endpoint", out)
        code, out, _ = self.run_cli("add", "--help")
        self.assertEqual(code, 0)
        self.assertIn("--key-name", out)

    def test_dispatch(self) -> None:
        """relay/sender/quickstart go to their modules with the remaining arguments."""
        calls: list[list[str]] = []
        module = type(sys)("fake_relay_cli")
        module.main = lambda argv: calls.append(argv) or 3  # type: ignore[attr-defined]
        with mock.patch.dict(sys.modules, {"hcm_twisted.relay.cli": module}):
            self.assertEqual(cli.main(["relay", "keys", "--json"]), 3)
        self.assertEqual(calls, [["keys", "--json"]])

    def test_dispatch_missing(self) -> None:
        """A missing module is a clean one-line error."""
        with mock.patch.dict(sys.modules, {"hcm_twisted.quickstart": None}):
            code, _, err = self.run_cli("quickstart")
        self.assertEqual(code, 1)
        self.assertIn("not available", err)

    def test_reload(self) -> None:
        """`hcm reload` asks the agent; with none running it fails saying so."""
        self.run_cli("add", CS)
        code, _, err = self.run_cli("reload")
        self.assertEqual(code, 1)
        self.assertIn("no agent is running", err)
        self.agent = lambda method, path: (200, {"ok": True, "hybrid_connections": ["hc1"]})
        code, out, _ = self.run_cli("reload")
        self.assertEqual(code, 0)
        self.assertEqual(self.requests[-1][1:], ("POST", "/reload"))
        self.assertIn("reloaded", out)
