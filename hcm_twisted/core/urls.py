# -*- test-case-name: tests.core.test_urls -*-
"""Relay addresses (spec section 1)."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from hcm_twisted.core.connstr import ConnectionString


def _host_port(cs: ConnectionString) -> str:
    host = f"[{cs.host}]" if ":" in cs.host else cs.host
    return host if cs.port == 443 else f"{host}:{cs.port}"


def listen_url(cs: ConnectionString, id: str | None = None) -> str:
    """``wss://{ns}/$hc/{hc}?sb-hc-action=listen[&sb-hc-id=..]``."""
    query = [("sb-hc-action", "listen")]
    if id:
        query.append(("sb-hc-id", id))
    return f"wss://{_host_port(cs)}/$hc/{quote(cs.entity_path or '')}?{urlencode(query)}"


def connect_url(
    cs: ConnectionString, id: str | None = None, suffix: str = "", token: str | None = None
) -> str:
    """``wss://{ns}/$hc/{hc}[/suffix]?sb-hc-action=connect[...]``."""
    query = [("sb-hc-action", "connect")]
    if id:
        query.append(("sb-hc-id", id))
    if token:
        query.append(("sb-hc-token", token))
    path = quote(cs.entity_path or "")
    if suffix:
        path += "/" + suffix.lstrip("/")
    return f"wss://{_host_port(cs)}/$hc/{path}?{urlencode(query)}"


def runtime_url(cs: ConnectionString) -> str:
    """``https://{ns}/{hc}?api-version=2016-07`` (spec section 9)."""
    return f"https://{_host_port(cs)}/{quote(cs.entity_path or '')}?api-version=2016-07"


def reject_url(address: str, status: int, description: str) -> str:
    """The accept address with the reject parameters appended (spec section 5)."""
    sep = "&" if "?" in address else "?"
    return (
        f"{address}{sep}sb-hc-statusCode={int(status)}"
        f"&sb-hc-statusDescription={quote(description, safe='')}"
    )


def strip_relay_params(query: str) -> str:
    """Remove the ``sb-hc-*`` parameters (those with ``=``) from a raw query string, keeping
    the rest byte-for-byte: what the relay passes on to a listener."""
    return "&".join(
        p for p in query.split("&") if p and not (p.lower().startswith("sb-hc-") and "=" in p)
    )


def query_params(url: str) -> dict[str, str]:
    """The decoded query parameters of a URL (last one wins), keys lower-cased."""
    return {k.lower(): v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)}


def split_ws_url(url: str) -> tuple[bool, str, int, str]:
    """``(secure, host, port, resource)`` for a ws:// or wss:// URL."""
    parts = urlsplit(url)
    secure = parts.scheme.lower() in ("wss", "https")
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    resource = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return secure, host, port, resource
