"""``twistd hcm-relay`` options and service wiring."""

from __future__ import annotations

from pathlib import Path

import tomli_w
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial import unittest

from hcm_twisted.relay import tap
from tests.relay.common import config_dict


class TapTests(unittest.TestCase):
    def write(self, **top: object) -> Path:
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        path = base / "relay.toml"
        path.write_text(tomli_w.dumps(config_dict(**top)))
        return path

    def test_options_require_config(self) -> None:
        with self.assertRaises(usage.UsageError):
            tap.Options().parseOptions([])

    def test_log_settings_checked(self) -> None:
        for key, value in (("log-format", "xml"), ("log-level", "loud")):
            path = self.write(**{key: value})
            with self.assertRaises(usage.UsageError) as ctx:
                tap.Options().parseOptions(["--config", str(path)])
            self.assertIn(key, str(ctx.exception))

    def test_bad_config_is_a_usage_error_naming_the_key(self) -> None:
        path = self.write(bogus=1)
        with self.assertRaises(usage.UsageError) as ctx:
            tap.Options().parseOptions(["--config", str(path)])
        self.assertIn("'bogus'", str(ctx.exception))

    def test_private_ca_when_no_certificate(self) -> None:
        path = self.write(endpoint="ssl:0:interface=127.0.0.1")
        options = tap.Options()
        options.parseOptions(["--config", str(path)])
        desc, ca = tap.endpoint_description(options["relay-config"])
        self.assertEqual(ca, str(path.parent / "relay-ca.pem"))
        assert ca is not None
        self.assertTrue(Path(ca).exists())
        self.assertIn("certKey=", desc)
        svc = tap.RelayService(options["relay-config"], reactor=MemoryReactorClock())
        self.assertEqual(svc.ca_path, ca)

    def test_tcp_endpoint_has_no_ca(self) -> None:
        path = self.write(endpoint="tcp:0:interface=127.0.0.1")
        options = tap.Options()
        options.parseOptions(["--config", str(path)])
        self.assertEqual(tap.endpoint_description(options["relay-config"]),
                         ("tcp:0:interface=127.0.0.1", None))
        svc = tap.makeService(options)
        relays = [svc] if isinstance(svc, tap.RelayService) else list(svc)  # type: ignore[call-overload]
        self.assertIsInstance(relays[0], tap.RelayService)
