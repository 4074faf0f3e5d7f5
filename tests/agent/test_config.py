"""Tests for :mod:`hcm_twisted.agent.config`."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.agent import config
from hcm_twisted.core.errors import MalformedInput

KEY = "c2VjcmV0LWtleS1mb3ItY29uZmlnLXRlc3RzLTAwMDA="
CS = f"Endpoint=sb://localhost:9443/;SharedAccessKeyName=defaultListener;SharedAccessKey={KEY};EntityPath=hc1"

GOOD = f"""
[agent]
workers = 2
admin = "tcp:7070:interface=127.0.0.1"
token-lifetime = 600
ca-certificates = ["ca.pem", "/abs/other.pem"]
ping-interval = 15
drain-timeout = 5.5
log-format = "json"

[[hybrid-connection]]
connection-string = "{CS}"
endpoint = "127.0.0.1:7001"

[[hybrid-connection]]
name = "second"
connection-string = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=r;SharedAccessKey=k;EntityPath=other"
"""


class ParseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "hcm.toml"

    def load(self, text: str) -> config.AgentConfig:
        self.path.write_text(text)
        return config.load(self.path)

    def bad(self, text: str, *fragments: str) -> str:
        self.path.write_text(text)
        with self.assertRaises(MalformedInput) as cm:
            config.load(self.path)
        message = str(cm.exception)
        self.assertIn(str(self.path), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertNotIn(KEY, message)
        return message

    def test_good(self) -> None:
        """Every key is read; paths are made absolute against the config's directory."""
        cfg = self.load(GOOD)
        self.assertEqual(cfg.workers, 2)
        self.assertEqual(cfg.worker_count(), 2)
        self.assertEqual(cfg.admin, "tcp:7070:interface=127.0.0.1")
        self.assertEqual(cfg.token_lifetime, 600.0)
        self.assertEqual(
            cfg.ca_certificates, (str((self.dir / "ca.pem").resolve()), "/abs/other.pem")
        )
        self.assertEqual(cfg.ping_interval, 15.0)
        self.assertEqual(cfg.drain_timeout, 5.5)
        self.assertEqual(cfg.log_format, "json")
        first, second = cfg.hybrid_connections
        self.assertEqual(first.name, "hc1")  # from EntityPath
        self.assertEqual(first.endpoint, "127.0.0.1:7001")
        self.assertEqual(first.connection_string.key, KEY)
        self.assertEqual(second.name, "second")
        self.assertEqual(second.entity, "other")
        self.assertIsNone(second.endpoint)
        self.assertIs(cfg.get("second"), second)
        self.assertIsNone(cfg.get("nope"))
        self.assertNotIn(KEY, repr(cfg))

    def test_defaults(self) -> None:
        """An empty file is a valid config: defaults, and an admin socket beside the file."""
        cfg = self.load("")
        self.assertEqual(cfg.workers, 0)
        self.assertGreaterEqual(cfg.worker_count(), 1)
        self.assertEqual(cfg.token_lifetime, 3600.0)
        self.assertEqual(cfg.ca_certificates, ())
        self.assertEqual(cfg.log_format, "text")
        self.assertEqual(cfg.hybrid_connections, ())
        sock = str(self.dir.resolve() / "hcm.sock").replace(":", "\\:")
        self.assertEqual(cfg.admin, f"unix:{sock}:mode=600")

    def test_proxy(self) -> None:
        """proxy and no-proxy are read; a bad proxy URL is named; credentials stay out of repr."""
        cfg = self.load('[agent]\nproxy = "http://u:pw@proxy:3128"\nno-proxy = ["a.internal", "b"]\n')
        self.assertEqual(cfg.proxy, "http://u:pw@proxy:3128")
        self.assertEqual(cfg.no_proxy, "a.internal,b")
        self.assertNotIn("pw", repr(cfg))
        self.assertEqual(self.load('[agent]\nproxy = "none"\nno-proxy = "x,y"\n').no_proxy, "x,y")
        self.assertIsNone(self.load("").proxy)
        message = self.bad('[agent]\nproxy = "socks5://u:secretpw@p:1080"\n', "proxy", "socks5")
        self.assertNotIn("secretpw", message)
        self.bad("[agent]\nproxy = 5\n", "proxy")
        self.bad("[agent]\nno-proxy = 5\n", "no-proxy")

    def test_single_ca_path(self) -> None:
        cfg = self.load('[agent]\nca-certificates = "sub/ca.pem"\n')
        self.assertEqual(cfg.ca_certificates, (str((self.dir / "sub" / "ca.pem").resolve()),))

    def test_sas_connection_string(self) -> None:
        """A connection string carrying a SharedAccessSignature is accepted."""
        cs = "Endpoint=sb://localhost/;EntityPath=hc1;SharedAccessSignature=SharedAccessSignature sr=a&sig=b&se=1&skn=c"
        cfg = self.load(f'[[hybrid-connection]]\nconnection-string = "{cs}"\n')
        self.assertEqual(cfg.hybrid_connections[0].connection_string.sas, cs.split("=", 3)[3])

    def test_name_without_entity_path(self) -> None:
        """Without EntityPath the name is the HC path."""
        cs = f"Endpoint=sb://localhost/;SharedAccessKeyName=r;SharedAccessKey={KEY}"
        cfg = self.load(f'[[hybrid-connection]]\nname = "hcx"\nconnection-string = "{cs}"\n')
        self.assertEqual(cfg.hybrid_connections[0].connection_string.entity_path, "hcx")

    def test_unknown_keys(self) -> None:
        """Unknown keys at every level are named."""
        self.bad("colour = 1\n", "'colour'")
        self.bad("[agent]\nworkerz = 1\n", "[agent]", "'workerz'")
        self.bad(f'[[hybrid-connection]]\nconnection-string = "{CS}"\nport = 1\n', "'port'")

    def test_bad_values(self) -> None:
        """Every bad value names its key."""
        self.bad("[agent]\nworkers = -1\n", "workers")
        self.bad("[agent]\nworkers = 1.5\n", "workers", "integer")
        self.bad("[agent]\nworkers = true\n", "workers")
        self.bad("[agent]\ntoken-lifetime = 4\n", "token-lifetime")
        self.bad('[agent]\ntoken-lifetime = "1h"\n', "token-lifetime")
        self.bad("[agent]\nping-interval = 0\n", "ping-interval")
        self.bad("[agent]\ndrain-timeout = -1\n", "drain-timeout")
        self.bad('[agent]\nlog-format = "xml"\n', "log-format")
        self.bad("[agent]\nadmin = 5\n", "admin")
        self.bad("[agent]\nca-certificates = 5\n", "ca-certificates")
        self.bad("agent = 5\n", "agent")
        self.bad("hybrid-connection = 5\n", "hybrid-connection")
        self.bad("[[hybrid-connection]]\nname = 'x'\n", "connection-string")
        self.bad('[[hybrid-connection]]\nconnection-string = "nonsense"\n', "connection-string")
        self.bad(
            '[[hybrid-connection]]\nconnection-string = "Endpoint=sb://localhost/;EntityPath=x"\n',
            "connection-string", "SharedAccessKey",
        )
        self.bad(
            f'[[hybrid-connection]]\nconnection-string = "{CS}"\nendpoint = "nohost"\n',
            "'hc1'", "endpoint",
        )
        self.bad(
            f'[[hybrid-connection]]\nconnection-string = "{CS}"\nendpoint = "h:99999"\n',
            "endpoint", "port",
        )
        self.bad(
            f'[[hybrid-connection]]\nconnection-string = "{CS}"\nname = "bad name"\n', "name",
        )
        self.bad(
            f"[[hybrid-connection]]\nconnection-string = \"Endpoint=sb://localhost/;"
            f'SharedAccessKeyName=r;SharedAccessKey={KEY}"\n',
            "name", "EntityPath",
        )

    def test_bad_connection_string_hides_key(self) -> None:
        """A broken connection string is reported without its key."""
        broken = CS.replace("sb://", "ftp://")
        message = self.bad(f'[[hybrid-connection]]\nconnection-string = "{broken}"\n', "connection-string")
        self.assertNotIn(KEY, message)

    def test_duplicate_names(self) -> None:
        self.bad(
            f'[[hybrid-connection]]\nconnection-string = "{CS}"\n'
            f'[[hybrid-connection]]\nconnection-string = "{CS}"\n',
            "'hc1'", "twice",
        )

    def test_not_toml(self) -> None:
        self.bad("[agent\n", "TOML")

    def test_missing_file(self) -> None:
        with self.assertRaises(MalformedInput) as cm:
            config.load(self.dir / "nope.toml")
        self.assertIn("nope.toml", str(cm.exception))
        self.assertEqual(config.read_document(self.dir / "nope.toml", missing_ok=True), {})


class ExampleTests(SynchronousTestCase):
    def test_example_config(self) -> None:
        """etc/hcm.toml is a valid config."""
        path = Path(__file__).resolve().parents[2] / "etc" / "hcm.toml"
        cfg = config.load(path)
        self.assertEqual(cfg.admin, "unix:/run/hcm/admin.sock:mode=600")
        self.assertEqual(cfg.hybrid_connections, ())


class EndpointTests(SynchronousTestCase):
    def test_escape(self) -> None:
        self.assertEqual(config.escape_endpoint_value("/a:b\\c"), "/a\\:b\\\\c")


class WriteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "hcm.toml"

    def test_round_trip(self) -> None:
        """Adding and removing HCs keeps the rest of the document; the file is 0600."""
        self.path.write_text(GOOD)
        doc = config.read_document(self.path)
        hc = config.make_hybrid_connection(CS.replace("hc1", "hc3"), endpoint="10.0.0.1:22")
        cfg = config.write_document(self.path, config.with_hybrid_connection(doc, hc))
        self.assertEqual([h.name for h in cfg.hybrid_connections], ["hc1", "second", "hc3"])
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        again = config.load(self.path)
        self.assertEqual(again, cfg)
        self.assertEqual(again.workers, 2)
        self.assertEqual(again.hybrid_connections[2].connection_string.key, KEY)
        cfg = config.write_document(
            self.path, config.without_hybrid_connection(config.read_document(self.path), "hc1")
        )
        self.assertEqual([h.name for h in cfg.hybrid_connections], ["second", "hc3"])
        self.assertEqual(os.listdir(self.dir), ["hcm.toml"])  # no temp file left

    def test_keeps_owner_and_mode(self) -> None:
        """Rewriting keeps the file's owner and group; the mode becomes 0600."""
        self.path.write_text(GOOD)
        os.chmod(self.path, 0o664)
        if os.geteuid() == 0:
            os.chown(self.path, 4321, 4322)
        config.write_document(self.path, config.read_document(self.path))
        st = os.stat(self.path)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        if os.geteuid() == 0:
            self.assertEqual((st.st_uid, st.st_gid), (4321, 4322))

    def test_new_file(self) -> None:
        """Writing creates the directory and the file."""
        path = self.dir / "sub" / "hcm.toml"
        hc = config.make_hybrid_connection(CS)
        config.write_document(path, config.with_hybrid_connection({}, hc))
        self.assertEqual(config.load(path).hybrid_connections[0].name, "hc1")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_duplicate_and_missing(self) -> None:
        hc = config.make_hybrid_connection(CS)
        doc = config.with_hybrid_connection({}, hc)
        with self.assertRaises(MalformedInput) as cm:
            config.with_hybrid_connection(doc, hc)
        self.assertIn("already exists", str(cm.exception))
        with self.assertRaises(MalformedInput) as cm:
            config.without_hybrid_connection(doc, "nope")
        self.assertIn("'nope'", str(cm.exception))
        self.assertNotIn("hybrid-connection", config.without_hybrid_connection(doc, "hc1"))

    def test_invalid_document_not_written(self) -> None:
        """A document that does not validate is refused and the old file stays."""
        self.path.write_text(GOOD)
        before = self.path.read_bytes()
        doc = config.read_document(self.path)
        doc["agent"]["workers"] = -3
        self.assertRaises(MalformedInput, config.write_document, self.path, doc)
        self.assertEqual(self.path.read_bytes(), before)
        self.assertEqual(os.listdir(self.dir), ["hcm.toml"])

    def test_failed_write_keeps_old_file(self) -> None:
        """An error while writing leaves the old file whole and removes the temp file."""
        self.path.write_text(GOOD)
        before = self.path.read_bytes()
        doc = config.read_document(self.path)
        with mock.patch.object(config.os, "fsync", side_effect=OSError(28, "No space left")):
            self.assertRaises(OSError, config.write_document, self.path, doc)
        self.assertEqual(self.path.read_bytes(), before)
        self.assertEqual(os.listdir(self.dir), ["hcm.toml"])

    def test_make_hybrid_connection_errors(self) -> None:
        """Errors from the CLI path carry no file prefix and no key."""
        with self.assertRaises(MalformedInput) as cm:
            config.make_hybrid_connection(CS, endpoint="nope")
        self.assertTrue(str(cm.exception).startswith("endpoint"), str(cm.exception))
        with self.assertRaises(MalformedInput) as cm:
            config.make_hybrid_connection(CS.replace("sb://", "gopher://"))
        self.assertTrue(str(cm.exception).startswith("connection-string"), str(cm.exception))
        self.assertNotIn(KEY, str(cm.exception))
