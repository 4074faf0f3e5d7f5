"""Tests for hcm_twisted.sender.config and the tap's Options."""

from __future__ import annotations

from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.sender import config, tap
from tests.sender.common import CS, KEY, write_config


class ConfigTests(SynchronousTestCase):
    def write(self, text: str) -> Path:
        return write_config(self, text)

    def test_full(self) -> None:
        p = self.write(f'''
ca-certificates = "ca.pem"
token-lifetime = 600
linger = 5
log-format = "json"

[[hybrid-connection]]
connection-string = "{CS}"
listen = "tcp:7002:interface=127.0.0.1"

[[hybrid-connection]]
name = "db"
connection-string = "{CS.replace("hc1", "db")}"
endpoint = "db.internal:1433"

[[hybrid-connection]]
name = "cache"
connection-string = "{CS.replace("hc1", "cache")}"
address = "127.0.0.9"
''')
        c = config.load(p)
        self.assertEqual(c.ca_certificates, (str(p.resolve().parent / "ca.pem"),))
        self.assertEqual((c.token_lifetime, c.linger, c.connect_timeout), (600, 5, 30))
        self.assertEqual(c.log_format, "json")
        hc1, db, cache = c.hybrid_connections
        self.assertEqual((hc1.name, hc1.entity, hc1.dns_mode), ("hc1", "hc1", False))
        self.assertEqual((db.dns_mode, db.address, db.endpoint), (True, "127.0.0.2", "db.internal:1433"))
        self.assertEqual((cache.address, cache.endpoint), ("127.0.0.9", None))
        self.assertEqual(config.listen_description(hc1, None), "tcp:7002:interface=127.0.0.1")
        self.assertEqual(config.listen_description(db, db.endpoint), "tcp:1433:interface=127.0.0.2")
        self.assertNotIn(KEY, repr(c))

    def assertBad(self, text: str, *words: str) -> None:
        with self.assertRaises(MalformedInput) as e:
            config.load(self.write(text))
        for word in words:
            self.assertIn(word, str(e.exception))
        self.assertNotIn(KEY, str(e.exception))

    def test_errors_name_the_key(self) -> None:
        hc = f'[[hybrid-connection]]\nconnection-string = "{CS}"\nlisten = "tcp:1"\n'
        self.assertBad("colour = 1\n" + hc, "'colour'")
        self.assertBad("token-lifetime = -1\n" + hc, "token-lifetime")
        self.assertBad('log-format = "xml"\n' + hc, "log-format")
        self.assertBad('ca-certificates = "missing.pem"\n' + hc, "ca-certificates", "missing.pem")
        self.assertBad("", "no [[hybrid-connection]]")
        self.assertBad(hc + "port = 1\n", "#1", "'port'")
        self.assertBad('[[hybrid-connection]]\nlisten = "tcp:1"\n', "connection-string")
        self.assertBad('[[hybrid-connection]]\nconnection-string = "Endpoint=sb://x/;SharedAccessKey=k"\n',
                       "SharedAccessKeyName")
        self.assertBad(hc + hc, "'hc1' is configured twice")
        self.assertBad(f'[[hybrid-connection]]\nconnection-string = "{CS}"\nendpoint = "nocolon"\n',
                       "endpoint")
        self.assertBad(f'[[hybrid-connection]]\nconnection-string = "{CS}"\naddress = "10.0.0.1"\n',
                       "not a loopback")
        self.assertBad(hc.replace('listen = "tcp:1"', 'listen = "tcp:1"\naddress = "127.0.0.5"'),
                       "only for DNS-name mode")
        self.assertBad("this is not toml", "not valid TOML")
        self.assertBad("ping-interval = -1\n" + hc, "ping-interval")
        self.assertBad('proxy = "ftp://x"\n' + hc, "proxy")
        self.assertBad("no-proxy = 5\n" + hc, "no-proxy")

    def test_proxy_and_ping(self) -> None:
        hc = f'[[hybrid-connection]]\nconnection-string = "{CS}"\nlisten = "tcp:1"\n'
        c = config.load(self.write(
            'proxy = "http://user:secret@proxy:3128"\nno-proxy = ["a", "b.example"]\n'
            "ping-interval = 0\n" + hc
        ))
        self.assertEqual((c.proxy, c.no_proxy, c.ping_interval),
                         ("http://user:secret@proxy:3128", "a,b.example", 0.0))
        self.assertNotIn("secret", repr(c))
        self.assertEqual(config.load(self.write(hc)).ping_interval, 30.0)

    def test_options(self) -> None:
        p = self.write(f'[[hybrid-connection]]\nconnection-string = "{CS}"\nlisten = "tcp:7002"\n')
        options = tap.Options()
        options.parseOptions(["--config", str(p)])
        self.assertEqual(options["loaded"].hybrid_connections[0].listen, "tcp:7002")
        with self.assertRaises(usage.UsageError) as e:
            tap.Options().parseOptions(["--config", str(p) + ".nope"])
        self.assertIn(".nope: no such config file", str(e.exception))
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, [])
