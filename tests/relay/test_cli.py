"""``hcm relay connection-string`` and ``hcm relay regenerate-key``."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import tomli_w
from twisted.trial import unittest

from hcm_twisted.core import connstr
from hcm_twisted.relay import cli
from hcm_twisted.relay.namespace import Namespace, load_config, parse_config
from tests.relay.common import LISTEN_KEY, config_dict


class CliTests(unittest.TestCase):
    def setUp(self) -> None:
        base = Path(self.mktemp())
        base.mkdir()
        self.path = base / "relay.toml"
        data = config_dict(endpoint="ssl:19999:interface=127.0.0.1")
        data["hybrid-connection"].append(
            {"name": "gen", "authorization-rule": [{"name": "auto", "rights": ["Listen"]}]})
        self.path.write_text(tomli_w.dumps(data))

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def test_connection_string(self) -> None:
        code, out, _ = self.run_cli("connection-string", "--config", str(self.path), "hc1",
                                    "--rule", "defaultListener")
        self.assertEqual(code, 0)
        cs = connstr.parse(out.strip())
        self.assertEqual((cs.host, cs.port, cs.key_name, cs.key, cs.entity_path),
                         ("localhost", 19999, "defaultListener", LISTEN_KEY, "hc1"))
        code, out, _ = self.run_cli("connection-string", "--config", str(self.path), "gen",
                                    "--rule", "RootManageSharedAccessKey", "--json")
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out)["entityPath"], "gen")

    def test_errors(self) -> None:
        code, _, err = self.run_cli("connection-string", "--config", str(self.path), "nope")
        self.assertEqual(code, 1)
        self.assertIn("'nope'", err)
        code, _, err = self.run_cli("connection-string", "--config", str(self.path), "hc1",
                                    "--rule", "bogus")
        self.assertEqual(code, 1)
        code, _, _ = self.run_cli("frobnicate")
        self.assertEqual(code, 2)
        code, _, err = self.run_cli("regenerate-key", "--config", str(self.path), "x")
        self.assertEqual(code, 1)

    def test_regenerate(self) -> None:
        ns = Namespace.open(load_config(self.path))
        old = ns.rule("auto", "gen")
        assert old is not None
        code, out, _ = self.run_cli("regenerate-key", "--config", str(self.path), "auto",
                                    "--hc", "gen", "--secondary", "--json")
        self.assertEqual(code, 0)
        result = json.loads(out)
        new = ns.rule("auto", "gen")
        assert new is not None
        self.assertEqual((new.primary_key, new.secondary_key),
                         (old.primary_key, result["value"]))

    def test_endpoint_port(self) -> None:
        for desc, port in (("ssl:8443", 8443), ("tcp:port=9000:interface=::1", 9000),
                           (None, 9443), ("ssl:443:privateKey=a\\:b.pem", 443)):
            cfg = parse_config({"endpoint": desc} if desc else {}, "/x")
            self.assertEqual(cli.endpoint_port(cfg), port)
