"""Hypothesis fuzzing of the three config loaders (agent, relay, sender).

Whatever the document: the loader returns a config or raises MalformedInput (nothing else);
an unknown key is named in the message; a bad value is named by its key; no message carries a
key (``SharedAccessKey`` or ``primary-key`` value).
"""

from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from hcm_twisted.agent import config as agent_config
from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.relay import namespace as relay_config
from hcm_twisted.sender import config as sender_config

KEY = "c2VjcmV0LWtleS1mb3ItZnV6emluZy0wMDAwMDAwMDA="
KEY2 = "YW5vdGhlci1zZWNyZXQta2V5LWZvci1mdXp6aW5nLTE="
CS = f"Endpoint=sb://localhost:9443/;SharedAccessKeyName=r;SharedAccessKey={KEY};EntityPath=hc1"
# HCM_FUZZ_EXAMPLES=5000 HCM_FUZZ_RANDOM=1 for a longer, randomised local run.
SETTINGS = settings(max_examples=int(os.environ.get("HCM_FUZZ_EXAMPLES", "150")), deadline=None,
                    derandomize=not os.environ.get("HCM_FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.too_slow])
PATH = Path("/nonexistent/fuzz.toml")

AGENT: dict[str, Any] = {
    "agent": {"workers": 2, "admin": "unix:/tmp/x.sock:mode=600", "token-lifetime": 3600,
              "ping-interval": 30, "drain-timeout": 30, "log-format": "text",
              "log-level": "info"},
    "hybrid-connection": [{"name": "hc1", "connection-string": CS,
                           "endpoint": "127.0.0.1:7001"}],
}
RELAY: dict[str, Any] = {
    "namespace": "localhost", "endpoint": "ssl:9443:interface=127.0.0.1",
    "state": "relay-state.sqlite", "token-grace": 5, "accept-timeout": 30,
    "authorization-rule": [{"name": "Root", "rights": ["Manage", "Listen", "Send"],
                            "primary-key": KEY, "secondary-key": KEY2}],
    "hybrid-connection": [{"name": "hc1", "requires-client-authorization": True,
                           "user-metadata": "[]",
                           "authorization-rule": [{"name": "l", "rights": ["Listen"],
                                                   "primary-key": KEY}]}],
}
SENDER: dict[str, Any] = {
    "token-lifetime": 3600, "connect-timeout": 30, "linger": 60, "log-format": "text",
    "hybrid-connection": [{"name": "hc1", "connection-string": CS,
                           "listen": "tcp:7002:interface=127.0.0.1"}],
}


def load_agent(doc: dict[str, Any]) -> Any:
    return agent_config.parse_document(doc, PATH)


def load_relay(doc: dict[str, Any]) -> Any:
    return relay_config.parse_config(doc, "/nonexistent")


def load_sender(doc: dict[str, Any]) -> Any:
    return sender_config.parse(doc, PATH)


LOADERS = {"agent": (AGENT, load_agent), "relay": (RELAY, load_relay),
           "sender": (SENDER, load_sender)}

# TOML-representable values (no None).
scalars = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["", " ", "0", "-1", "1e309", "127.0.0.1:0", "host:99999", "unix:",
                     "ssl:", "tcp:x", "sb://", "Endpoint=;", "\x00", "é", "../../etc/passwd"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)
key_names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1,
                    max_size=20)


def tables(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every table of ``doc`` with a path, for picking where to mutate."""
    out: list[tuple[str, dict[str, Any]]] = [("", doc)]
    for k, v in doc.items():
        if isinstance(v, dict):
            out.extend((f"{k}.{p}" if p else k, t) for p, t in tables(v))
        elif isinstance(v, list):
            for i, item in enumerate(v):
                if isinstance(item, dict):
                    out.extend((f"{k}[{i}].{p}" if p else f"{k}[{i}]", t)
                               for p, t in tables(item))
    return out


class ConfigFuzz(SynchronousTestCase):
    def check(self, which: str, doc: dict[str, Any]) -> str | None:
        """Load; the message of the MalformedInput (None if it loaded)."""
        _, loader = LOADERS[which]
        try:
            loader(doc)
        except MalformedInput as e:
            message = str(e)
            self.assertNotIn(KEY, message)
            self.assertNotIn(KEY2, message)
            self.assertTrue(message.strip())
            return message
        return None

    def test_bases_load(self) -> None:
        for which, (base, _) in LOADERS.items():
            self.assertIsNone(self.check(which, copy.deepcopy(base)), which)

    @SETTINGS
    @given(st.sampled_from(sorted(LOADERS)), st.data(), key_names, values)
    def test_unknown_key_is_named(self, which: str, data: Any, key: str, value: Any) -> None:
        base, _ = LOADERS[which]
        doc = copy.deepcopy(base)
        where, table = data.draw(st.sampled_from(tables(doc)))
        if key in table:
            return
        table[key] = value
        message = self.check(which, doc)
        self.assertIsNotNone(message, f"unknown key {key!r} in {where or 'top'} was accepted")
        assert message is not None
        self.assertTrue(key in message or repr(key) in message,
                        f"{which}: {message!r} does not name {key!r}")

    @SETTINGS
    @given(st.sampled_from(sorted(LOADERS)), st.data(), values)
    def test_bad_value_named_or_accepted(self, which: str, data: Any, value: Any) -> None:
        base, _ = LOADERS[which]
        doc = copy.deepcopy(base)
        where, table = data.draw(st.sampled_from(tables(doc)))
        key = data.draw(st.sampled_from(sorted(table)))
        table[key] = value
        message = self.check(which, doc)
        if message is not None:
            named = key in message or key.replace("-", " ") in message or any(
                k in message for k in (value if isinstance(value, dict) else {}))
            self.assertTrue(named or key in ("hybrid-connection", "authorization-rule", "agent"),
                            f"{which}: {where}.{key} = {value!r}: {message!r} names no key")

    @SETTINGS
    @given(st.sampled_from(sorted(LOADERS)), st.data())
    def test_key_removed(self, which: str, data: Any) -> None:
        base, _ = LOADERS[which]
        doc = copy.deepcopy(base)
        _, table = data.draw(st.sampled_from(tables(doc)))
        if table:
            del table[data.draw(st.sampled_from(sorted(table)))]
        self.check(which, doc)

    @SETTINGS
    @given(st.text(max_size=300))
    def test_agent_text(self, text: str) -> None:
        try:
            agent_config.parse_text(text, PATH)
        except MalformedInput:
            pass

    @SETTINGS
    @given(st.binary(max_size=300), st.sampled_from(["agent", "relay", "sender"]))
    def test_files(self, blob: bytes, which: str) -> None:
        """Whole files through each ``load``: bytes, TOML mutations, all MalformedInput."""
        path = Path(self.mktemp())
        path.write_bytes(blob)
        self._load_file(which, path)

    @SETTINGS
    @given(st.sampled_from(["agent", "relay", "sender"]), st.data())
    def test_truncated_files(self, which: str, data: Any) -> None:
        text = tomli_w.dumps(LOADERS[which][0])
        cut = data.draw(st.integers(min_value=0, max_value=len(text)))
        path = Path(self.mktemp())
        path.write_text(text[:cut])
        message = self._load_file(which, path)
        if message is not None:
            self.assertNotIn(KEY, message)

    def _load_file(self, which: str, path: Path) -> str | None:
        loader = {"agent": agent_config.load, "relay": relay_config.load_config,
                  "sender": sender_config.load}[which]
        try:
            loader(path)
        except MalformedInput as e:
            self.assertNotIn(KEY, str(e))
            return str(e)
        return None


def _roundtrip_ok() -> None:  # the bases are valid TOML documents
    for base, _ in LOADERS.values():
        tomllib.loads(tomli_w.dumps(base))


_roundtrip_ok()
