"""Tests for ``hcm sender`` (hcm_twisted.sender.cli)."""

from __future__ import annotations

import io
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.sender import cli, config
from tests.sender.common import CS_PREFIX, KEY, write_config


class CliTests(SynchronousTestCase):
    def write(self) -> Path:
        return write_config(self, f'''
[[hybrid-connection]]
connection-string = "{CS_PREFIX}hc1"
listen = "tcp:7002"

[[hybrid-connection]]
connection-string = "{CS_PREFIX}db"
endpoint = "db.internal:1433"

[[hybrid-connection]]
connection-string = "{CS_PREFIX}ip"
endpoint = "10.1.2.3:80"
''')

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(list(argv), stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    def test_hosts(self) -> None:
        code, out, err = self.run_cli("hosts", "--config", str(self.write()))
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0], "127.0.0.2\tdb.internal\t# hcm-sender db (port 1433)")
        self.assertIn("endpoint 10.1.2.3:80 is an IP address; apps connect to 127.0.0.3:80", lines[1])
        self.assertEqual(len(lines), 2)

    def test_hosts_with_unknown_endpoint(self) -> None:
        c = config.load(self.write())
        lines = cli.hosts_lines(c, {"db": ValueError("no endpoint in the HC's user metadata")})
        self.assertIn("# db: endpoint unknown (no endpoint in the HC's user metadata)", lines)

    def test_check_masks_keys(self) -> None:
        code, out, _ = self.run_cli("check", "--config", str(self.write()))
        self.assertEqual(code, 0)
        self.assertIn("hc1: ", out)
        self.assertIn("SharedAccessKey=***", out)
        self.assertNotIn(KEY, out)

    def test_errors(self) -> None:
        code, _, err = self.run_cli("hosts")
        self.assertEqual(code, 2)
        self.assertIn("--config", err)
        code, _, err = self.run_cli("check", "--config", "/nonexistent.toml")
        self.assertEqual(code, 1)
        self.assertIn("/nonexistent.toml: no such config file", err)
        code, out, _ = self.run_cli()
        self.assertEqual(code, 0)
        self.assertIn("hosts", out)
