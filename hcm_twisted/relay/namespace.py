# -*- test-case-name: tests.relay.test_namespace -*-
"""The relay's namespace: configuration, entities, rules and their keys.

The TOML file (DESIGN.md "Relay config") is read once into frozen values.
Keys given in the file are used as they are; missing keys are generated once
(32 random bytes, base64) and kept in the SQLite ``state`` file (mode 0600),
which also holds keys regenerated later with ``hcm relay regenerate-key``.
A running relay notices a changed state file on the next authorization (it
compares the file's size and modification time, a ``stat`` per check) and
re-reads the keys, so regenerated keys take effect at once.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import secrets
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from hcm_twisted.core import configfile
from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.core.sas import Rule

RIGHTS = ("Listen", "Send", "Manage")
DEFAULT_ENDPOINT = "ssl:9443:interface=127.0.0.1"
NAMESPACE_SCOPE = ""  # the key-store scope of namespace-level rules


@attrs.frozen(repr=False)
class RuleConfig:
    """An authorization rule as configured (keys may be missing)."""

    name: str
    rights: frozenset[str]
    primary_key: str | None = None
    secondary_key: str | None = None

    def __repr__(self) -> str:
        return f"<RuleConfig {self.name} rights={sorted(self.rights)}>"


@attrs.frozen
class HybridConnectionConfig:
    name: str
    requires_client_authorization: bool = True
    user_metadata: str | None = None
    rules: tuple[RuleConfig, ...] = ()


DEFAULT_MAX_REQUEST_BODY = 64 * 1024 * 1024


@attrs.frozen
class RelayConfig:
    """The whole relay configuration."""

    namespace: str = "localhost"
    aliases: tuple[str, ...] = ()
    endpoint: str | None = None
    state: Path = Path("relay-state.sqlite")
    rules: tuple[RuleConfig, ...] = ()
    hybrid_connections: tuple[HybridConnectionConfig, ...] = ()
    token_grace: float = 5.0
    accept_timeout: float = 30.0
    request_timeout: float = 60.0
    max_request_body: int = DEFAULT_MAX_REQUEST_BODY
    max_listeners: int = 25
    handshake_timeout: float = 10.0
    close_timeout: float = 2.0
    half_close_timeout: float = 60.0
    ping_interval: float = 0.0
    log_requests: bool = False
    metrics: str | None = None
    listener_recycle: float = 0.0
    log_format: str = "text"
    log_level: str = "info"

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.namespace, *self.aliases)

    @property
    def state_dir(self) -> Path:
        return self.state.parent


_TOP_KEYS = {
    "namespace", "aliases", "endpoint", "state", "authorization-rule", "hybrid-connection",
    "token-grace", "accept-timeout", "request-timeout", "max-request-body", "max-listeners", "handshake-timeout",
    "close-timeout", "half-close-timeout", "ping-interval", "log-requests", "metrics",
    "listener-recycle", "log-format", "log-level",
}
_HC_KEYS = {"name", "requires-client-authorization", "user-metadata", "authorization-rule"}
_RULE_KEYS = {"name", "rights", "primary-key", "secondary-key"}


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise MalformedInput(f"{where}: unknown key {key!r}")


def _text(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str | None:
    value = table.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise MalformedInput(f"{where}: {key!r} must be a non-empty string")
    return value


def _number(table: Mapping[str, Any], key: str, default: float, minimum: float = 0) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise MalformedInput(f"relay config: {key!r} must be a number >= {minimum}")
    return float(value)


def _bool(table: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise MalformedInput(f"{where}: {key!r} must be true or false")
    return value


def _rule(table: Any, where: str) -> RuleConfig:
    if not isinstance(table, dict):
        raise MalformedInput(f"{where}: must be a table")
    name = _text(table, "name", where)
    if name is None:
        raise MalformedInput(f"{where}: 'name' is missing")
    where = f"{where} {name!r}"
    _check_keys(table, _RULE_KEYS, where)
    rights = table.get("rights")
    if not isinstance(rights, list) or not rights:
        raise MalformedInput(f"{where}: 'rights' must be a non-empty list of {', '.join(RIGHTS)}")
    for right in rights:
        if right not in RIGHTS:
            raise MalformedInput(
                f"{where}: 'rights' holds {str(right)[:20]!r}; allowed: {', '.join(RIGHTS)}"
            )
    primary = _text(table, "primary-key", where)
    secondary = _text(table, "secondary-key", where)
    for key, value in (("primary-key", primary), ("secondary-key", secondary)):
        if value is not None and (len(value) < 8 or not value.isascii() or value != value.strip()):
            # The value itself is never shown.
            raise MalformedInput(f"{where}: {key!r} must be ASCII text of 8 characters or more")
    return RuleConfig(name=name, rights=frozenset(rights), primary_key=primary,
                      secondary_key=secondary)


def _rules(value: Any, where: str) -> tuple[RuleConfig, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise MalformedInput(f"{where}: 'authorization-rule' must be an array of tables")
    rules = tuple(_rule(t, f"{where} authorization-rule") for t in value)
    names = [r.name for r in rules]
    for name in names:
        if names.count(name) > 1:
            raise MalformedInput(f"{where}: authorization-rule {name!r} given twice")
    if len(rules) > 12:
        raise MalformedInput(f"{where}: at most 12 authorization rules per scope")
    return rules


def _hc(table: Any) -> HybridConnectionConfig:
    where = "hybrid-connection"
    if not isinstance(table, dict):
        raise MalformedInput(f"{where}: must be a table")
    name = _text(table, "name", where)
    if name is None:
        raise MalformedInput(f"{where}: 'name' is missing")
    _check_keys(table, _HC_KEYS, f"{where} {name!r}")
    if name != name.strip("/ ") or "?" in name or "#" in name or "$" in name or "//" in name:
        raise MalformedInput(f"{where} {name!r}: 'name' is not a valid entity path")
    where = f"{where} {name!r}"
    metadata = table.get("user-metadata")
    if metadata is not None and not isinstance(metadata, str):
        raise MalformedInput(f"{where}: 'user-metadata' must be a string")
    return HybridConnectionConfig(
        name=name,
        requires_client_authorization=_bool(table, "requires-client-authorization", where, True),
        user_metadata=metadata,
        rules=_rules(table.get("authorization-rule"), where),
    )


def parse_config(data: Mapping[str, Any], base_dir: Path | str = ".") -> RelayConfig:
    """Build a :class:`RelayConfig` from parsed TOML; relative paths are under ``base_dir``."""
    base = Path(base_dir)
    where = "relay config"
    _check_keys(data, _TOP_KEYS, where)
    namespace = _text(data, "namespace", where, "localhost") or "localhost"
    aliases = data.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise MalformedInput(f"{where}: 'aliases' must be a list of host names")
    endpoint = _text(data, "endpoint", where)
    state = Path(_text(data, "state", where, "relay-state.sqlite") or "relay-state.sqlite")
    if not state.is_absolute():
        state = base / state
    hcs_raw = data.get("hybrid-connection", [])
    if not isinstance(hcs_raw, list):
        raise MalformedInput(f"{where}: 'hybrid-connection' must be an array of tables")
    hcs = tuple(_hc(t) for t in hcs_raw)
    seen: set[str] = set()
    for hc in hcs:
        if hc.name.lower() in seen:
            raise MalformedInput(f"hybrid-connection {hc.name!r} given twice")
        seen.add(hc.name.lower())
    max_listeners = data.get("max-listeners", 25)
    if isinstance(max_listeners, bool) or not isinstance(max_listeners, int) or max_listeners < 1:
        raise MalformedInput(f"{where}: 'max-listeners' must be a positive integer")
    max_body = data.get("max-request-body", DEFAULT_MAX_REQUEST_BODY)
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 0:
        raise MalformedInput(f"{where}: 'max-request-body' must be a number of bytes (>= 0)")
    log_format, log_level = configfile.log_settings(data, "relay config:")
    return RelayConfig(
        namespace=namespace.lower(),
        aliases=tuple(a.lower() for a in aliases),
        endpoint=endpoint,
        state=state,
        rules=_rules(data.get("authorization-rule"), where),
        hybrid_connections=hcs,
        token_grace=_number(data, "token-grace", 5.0),
        accept_timeout=_number(data, "accept-timeout", 30.0, 0.1),
        request_timeout=_number(data, "request-timeout", 60.0, 0.1),
        max_request_body=max_body,
        max_listeners=max_listeners,
        handshake_timeout=_number(data, "handshake-timeout", 10.0, 0.1),
        close_timeout=_number(data, "close-timeout", 2.0, 0.1),
        half_close_timeout=_number(data, "half-close-timeout", 60.0, 0.1),
        ping_interval=_number(data, "ping-interval", 0.0),
        log_requests=_bool(data, "log-requests", where, False),
        metrics=_text(data, "metrics", where),
        listener_recycle=_number(data, "listener-recycle", 0.0),
        log_format=log_format,
        log_level=log_level,
    )


def load_config(path: str | Path) -> RelayConfig:
    """Read and check the relay's TOML file; :class:`MalformedInput` names the problem."""
    p = Path(path)
    return parse_config(configfile.read_toml(p, "relay config: "), p.resolve().parent)


def generate_key() -> str:
    """A fresh key: 32 random bytes, base64 (like Azure's)."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _seed(rule: RuleConfig) -> str:
    """A fingerprint of the configured keys (to notice edits to the file)."""
    text = f"{rule.primary_key or ''}\0{rule.secondary_key or ''}"
    return hashlib.sha256(text.encode()).hexdigest()


def _now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


KeyMap = dict[tuple[str, str], tuple[str, str]]


class KeyStore:
    """The SQLite state file: keys per ``(scope, rule)`` and entity timestamps.

    ``scope`` is ``""`` for namespace rules, else the HC name (lower case).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
        os.chmod(path, 0o600)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS keys (scope TEXT NOT NULL, rule TEXT NOT NULL,"
                " primary_key TEXT NOT NULL, secondary_key TEXT NOT NULL, seed TEXT NOT NULL,"
                " PRIMARY KEY (scope, rule))"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS entities (name TEXT PRIMARY KEY,"
                " created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        db.execute("PRAGMA journal_mode=DELETE")
        return db

    def signature(self) -> tuple[int, int]:
        """Changes whenever the file is written (size, mtime)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return (-1, -1)
        return (st.st_size, st.st_mtime_ns)

    def sync(self, config: RelayConfig) -> KeyMap:
        """Make the state agree with the config; return every rule's keys."""
        wanted: list[tuple[str, RuleConfig]] = [(NAMESPACE_SCOPE, r) for r in config.rules]
        for hc in config.hybrid_connections:
            wanted.extend((hc.name.lower(), r) for r in hc.rules)
        now = _now_text()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = {
                    (s, r): (p, k, seed)
                    for s, r, p, k, seed in db.execute(
                        "SELECT scope, rule, primary_key, secondary_key, seed FROM keys"
                    )
                }
                for scope, rule in wanted:
                    seed = _seed(rule)
                    row = rows.get((scope, rule.name))
                    if row is not None and (row[2] == seed or (
                        rule.primary_key is None and rule.secondary_key is None
                    )):
                        continue  # stored keys win until the file's keys change
                    primary = rule.primary_key or (row[0] if row else None) or generate_key()
                    secondary = rule.secondary_key or (row[1] if row else None) or generate_key()
                    db.execute(
                        "INSERT OR REPLACE INTO keys VALUES (?, ?, ?, ?, ?)",
                        (scope, rule.name, primary, secondary, seed),
                    )
                for hc in config.hybrid_connections:
                    db.execute(
                        "INSERT OR IGNORE INTO entities VALUES (?, ?, ?)",
                        (hc.name.lower(), now, now),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self.keys()

    def keys(self) -> KeyMap:
        with self._connect() as db:
            return {
                (s, r): (p, k)
                for s, r, p, k in db.execute(
                    "SELECT scope, rule, primary_key, secondary_key FROM keys"
                )
            }

    def timestamps(self) -> dict[str, tuple[str, str]]:
        with self._connect() as db:
            return {n: (c, u) for n, c, u in db.execute("SELECT * FROM entities")}

    def regenerate(self, scope: str, rule: str, secondary: bool = False) -> str:
        """Replace one key of a stored rule; return the new key."""
        new = generate_key()
        column = "secondary_key" if secondary else "primary_key"
        with self._connect() as db:
            cur = db.execute(
                f"UPDATE keys SET {column} = ? WHERE scope = ? AND rule = ?",  # noqa: S608
                (new, scope, rule),
            )
            if cur.rowcount != 1:
                raise MalformedInput(
                    f"no rule {rule!r} in {'the namespace' if not scope else 'hc ' + repr(scope)}"
                )
        return new


@attrs.define(eq=False)
class Entity:
    """A hybrid connection at run time (config plus timestamps)."""

    config: HybridConnectionConfig
    created_at: str
    updated_at: str

    @property
    def name(self) -> str:
        return self.config.name


@attrs.define(eq=False)
class Namespace:
    """Entities and rules with their current keys; re-reads keys when the state file changes."""

    config: RelayConfig
    store: KeyStore
    entities: dict[str, Entity]
    _keys: KeyMap
    _signature: tuple[int, int]

    @classmethod
    def open(cls, config: RelayConfig) -> Namespace:
        store = KeyStore(config.state)
        keys = store.sync(config)
        stamps = store.timestamps()
        entities = {}
        for hc in config.hybrid_connections:
            created, updated = stamps.get(hc.name.lower(), (_now_text(), _now_text()))
            entities[hc.name.lower()] = Entity(hc, created, updated)
        return cls(config, store, entities, keys, store.signature())

    @property
    def hosts(self) -> tuple[str, ...]:
        return self.config.hosts

    def refresh(self) -> None:
        """Re-read the keys if the state file changed since the last look."""
        sig = self.store.signature()
        if sig != self._signature:
            self._signature = sig
            try:
                self._keys = self.store.keys()
            except sqlite3.Error:
                self._signature = (-1, -1)  # try again next time

    def find(self, path: str) -> tuple[Entity, str] | None:
        """The entity a path (``hc[/suffix]``) names and the suffix (``""`` or ``/...``).

        Matching is case-insensitive on a ``/`` boundary; the longest name wins.
        """
        lowered = path.lower()
        best: Entity | None = None
        for name, entity in self.entities.items():
            if (lowered == name or lowered.startswith(name + "/")) and (
                best is None or len(name) > len(best.name)
            ):
                best = entity
        if best is None:
            return None
        return best, path[len(best.name):]

    def rules_for(self, entity: Entity | None) -> list[Rule]:
        """The rules that apply to an entity: its own, then the namespace's."""
        self.refresh()
        out: list[Rule] = []
        scoped: Iterable[tuple[str, RuleConfig]] = []
        if entity is not None:
            scoped = [(entity.name.lower(), r) for r in entity.config.rules]
        for scope, rc in [*scoped, *((NAMESPACE_SCOPE, r) for r in self.config.rules)]:
            keys = self._keys.get((scope, rc.name))
            if keys is None:
                continue
            out.append(Rule(name=rc.name, primary_key=keys[0], secondary_key=keys[1],
                            rights=rc.rights))
        return out

    def rule(self, name: str, hc: str | None = None) -> Rule | None:
        """One rule by name (on ``hc`` if given, else on the namespace)."""
        entity = self.entities.get(hc.lower()) if hc else None
        if hc and entity is None:
            return None
        for r in self.rules_for(entity):
            if r.name == name:
                return r
        return None
