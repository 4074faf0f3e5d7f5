"""Relay configuration, entities and the key store."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.relay.namespace import (
    KeyStore,
    Namespace,
    RelayConfig,
    load_config,
    parse_config,
)
from tests.relay.common import LISTEN_KEY, config_dict


class ConfigTests(unittest.TestCase):
    def base(self) -> Path:
        p = Path(self.mktemp())
        p.mkdir()
        return p

    def test_defaults(self) -> None:
        cfg = parse_config({}, "/srv/relay")
        self.assertEqual(cfg, RelayConfig(state=Path("/srv/relay/relay-state.sqlite")))
        self.assertEqual(cfg.hosts, ("localhost",))

    def test_full(self) -> None:
        cfg = parse_config(config_dict(aliases=["Relay.Example"], **{"token-grace": 1,
                                                                      "max-listeners": 3}), "/x")
        self.assertEqual(cfg.hosts, ("localhost", "relay.example"))
        self.assertEqual((cfg.token_grace, cfg.max_listeners), (1.0, 3))
        self.assertEqual(cfg.max_request_body, 64 << 20)
        limited = parse_config({"max-request-body": 1000}, "/x")
        self.assertEqual(limited.max_request_body, 1000)
        hc1 = cfg.hybrid_connections[0]
        self.assertEqual(hc1.name, "hc1")
        self.assertTrue(hc1.requires_client_authorization)
        self.assertEqual([r.name for r in hc1.rules], ["defaultListener", "defaultSender"])
        self.assertFalse(cfg.hybrid_connections[1].requires_client_authorization)
        self.assertNotIn(LISTEN_KEY, repr(cfg))

    def assertBad(self, data: dict[str, Any], *words: str) -> None:
        with self.assertRaises(MalformedInput) as ctx:
            parse_config(data, "/x")
        for word in words:
            self.assertIn(word, str(ctx.exception))

    def test_bad_keys_are_named(self) -> None:
        self.assertBad({"namespce": "x"}, "'namespce'")
        self.assertBad({"hybrid-connection": [{"name": "a", "metadata": "x"}]}, "'metadata'", "'a'")
        self.assertBad({"authorization-rule": [{"name": "r", "rights": ["Listen"], "key": "x"}]},
                       "'key'")
        self.assertBad({"authorization-rule": [{"name": "r", "rights": ["Read"]}]}, "'Read'")
        self.assertBad({"authorization-rule": [{"name": "r"}]}, "'rights'")
        self.assertBad({"hybrid-connection": [{"name": "a"}, {"name": "A"}]}, "twice")
        self.assertBad({"hybrid-connection": [{"name": "a/$b"}]}, "entity path")
        self.assertBad({"token-grace": "5"}, "'token-grace'")
        self.assertBad({"max-listeners": 0}, "'max-listeners'")
        self.assertBad({"max-request-body": -1}, "'max-request-body'")
        self.assertBad({"max-request-body": "64M"}, "'max-request-body'")
        self.assertBad({"hybrid-connection": [{"name": "a",
                                                "requires-client-authorization": "yes"}]},
                       "'requires-client-authorization'")
        self.assertBad({"aliases": "x"}, "'aliases'")

    def test_short_key_not_shown(self) -> None:
        with self.assertRaises(MalformedInput) as ctx:
            parse_config({"authorization-rule": [{"name": "r", "rights": ["Send"],
                                                  "primary-key": "s3cr"}]}, "/x")
        self.assertIn("'primary-key'", str(ctx.exception))
        self.assertNotIn("s3cr", str(ctx.exception))

    def test_load_config_errors(self) -> None:
        base = self.base()
        with self.assertRaises(MalformedInput):
            load_config(base / "missing.toml")
        bad = base / "bad.toml"
        bad.write_text("namespace = [")
        with self.assertRaises(MalformedInput) as ctx:
            load_config(bad)
        self.assertIn("not valid TOML", str(ctx.exception))
        good = base / "good.toml"
        good.write_text('state = "sub/state.db"\n')
        self.assertEqual(load_config(good).state, base.resolve() / "sub" / "state.db")


class KeyStoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp())
        self.base.mkdir()

    def config(self, **top: Any) -> RelayConfig:
        data = config_dict(**top)
        data["hybrid-connection"].append(
            {"name": "gen", "authorization-rule": [{"name": "auto", "rights": ["Listen"]}]})
        return parse_config(data, self.base)

    def test_generated_keys_persist_0600(self) -> None:
        ns = Namespace.open(self.config())
        auto = ns.rule("auto", "gen")
        assert auto is not None
        self.assertEqual(len(auto.primary_key), 44)
        self.assertNotEqual(auto.primary_key, auto.secondary_key)
        mode = stat.S_IMODE(os.stat(ns.config.state).st_mode)
        self.assertEqual(mode, 0o600)
        again = Namespace.open(self.config()).rule("auto", "gen")
        self.assertEqual(again, auto)
        listener = ns.rule("defaultListener", "hc1")
        assert listener is not None
        self.assertEqual(listener.primary_key, LISTEN_KEY)

    def test_regenerate_is_seen_by_running_namespace(self) -> None:
        ns = Namespace.open(self.config())
        before = ns.rule("defaultListener", "hc1")
        assert before is not None
        new = KeyStore(ns.config.state).regenerate("hc1", "defaultListener")
        after = ns.rule("defaultListener", "hc1")
        assert after is not None
        self.assertEqual(after.primary_key, new)
        self.assertEqual(after.secondary_key, before.secondary_key)
        # A restart keeps the regenerated key while the file's key is unchanged.
        restarted = Namespace.open(self.config()).rule("defaultListener", "hc1")
        assert restarted is not None
        self.assertEqual(restarted.primary_key, new)
        with self.assertRaises(MalformedInput):
            ns.store.regenerate("", "nope")

    def test_changed_file_key_wins(self) -> None:
        Namespace.open(self.config())
        data = config_dict()
        data["hybrid-connection"][0]["authorization-rule"][0]["primary-key"] = "Q" * 44
        rule = Namespace.open(parse_config(data, self.base)).rule("defaultListener", "hc1")
        assert rule is not None
        self.assertEqual(rule.primary_key, "Q" * 44)

    def test_find(self) -> None:
        data = config_dict()
        data["hybrid-connection"].append({"name": "hc1/deeper"})
        ns = Namespace.open(parse_config(data, self.base))
        found = ns.find("HC1/x/y")
        assert found is not None
        self.assertEqual((found[0].name, found[1]), ("hc1", "/x/y"))
        found = ns.find("hc1/deeper/z")
        assert found is not None
        self.assertEqual((found[0].name, found[1]), ("hc1/deeper", "/z"))
        self.assertIsNone(ns.find("hc10"))
        self.assertIsNone(ns.find(""))

    def test_rules_for_entity_then_namespace(self) -> None:
        ns = Namespace.open(self.config())
        names = [r.name for r in ns.rules_for(ns.entities["hc1"])]
        self.assertEqual(names, ["defaultListener", "defaultSender", "RootManageSharedAccessKey"])
        self.assertEqual([r.name for r in ns.rules_for(None)], ["RootManageSharedAccessKey"])
