# -*- test-case-name: tests.core.test_configfile -*-
"""Reading the programs' TOML config files, with errors that name the file and the problem."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from hcm_twisted.core import connstr
from hcm_twisted.core.connstr import ConnectionString
from hcm_twisted.core.errors import MalformedInput


def read_toml(path: str | Path, label: str = "", missing_ok: bool = False) -> dict[str, Any]:
    """The TOML document in ``path``; ``{}`` for a missing file when ``missing_ok``.

    Every failure is a :class:`MalformedInput` that starts with ``label`` (for example
    ``"relay config: "``) and the file's path, and says what is wrong: missing, unreadable,
    not UTF-8, or not valid TOML (with the line and column TOML reports).
    """
    p = Path(path)
    where = f"{label}{p}"
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise MalformedInput(f"{where}: no such config file") from None
    except OSError as e:
        raise MalformedInput(f"{where}: cannot read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedInput(f"{where}: not UTF-8 text") from None
    return loads(text, where)


def loads(text: str, where: str) -> dict[str, Any]:
    """Parse TOML text; ``where`` names its origin in the error."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise MalformedInput(f"{where}: not valid TOML ({e})") from None


#: A hybrid connection's name in the agent's and the sender's configs.
HC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,259}$")


def parse_host_port(text: str, what: str = "endpoint") -> tuple[str, int]:
    """``"host:port"`` (IPv6 in brackets) to ``(host, port)``; :class:`MalformedInput`
    naming ``what`` and what is wrong otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise MalformedInput(f"{what}: must be 'host:port'")
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise MalformedInput(f"{what}: {text!r} is not '[v6-address]:port'")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise MalformedInput(f"{what}: {text!r} is not 'host:port'")
    if not host or any(c.isspace() or c in "/?#@" for c in host):
        raise MalformedInput(f"{what}: {text!r} has no valid host")
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise MalformedInput(f"{what}: {text!r} has no valid port (1-65535)")
    return host, int(port_text)


def proxy_setting(value: Any, where: str) -> str | None:
    """The ``proxy`` key: an ``http://`` proxy URL, or ``"none"``/``"direct"``/empty."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedInput(f"{where} proxy: must be an http:// URL or \"none\"")
    if value.strip().lower() not in ("", "none", "direct"):
        from hcm_twisted.core import proxy as proxymod

        try:
            proxymod.parse_proxy_url(value, "proxy")
        except MalformedInput as e:
            raise MalformedInput(f"{where} {e}") from None
    return value


def no_proxy_setting(value: Any, where: str) -> str | None:
    """The ``no-proxy`` key: a list of hosts or a comma-separated string."""
    if isinstance(value, list) and all(isinstance(n, str) for n in value):
        value = ",".join(n.strip() for n in value)
    if value is not None and not isinstance(value, str):
        raise MalformedInput(
            f"{where} no-proxy: must be a list of hosts or a comma-separated string")
    return value


def ca_certificate_paths(value: Any, where: str, base: Path) -> tuple[str, ...]:
    """The ``ca-certificates`` key (a path or a list of paths), resolved against ``base``."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
        raise MalformedInput(f"{where} ca-certificates: must be a path or a list of paths")
    return tuple(str((base / os.path.expanduser(c)).resolve()) for c in value)


def log_settings(table: Any, where: str) -> tuple[str, str]:
    """``log-format`` and ``log-level`` of a config table, checked: ``("text"|"json",
    level name)``; ``"warning"`` is taken for ``"warn"``."""
    from hcm_twisted.core import logging as hcm_logging

    fmt = table.get("log-format", "text")
    level = table.get("log-level", "info")
    if not isinstance(fmt, str):
        raise MalformedInput(f"{where} log-format: must be one of "
                             f"{', '.join(hcm_logging.LOG_FORMATS)}")
    hcm_logging.check_format(fmt, f"{where} log-format")
    return fmt, hcm_logging.parse_level(level, f"{where} log-level").name


def hc_connection(item: Any, label: str) -> tuple[str, ConnectionString]:
    """A ``[[hybrid-connection]]`` table's name and connection string (``connection-string``
    required; the name defaults to its EntityPath, which defaults to the name)."""

    def bad(text: str) -> MalformedInput:
        return MalformedInput(f"{label}: {text}" if label else text)

    text = item.get("connection-string")
    if not isinstance(text, str) or not text.strip():
        raise bad("connection-string: missing or not text")
    try:
        cs = connstr.parse(text)
    except MalformedInput as e:
        raise bad(f"connection-string: {str(e).removeprefix('connection string: ')}") from None
    name = item.get("name", cs.entity_path)
    if name is None:
        raise bad("name: missing (and the connection string has no EntityPath)")
    if not isinstance(name, str) or not HC_NAME.match(name):
        raise bad(f"name: {name!r} is not a valid name (letters, digits, '.', '_', '-', '/')")
    if cs.entity_path is None:
        cs = cs.with_entity(name)
    return name, cs
