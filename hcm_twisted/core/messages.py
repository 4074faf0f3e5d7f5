# -*- test-case-name: tests.core.test_messages -*-
"""Control-channel messages (spec sections 4 to 7) as frozen values.

Parsing is tolerant: unknown fields and unknown message types are ignored,
numeric strings are accepted where numbers are expected.  Anything else that
is wrong raises :class:`MalformedInput`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs

from hcm_twisted.core.errors import MalformedInput

MAX_CONTROL_MESSAGE = 64 * 1024


@attrs.frozen
class RemoteEndpoint:
    address: str
    port: int

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "port": self.port}


@attrs.frozen
class Accept:
    """``{"accept": {...}}``: the relay offers a sender's connection."""

    address: str
    id: str
    connect_headers: dict[str, str] = attrs.field(factory=dict, hash=False)
    remote_endpoint: RemoteEndpoint | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "address": self.address,
            "id": self.id,
            "connectHeaders": dict(self.connect_headers),
        }
        if self.remote_endpoint is not None:
            body["remoteEndpoint"] = self.remote_endpoint.to_json()
        return {"accept": body}


@attrs.frozen
class Request:
    """``{"request": {...}}``: an HTTP request (or a rendezvous-only stub)."""

    address: str
    id: str
    request_target: str | None = None
    method: str | None = None
    request_headers: dict[str, str] = attrs.field(factory=dict, hash=False)
    body: bool = False
    remote_endpoint: RemoteEndpoint | None = None

    @property
    def rendezvous_only(self) -> bool:
        return self.method is None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"address": self.address, "id": self.id}
        if self.method is not None:
            body["requestTarget"] = "/" if self.request_target is None else self.request_target
            body["method"] = self.method
            if self.remote_endpoint is not None:
                body["remoteEndpoint"] = self.remote_endpoint.to_json()
            body["requestHeaders"] = dict(self.request_headers)
            body["body"] = self.body
        return {"request": body}


@attrs.frozen
class Response:
    """``{"response": {...}}``: the listener answers a request."""

    request_id: str
    status_code: int
    status_description: str | None = None
    response_headers: dict[str, str] = attrs.field(factory=dict, hash=False)
    body: bool = False

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "requestId": self.request_id,
            "statusCode": self.status_code,
        }
        if self.status_description is not None:
            body["statusDescription"] = self.status_description
        body["responseHeaders"] = dict(self.response_headers)
        body["body"] = self.body
        return {"response": body}


@attrs.frozen(repr=False)
class RenewToken:
    """``{"renewToken": {"token": ...}}``: the listener renews its channel."""

    token: str

    def __repr__(self) -> str:
        return "<RenewToken>"

    def to_json(self) -> dict[str, Any]:
        return {"renewToken": {"token": self.token}}


@attrs.frozen
class Unknown:
    """A message type we do not know; callers log and skip it."""

    kind: str


Message = Accept | Request | Response | RenewToken | Unknown


def encode(message: Accept | Request | Response | RenewToken) -> str:
    """The JSON text of a message (compact)."""
    return json.dumps(message.to_json(), separators=(",", ":"))


def _str(obj: dict[str, Any], name: str, what: str, required: bool = True) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise MalformedInput(f"{what}: field {name!r} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise MalformedInput(f"{what}: field {name!r} must be a string")
    return str(value)


def _int(obj: dict[str, Any], name: str, what: str) -> int:
    value = obj.get(name)
    if value is None:
        raise MalformedInput(f"{what}: field {name!r} is missing")
    if isinstance(value, bool):
        raise MalformedInput(f"{what}: field {name!r} must be a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit() and len(value) < 20:
        return int(value.strip())
    raise MalformedInput(f"{what}: field {name!r} must be a number")


def _bool(obj: dict[str, Any], name: str, what: str, default: bool = False) -> bool:
    value = obj.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, int):
        return bool(value)
    raise MalformedInput(f"{what}: field {name!r} must be true or false")


def _headers(obj: dict[str, Any], name: str, what: str) -> dict[str, str]:
    value = obj.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedInput(f"{what}: field {name!r} must be an object")
    out: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, list):
            v = ", ".join(str(x) for x in v)
        elif isinstance(v, dict) or v is None:
            raise MalformedInput(f"{what}: header {k[:40]!r} must be a string")
        out[str(k)] = v if isinstance(v, str) else json.dumps(v)
    return out


def _remote(obj: dict[str, Any], what: str) -> RemoteEndpoint | None:
    value = obj.get("remoteEndpoint")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MalformedInput(f"{what}: field 'remoteEndpoint' must be an object")
    try:
        return RemoteEndpoint(
            address=_str(value, "address", what) or "",
            port=_int(value, "port", what + ".remoteEndpoint"),
        )
    except MalformedInput:
        return None


def parse(data: str | bytes) -> Message:
    """Parse one control message; raise :class:`MalformedInput` if malformed."""
    if isinstance(data, bytes):
        if len(data) > MAX_CONTROL_MESSAGE:
            raise MalformedInput("control message: larger than 64 kB")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedInput("control message: not UTF-8") from None
    if len(data) > MAX_CONTROL_MESSAGE:
        raise MalformedInput("control message: larger than 64 kB")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        raise MalformedInput("control message: not JSON") from None
    if not isinstance(obj, dict) or not obj:
        raise MalformedInput("control message: not a JSON object with one member")
    for kind, body in obj.items():
        if kind not in _PARSERS:
            continue
        if not isinstance(body, dict):
            raise MalformedInput(f"{kind}: must be an object")
        return _PARSERS[kind](body)
    return Unknown(kind=next(iter(obj))[:64])


def _parse_accept(b: dict[str, Any]) -> Accept:
    return Accept(
        address=_str(b, "address", "accept") or "",
        id=_str(b, "id", "accept") or "",
        connect_headers=_headers(b, "connectHeaders", "accept"),
        remote_endpoint=_remote(b, "accept"),
    )


def _parse_request(b: dict[str, Any]) -> Request:
    method = _str(b, "method", "request", required=False)
    return Request(
        address=_str(b, "address", "request") or "",
        id=_str(b, "id", "request") or "",
        request_target=_str(b, "requestTarget", "request", required=False),
        method=method,
        request_headers=_headers(b, "requestHeaders", "request"),
        body=_bool(b, "body", "request"),
        remote_endpoint=_remote(b, "request"),
    )


def _parse_response(b: dict[str, Any]) -> Response:
    code = _int(b, "statusCode", "response")
    if not 100 <= code <= 999:
        raise MalformedInput("response: field 'statusCode' is out of range")
    return Response(
        request_id=_str(b, "requestId", "response") or "",
        status_code=code,
        status_description=_str(b, "statusDescription", "response", required=False),
        response_headers=_headers(b, "responseHeaders", "response"),
        body=_bool(b, "body", "response"),
    )


def _parse_renew(b: dict[str, Any]) -> RenewToken:
    return RenewToken(token=_str(b, "token", "renewToken") or "")


_PARSERS: dict[str, Callable[[dict[str, Any]], Message]] = {
    "accept": _parse_accept,
    "request": _parse_request,
    "response": _parse_response,
    "renewToken": _parse_renew,
}
