# -*- test-case-name: tests.agent.test_config -*-
"""The agent's configuration file (``hcm.toml``).

```toml
[agent]
workers = 0                      # 0 = one per CPU core
admin = "unix:/run/hcm/admin.sock:mode=600"
token-lifetime = 3600
ca-certificates = "relay-ca.pem" # or a list; relative to this file's directory
ping-interval = 30
drain-timeout = 30
log-format = "text"              # or "json"
log-level = "info"               # debug, info, warn, error, critical
proxy = "http://proxy:3128"      # optional HTTP CONNECT proxy for relay traffic ("none": direct);
                                 # default: https_proxy / no_proxy from the environment
no-proxy = ["relay.internal"]    # hosts reached directly even with `proxy`

[[hybrid-connection]]
name = "hc1"                     # defaults to the connection string's EntityPath
connection-string = "Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...;EntityPath=hc1"
endpoint = "127.0.0.1:7001"      # optional; else read from the HC's user metadata
```

Every unknown or bad key is a :class:`MalformedInput` naming the key and the
file.  :func:`load` gives a frozen :class:`AgentConfig`; the CLI edits the raw
document (:func:`read_document`, :func:`write_document`), which is validated
before it is written atomically with mode 0600.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import tomli_w

from hcm_twisted.core import configfile, connstr
from hcm_twisted.core.connstr import ConnectionString
from hcm_twisted.core.errors import MalformedInput

DEFAULT_CONFIG_PATH = "/etc/hcm/hcm.toml"

DEFAULT_TOKEN_LIFETIME = 3600.0
DEFAULT_PING_INTERVAL = 30.0
DEFAULT_DRAIN_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 20.0

_AGENT_KEYS = frozenset(
    {
        "workers",
        "admin",
        "token-lifetime",
        "ca-certificates",
        "ping-interval",
        "drain-timeout",
        "log-format",
        "log-level",
        "proxy",
        "no-proxy",
    }
)
_HC_KEYS = frozenset({"name", "connection-string", "endpoint"})
_TOP_KEYS = frozenset({"agent", "hybrid-connection"})


@attrs.frozen(repr=False)
class HybridConnectionConfig:
    """One ``[[hybrid-connection]]``; ``repr`` never shows the key."""

    name: str
    connection_string: ConnectionString
    endpoint: str | None = None

    @property
    def entity(self) -> str:
        """The HC path on the relay (EntityPath)."""
        return self.connection_string.entity_path or self.name

    def __repr__(self) -> str:
        return (
            f"<HybridConnectionConfig {self.name} {self.connection_string.masked()}"
            f" endpoint={self.endpoint}>"
        )

    def to_document(self) -> dict[str, str]:
        """The TOML table for this HC (with the key: for the config file only)."""
        doc = {"name": self.name, "connection-string": self.connection_string.render()}
        if self.endpoint is not None:
            doc["endpoint"] = self.endpoint
        return doc


@attrs.frozen
class AgentConfig:
    """The whole agent configuration, paths made absolute."""

    path: Path
    admin: str
    workers: int = 0
    token_lifetime: float = DEFAULT_TOKEN_LIFETIME
    ca_certificates: tuple[str, ...] = ()
    ping_interval: float = DEFAULT_PING_INTERVAL
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    log_format: str = "text"
    log_level: str = "info"
    proxy: str | None = attrs.field(default=None, repr=False)  # may hold proxy credentials
    no_proxy: str | None = None
    hybrid_connections: tuple[HybridConnectionConfig, ...] = ()

    def worker_count(self) -> int:
        """``workers``, with 0 meaning one per usable CPU core."""
        if self.workers:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):  # pragma: no cover (not Linux)
            return max(1, os.cpu_count() or 1)

    def get(self, name: str) -> HybridConnectionConfig | None:
        for hc in self.hybrid_connections:
            if hc.name == name:
                return hc
        return None


def default_admin(config_path: Path) -> str:
    """A unix socket next to the config file, mode 0600."""
    sock = config_path.resolve().parent / (config_path.stem + ".sock")
    return f"unix:{escape_endpoint_value(str(sock))}:mode=600"


def escape_endpoint_value(value: str) -> str:
    """Escape ``\\`` and ``:`` for a Twisted endpoint string."""
    return value.replace("\\", "\\\\").replace(":", "\\:")





def _where(path: Path) -> str:
    return str(path)


def _number(
    table: Mapping[str, Any], key: str, default: float, where: str, minimum: float,
    maximum: float, integer: bool = False,
) -> Any:
    if key not in table:
        return default
    value = table[key]
    ok = isinstance(value, int) or (not integer and isinstance(value, float))
    if isinstance(value, bool) or not ok:
        kind = "an integer" if integer else "a number"
        raise MalformedInput(f"{where}: [agent] {key}: must be {kind}")
    if not minimum <= value <= maximum:
        raise MalformedInput(f"{where}: [agent] {key}: must be between {minimum:g} and {maximum:g}")
    return value if integer else float(value)


def _join(label: str, text: str) -> str:
    return f"{label}: {text}" if label else text


def _parse_hc(item: Any, label: str, where: str = "") -> HybridConnectionConfig:
    if not isinstance(item, dict):
        raise MalformedInput(_join(label, "must be a table"))
    for key in item:
        if key not in _HC_KEYS:
            raise MalformedInput(_join(label, f"unknown key {key!r}"))
    name, cs = configfile.hc_connection(item, label)
    if cs.key is None and cs.sas is None:
        raise MalformedInput(
            _join(
                label,
                "connection-string: needs SharedAccessKeyName/SharedAccessKey"
                " or SharedAccessSignature",
            )
        )
    if where:
        label = f"{where}: [[hybrid-connection]] {name!r}"
    endpoint = item.get("endpoint")
    if endpoint is not None:
        try:
            configfile.parse_host_port(endpoint)
        except MalformedInput as e:
            raise MalformedInput(_join(label, str(e))) from None
        endpoint = endpoint.strip()
    return HybridConnectionConfig(name=name, connection_string=cs, endpoint=endpoint)


def parse_document(doc: Mapping[str, Any], path: Path) -> AgentConfig:
    """Validate a parsed TOML document."""
    where = _where(path)
    for key in doc:
        if key not in _TOP_KEYS:
            raise MalformedInput(f"{where}: unknown key {key!r} (expected [agent] or [[hybrid-connection]])")
    agent = doc.get("agent", {})
    if not isinstance(agent, dict):
        raise MalformedInput(f"{where}: agent: must be a table ([agent])")
    for key in agent:
        if key not in _AGENT_KEYS:
            raise MalformedInput(f"{where}: [agent]: unknown key {key!r}")
    workers = _number(agent, "workers", 0, where, 0, 1024, integer=True)
    token_lifetime = _number(agent, "token-lifetime", DEFAULT_TOKEN_LIFETIME, where, 5, 7 * 86400)
    ping_interval = _number(agent, "ping-interval", DEFAULT_PING_INTERVAL, where, 1, 3600)
    drain_timeout = _number(agent, "drain-timeout", DEFAULT_DRAIN_TIMEOUT, where, 0, 3600)
    admin = agent.get("admin")
    if admin is None:
        admin = default_admin(path)
    elif not isinstance(admin, str) or not admin.strip() or ":" not in admin:
        raise MalformedInput(
            f"{where}: [agent] admin: must be a Twisted endpoint string like 'unix:/run/hcm/admin.sock:mode=600'"
        )
    log_format, log_level = configfile.log_settings(agent, f"{where}: [agent]")
    proxy_url = configfile.proxy_setting(agent.get("proxy"), f"{where}: [agent]")
    no_proxy = configfile.no_proxy_setting(agent.get("no-proxy"), f"{where}: [agent]")
    ca_paths = configfile.ca_certificate_paths(
        agent.get("ca-certificates", []), f"{where}: [agent]", path.resolve().parent)

    items = doc.get("hybrid-connection", [])
    if not isinstance(items, list):
        raise MalformedInput(f"{where}: hybrid-connection: must be an array of tables ([[hybrid-connection]])")
    hcs: list[HybridConnectionConfig] = []
    seen: set[str] = set()
    for index, item in enumerate(items, 1):
        hc = _parse_hc(item, f"{where}: [[hybrid-connection]] #{index}", where)
        if hc.name in seen:
            raise MalformedInput(f"{where}: [[hybrid-connection]] #{index}: name {hc.name!r} is used twice")
        seen.add(hc.name)
        hcs.append(hc)
    return AgentConfig(
        path=path,
        admin=admin.strip(),
        workers=workers,
        token_lifetime=token_lifetime,
        ca_certificates=ca_paths,
        ping_interval=ping_interval,
        drain_timeout=drain_timeout,
        log_format=log_format,
        log_level=log_level,
        proxy=proxy_url,
        no_proxy=no_proxy,
        hybrid_connections=tuple(hcs),
    )


def parse_text(text: str, path: Path) -> AgentConfig:
    return parse_document(_loads(text, path), path)


def _loads(text: str, path: Path) -> dict[str, Any]:
    return configfile.loads(text, _where(path))


def read_document(path: str | Path, missing_ok: bool = False) -> dict[str, Any]:
    """The raw TOML document; ``{}`` for a missing file when ``missing_ok``."""
    return configfile.read_toml(path, missing_ok=missing_ok)


def load(path: str | Path) -> AgentConfig:
    """Read and validate the config file."""
    p = Path(path)
    return parse_document(read_document(p), p)


def write_document(path: str | Path, doc: Mapping[str, Any]) -> AgentConfig:
    """Validate ``doc`` and write it atomically (temp file, fsync, rename), mode 0600.

    A replaced file keeps its owner and group.  On any error the old file is
    left as it was.
    """
    p = Path(path)
    text = tomli_w.dumps(dict(doc))
    config = parse_text(text, p)
    directory = p.parent if str(p.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        old = os.stat(p)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=directory)
    try:
        # Always 0600.  A replaced file keeps its owner and group: root editing the
        # agent's file must not take it away from the agent.
        os.fchmod(fd, 0o600)
        if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            try:
                os.fchown(fd, old.st_uid, old.st_gid)
            except PermissionError:
                pass  # not root: the file becomes ours, as any editor would leave it
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover (some filesystems refuse a directory fsync)
        pass
    return config


def with_hybrid_connection(
    doc: Mapping[str, Any], hc: HybridConnectionConfig, replace: bool = False
) -> dict[str, Any]:
    """A copy of ``doc`` with ``hc`` appended, or put in place of the HC of that name when
    ``replace`` (a new key, connection string or endpoint); :class:`MalformedInput` if the
    name is taken and ``replace`` is false, or missing and ``replace`` is true."""
    items = list(doc.get("hybrid-connection", []))
    index = next(
        (i for i, item in enumerate(items) if isinstance(item, dict) and _item_name(item) == hc.name),
        None,
    )
    if index is not None and not replace:
        raise MalformedInput(
            f"hybrid connection {hc.name!r} already exists (--replace changes it)"
        )
    if index is None and replace:
        raise MalformedInput(f"no hybrid connection named {hc.name!r} to replace")
    out = dict(doc)
    if index is None:
        out["hybrid-connection"] = [*items, hc.to_document()]
    else:
        items[index] = hc.to_document()
        out["hybrid-connection"] = items
    return out


def without_hybrid_connection(doc: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A copy of ``doc`` without HC ``name``; :class:`MalformedInput` if there is none."""
    items = list(doc.get("hybrid-connection", []))
    kept = [i for i in items if not (isinstance(i, dict) and _item_name(i) == name)]
    if len(kept) == len(items):
        raise MalformedInput(f"no hybrid connection named {name!r}")
    out = dict(doc)
    if kept:
        out["hybrid-connection"] = kept
    else:
        out.pop("hybrid-connection", None)
    return out


def _item_name(item: Mapping[str, Any]) -> str | None:
    name = item.get("name")
    if isinstance(name, str):
        return name
    try:
        return connstr.parse(item.get("connection-string", "")).entity_path
    except MalformedInput:
        return None


def make_hybrid_connection(
    connection_string: str | ConnectionString,
    name: str | None = None,
    endpoint: str | None = None,
) -> HybridConnectionConfig:
    """Build and validate one HC the way the config file would."""
    cs = connection_string if isinstance(connection_string, ConnectionString) else None
    item: dict[str, Any] = {
        "connection-string": cs.render() if cs is not None else connection_string
    }
    if name is not None:
        item["name"] = name
    if endpoint is not None:
        item["endpoint"] = endpoint
    return _parse_hc(item, "")
