# -*- test-case-name: tests.sender.test_config -*-
"""The sender's configuration file (``hcm-sender.toml``).

```toml
ca-certificates = "relay-ca.pem"   # or a list; relative to this file's directory
token-lifetime = 3600              # seconds a minted sender token is valid
connect-timeout = 30               # seconds for TCP + TLS + WebSocket handshake
linger = 60                        # seconds a half-closed connection may stay open
log-format = "text"                # or "json"
log-level = "info"
ping-interval = 30                 # seconds between WebSocket pings on idle connections (0: off)
proxy = "http://proxy:3128"        # optional HTTP CONNECT proxy for relay traffic ("none": direct);
                                   # default: https_proxy / no_proxy from the environment
no-proxy = ["relay.internal"]      # hosts reached directly even with `proxy`

[[hybrid-connection]]
name = "hc1"                       # defaults to the connection string's EntityPath
connection-string = "Endpoint=sb://localhost:9443/;SharedAccessKeyName=defaultSender;SharedAccessKey=...;EntityPath=hc1"
listen = "tcp:7002:interface=127.0.0.1"   # where apps connect (a Twisted endpoint string)

[[hybrid-connection]]              # DNS-name mode: no `listen`
name = "db"
connection-string = "..."
endpoint = "db.internal:1433"      # optional: else read from the HC's user metadata
address = "127.0.0.3"              # loopback address to bind on the endpoint's port;
                                   # default 127.0.0.(2 + position among DNS-mode HCs)
```

In DNS-name mode apps use the same ``host:port`` as App Service would; a hosts
file line (``hcm sender hosts``) maps the host to the HC's loopback address.

Every unknown or bad key is a :class:`MalformedInput` naming the key and the file.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import attrs

from hcm_twisted.core import configfile
from hcm_twisted.core.connstr import ConnectionString
from hcm_twisted.core.errors import MalformedInput

DEFAULT_TOKEN_LIFETIME = 3600.0
DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_LINGER = 60.0
DEFAULT_PING_INTERVAL = 30.0

_TOP_KEYS = frozenset(
    {
        "ca-certificates", "token-lifetime", "connect-timeout", "linger", "log-format",
        "log-level", "ping-interval", "proxy", "no-proxy", "hybrid-connection",
    }
)
_HC_KEYS = frozenset({"name", "connection-string", "listen", "endpoint", "address"})


@attrs.frozen(repr=False)
class SenderHc:
    """One ``[[hybrid-connection]]`` of the sender; ``repr`` never shows the key."""

    name: str
    connection_string: ConnectionString
    listen: str | None = None
    endpoint: str | None = None
    address: str | None = None

    @property
    def entity(self) -> str:
        return self.connection_string.entity_path or self.name

    @property
    def dns_mode(self) -> bool:
        return self.listen is None

    def __repr__(self) -> str:
        return (
            f"<SenderHc {self.name} {self.connection_string.masked()}"
            f" listen={self.listen!r} endpoint={self.endpoint!r} address={self.address!r}>"
        )


@attrs.frozen
class SenderConfig:
    path: Path
    hybrid_connections: tuple[SenderHc, ...]
    ca_certificates: tuple[str, ...] = ()
    token_lifetime: float = DEFAULT_TOKEN_LIFETIME
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    linger: float = DEFAULT_LINGER
    log_format: str = "text"
    log_level: str = "info"
    ping_interval: float = DEFAULT_PING_INTERVAL
    proxy: str | None = attrs.field(default=None, repr=False)  # may hold proxy credentials
    no_proxy: str | None = None





def _number(doc: dict[str, Any], key: str, default: float, where: str) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise MalformedInput(f"{where}: {key}: must be a positive number of seconds")
    return float(value)


def parse(doc: dict[str, Any], path: Path) -> SenderConfig:
    where = str(path)
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise MalformedInput(f"{where}: unknown key {sorted(unknown)[0]!r}")
    base = path.resolve().parent
    ca_paths = configfile.ca_certificate_paths(doc.get("ca-certificates", []), f"{where}:", base)
    for ca in ca_paths:
        if not Path(ca).is_file():
            raise MalformedInput(f"{where}: ca-certificates: {ca} does not exist")
    hcs_doc = doc.get("hybrid-connection", [])
    if not isinstance(hcs_doc, list) or not all(isinstance(h, dict) for h in hcs_doc):
        raise MalformedInput(f"{where}: hybrid-connection: must be [[hybrid-connection]] tables")
    if not hcs_doc:
        raise MalformedInput(f"{where}: no [[hybrid-connection]] is configured")
    hcs: list[SenderHc] = []
    names: set[str] = set()
    addresses: set[tuple[str, str]] = set()
    dns_index = 0
    for i, h in enumerate(hcs_doc, 1):
        w = f"{where}: hybrid-connection #{i}"
        unknown = set(h) - _HC_KEYS
        if unknown:
            raise MalformedInput(f"{w}: unknown key {sorted(unknown)[0]!r}")
        name, cs = configfile.hc_connection(h, w)
        if name in names:
            raise MalformedInput(f"{w}: name: {name!r} is configured twice")
        names.add(name)
        listen = h.get("listen")
        if listen is not None and (not isinstance(listen, str) or not listen.strip()):
            raise MalformedInput(f"{w}: listen: must be a Twisted endpoint string")
        endpoint = h.get("endpoint")
        if endpoint is not None:
            if not isinstance(endpoint, str):
                raise MalformedInput(f"{w}: endpoint: must be host:port")
            configfile.parse_host_port(endpoint, f"{w}: endpoint")
        address = h.get("address")
        if address is not None:
            if listen is not None:
                raise MalformedInput(f"{w}: address: only for DNS-name mode (without listen)")
            try:
                ip = ipaddress.ip_address(address if isinstance(address, str) else "")
            except ValueError:
                raise MalformedInput(f"{w}: address: must be an IP address") from None
            if not ip.is_loopback:
                raise MalformedInput(f"{w}: address: {address} is not a loopback address")
        if listen is None:
            if address is None:
                if dns_index >= 250:
                    raise MalformedInput(f"{w}: address: too many DNS-mode HCs for 127.0.0.x")
                address = f"127.0.0.{2 + dns_index}"
            dns_index += 1
            key = (address, endpoint or name)
            if key in addresses:
                raise MalformedInput(f"{w}: address: {address} is used twice")
            addresses.add(key)
        hcs.append(SenderHc(name, cs, listen, endpoint, address))
    log_format, log_level = configfile.log_settings(doc, f"{where}:")
    return SenderConfig(
        path=path,
        hybrid_connections=tuple(hcs),
        ca_certificates=ca_paths,
        token_lifetime=_number(doc, "token-lifetime", DEFAULT_TOKEN_LIFETIME, where),
        connect_timeout=_number(doc, "connect-timeout", DEFAULT_CONNECT_TIMEOUT, where),
        linger=_number(doc, "linger", DEFAULT_LINGER, where),
        log_format=log_format,
        log_level=log_level,
        ping_interval=_ping_interval(doc, where),
        proxy=configfile.proxy_setting(doc.get("proxy"), f"{where}:"),
        no_proxy=configfile.no_proxy_setting(doc.get("no-proxy"), f"{where}:"),
    )


def _ping_interval(doc: dict[str, Any], where: str) -> float:
    value = doc.get("ping-interval", DEFAULT_PING_INTERVAL)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise MalformedInput(f"{where}: ping-interval: must be a number of seconds (0: off)")
    return float(value)


def load(path: str | Path) -> SenderConfig:
    """Read and check a sender config file."""
    p = Path(path)
    return parse(configfile.read_toml(p), p)


def listen_description(hc: SenderHc, endpoint: str | None) -> str:
    """The Twisted endpoint string an HC listens on (``endpoint``: resolved host:port)."""
    if hc.listen is not None:
        return hc.listen
    if endpoint is None:
        raise MalformedInput(f"{hc.name}: no endpoint known for DNS-name mode")
    _, port = configfile.parse_host_port(endpoint, f"{hc.name}: endpoint")
    address = hc.address or "127.0.0.1"
    if ":" in address:
        return f"tcp6:{port}:interface={address.replace(':', chr(92) + ':')}"
    return f"tcp:{port}:interface={address}"
