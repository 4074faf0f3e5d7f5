"""Tests for hcm_twisted.core.configfile."""

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.core.configfile import log_settings, parse_host_port, read_toml
from hcm_twisted.core.errors import MalformedInput


class ReadTomlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def error(self, path: Path, **kw: object) -> str:
        with self.assertRaises(MalformedInput) as cm:
            read_toml(path, "x config: ", **kw)  # type: ignore[arg-type]
        return str(cm.exception)

    def test_reads(self) -> None:
        p = self.dir / "a.toml"
        p.write_text('name = "hc1"\n[agent]\nworkers = 2\n')
        self.assertEqual(read_toml(p), {"name": "hc1", "agent": {"workers": 2}})

    def test_missing(self) -> None:
        p = self.dir / "missing.toml"
        self.assertEqual(read_toml(p, missing_ok=True), {})
        self.assertEqual(self.error(p), f"x config: {p}: no such config file")

    def test_unreadable_and_bad(self) -> None:
        self.assertIn("cannot read", self.error(self.dir))  # a directory
        p = self.dir / "b.toml"
        p.write_bytes(b"\xff\xfe")
        self.assertIn("not UTF-8 text", self.error(p))
        p.write_text("[agent\n")
        message = self.error(p)
        self.assertIn(f"x config: {p}: not valid TOML", message)
        self.assertIn("line 1", message)


class HostPortTests(SynchronousTestCase):
    """The one ``host:port`` parser of the agent's and the sender's configs."""

    def test_parse_host_port(self) -> None:
        self.assertEqual(parse_host_port("db:1433", "x"), ("db", 1433))
        self.assertEqual(parse_host_port("[::1]:80", "x"), ("::1", 80))
        for bad in ("db", "db:0", "db:70000", ":80", "::1:80", "db:x"):
            self.assertRaises(MalformedInput, parse_host_port, bad, "x")
        self.assertEqual(parse_host_port("db.internal:1433"), ("db.internal", 1433))
        for bad in ["", "host", "host:", ":80", "host:0", "host:65536", "a:b:80", "[::1]80",
                    "host:8x", "ho st:80"]:
            with self.assertRaises(MalformedInput, msg=bad):
                parse_host_port(bad)


class LogSettingsTests(SynchronousTestCase):
    """One check of ``log-format``/``log-level`` for the agent, the relay and the sender."""

    def test_log_settings(self) -> None:
        self.assertEqual(log_settings({}, "f:"), ("text", "info"))
        self.assertEqual(log_settings({"log-format": "json", "log-level": "WARNING"}, "f:"),
                         ("json", "warn"))
        for bad, key in (({"log-level": "loud"}, "log-level"), ({"log-level": 3}, "log-level"),
                         ({"log-format": "xml"}, "log-format"), ({"log-format": 1}, "log-format")):
            with self.assertRaises(MalformedInput) as cm:
                log_settings(bad, "f:")
            self.assertIn(f"f: {key}", str(cm.exception))
