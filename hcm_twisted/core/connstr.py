# -*- test-case-name: tests.core.test_connstr -*-
"""Azure Relay connection strings (spec section 2).

``Endpoint=sb://{ns}/;SharedAccessKeyName={rule};SharedAccessKey={key};EntityPath={hc}``
"""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs

from hcm_twisted.core.errors import MalformedInput

_KNOWN = {
    "endpoint": "endpoint",
    "entitypath": "entity_path",
    "sharedaccesskeyname": "key_name",
    "sharedaccesskey": "key",
    "sharedaccesssignature": "sas",
    "operationtimeout": "operation_timeout",
    "authentication": "authentication",
}


@attrs.frozen(repr=False)
class ConnectionString:
    """A parsed connection string.  ``repr`` and ``masked()`` never show the key."""

    endpoint: str
    host: str
    port: int
    entity_path: str | None = None
    key_name: str | None = None
    key: str | None = None
    sas: str | None = None
    operation_timeout: str | None = None

    @property
    def namespace(self) -> str:
        """The namespace host, with ``:port`` when it is not 443."""
        if self.port == 443:
            return self.host
        return f"{_bracket(self.host)}:{self.port}"

    def with_entity(self, name: str) -> ConnectionString:
        return attrs.evolve(self, entity_path=name)

    def token(self, lifetime: float, now: float) -> str | None:
        """The token this connection string gives: its ``SharedAccessSignature``, else one
        signed with its key for its entity (``lifetime`` seconds from ``now``); ``None``
        without either (an anonymous sender)."""
        if self.sas is not None:
            return self.sas
        if not self.key or not self.key_name:
            return None
        from hcm_twisted.core import sas

        audience = sas.audience_for(self.host, self.entity_path)
        return sas.mint(audience, self.key_name, self.key, lifetime=lifetime, now=now)

    def __repr__(self) -> str:
        return f"<ConnectionString {self.masked()}>"

    def masked(self) -> str:
        """The connection string with the key or signature replaced by ``***``."""
        return self.render(mask=True)

    def render(self, mask: bool = False) -> str:
        parts = [f"Endpoint={self.endpoint}"]
        if self.key_name is not None:
            parts.append(f"SharedAccessKeyName={self.key_name}")
        if self.key is not None:
            parts.append(f"SharedAccessKey={'***' if mask else self.key}")
        if self.sas is not None:
            parts.append(f"SharedAccessSignature={'***' if mask else self.sas}")
        if self.entity_path is not None:
            parts.append(f"EntityPath={self.entity_path}")
        if self.operation_timeout is not None:
            parts.append(f"OperationTimeout={self.operation_timeout}")
        return ";".join(parts)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse(text: str) -> ConnectionString:
    """Parse a connection string; raise :class:`MalformedInput` naming the problem.

    Pieces are split on ``;`` (empty ones dropped) and at the first ``=``; key
    names are case-insensitive and values verbatim.  Unknown keys are ignored.
    """
    if not isinstance(text, str):
        raise MalformedInput("connection string: must be text")
    values: dict[str, str] = {}
    for index, piece in enumerate(text.strip().split(";"), 1):
        if not piece.strip():
            continue
        if "=" not in piece:
            # The piece itself is not shown: it may be a pasted key.
            raise MalformedInput(f"connection string: piece {index} has no '='")
        name, value = piece.split("=", 1)
        field = _KNOWN.get(name.strip().lower())
        if field is None:
            continue
        if field in values:
            raise MalformedInput(f"connection string: {name.strip()} given twice")
        values[field] = value
    endpoint = values.pop("endpoint", None)
    if not endpoint:
        raise MalformedInput("connection string: Endpoint is missing")
    values.pop("authentication", None)
    try:
        parts = urlsplit(endpoint.strip())
        port = parts.port
    except ValueError as e:
        raise MalformedInput(f"connection string: Endpoint {endpoint!r} is not a URI ({e})") from None
    if parts.scheme.lower() not in ("sb", "https", "wss", "http", "ws") or not parts.hostname:
        raise MalformedInput(
            f"connection string: Endpoint {endpoint!r} is not an absolute sb:// URI"
        )
    host = parts.hostname.lower()
    if port is None:
        port = 443
    if ("key_name" in values) != ("key" in values):
        raise MalformedInput(
            "connection string: SharedAccessKeyName and SharedAccessKey must come together"
        )
    if "sas" in values and "key" in values:
        raise MalformedInput(
            "connection string: SharedAccessSignature cannot be combined with a key"
        )
    if "key" in values and not values["key"]:
        raise MalformedInput("connection string: SharedAccessKey is empty")
    if "key_name" in values and not values["key_name"]:
        raise MalformedInput("connection string: SharedAccessKeyName is empty")
    entity = values.get("entity_path")
    path = parts.path.strip("/")
    if entity is not None:
        entity = entity.strip("/")
        if path:
            entity = f"{path}/{entity}"
    elif path:
        entity = path
    if entity is not None and not entity:
        raise MalformedInput("connection string: EntityPath is empty")
    values["entity_path"] = entity  # type: ignore[assignment]
    return ConnectionString(endpoint=endpoint, host=host, port=port, **values)  # type: ignore[arg-type]


def build(
    namespace: str, entity: str, key_name: str, key: str, port: int | None = None
) -> ConnectionString:
    """A connection string for ``namespace`` (a host, optionally ``host:port``)."""
    if port is not None and port != 443:
        namespace = f"{_bracket(namespace)}:{port}"
    return parse(
        f"Endpoint=sb://{namespace}/;SharedAccessKeyName={key_name};"
        f"SharedAccessKey={key};EntityPath={entity}"
    )
