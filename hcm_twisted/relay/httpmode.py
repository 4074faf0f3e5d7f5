# -*- test-case-name: tests.relay.test_httpmode -*-
"""HTTP side of the relay: HTTP senders (spec section 7) and the runtime GET (section 9)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from hcm_twisted.core import messages
from hcm_twisted.core.sas import TokenRejected
from hcm_twisted.relay.auth import authorize_any, find_token

if TYPE_CHECKING:
    from hcm_twisted.relay.namespace import Entity
    from hcm_twisted.relay.server import Hub, RelayProtocol

ATOM_TYPE = b"application/atom+xml;type=entry;charset=utf-8"


def runtime_entry(entity: Entity, listener_count: int) -> bytes:
    """The Atom entry of a HybridConnectionDescription (spec section 9; element order matters)."""
    cfg = entity.config
    metadata = (
        f"<UserMetadata>{escape(cfg.user_metadata)}</UserMetadata>"
        if cfg.user_metadata is not None else ""
    )
    text = (
        '<entry xmlns="http://www.w3.org/2005/Atom">'
        f'<title type="text">{escape(entity.name)}</title>'
        '<content type="application/xml">'
        '<HybridConnectionDescription'
        ' xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect"'
        ' xmlns:i="http://www.w3.org/2001/XMLSchema-instance">'
        f"<CreatedAt>{entity.created_at}</CreatedAt>"
        f"<UpdatedAt>{entity.updated_at}</UpdatedAt>"
        "<RequiresClientAuthorization>"
        f"{'true' if cfg.requires_client_authorization else 'false'}"
        "</RequiresClientAuthorization>"
        f"{metadata}"
        f"<ListenerCount>{listener_count}</ListenerCount>"
        "</HybridConnectionDescription></content></entry>"
    )
    return text.encode("utf-8")


def error_xml(code: int, detail: str) -> bytes:
    return (
        f"<Error><Code>{code}</Code><Detail>{escape(detail)}</Detail></Error>"
    ).encode()


class HttpMode:
    """HTTP senders relayed to listeners as ``request`` messages."""

    _log = Logger()

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    # Hooks called by RelayProtocol (filled in by the HTTP-mode implementation).
    def on_rendezvous(self, proto: RelayProtocol, rid: str, params: dict[str, str]) -> Any:
        from hcm_twisted.relay.server import deny

        raise deny(403, "The rendezvous address is invalid or has expired.")

    def on_rendezvous_open(self, proto: RelayProtocol) -> None:
        pass

    def on_rendezvous_gone(self, proto: RelayProtocol) -> None:
        pass

    def rendezvous_message_limit(self, proto: RelayProtocol, binary: bool) -> int:
        return 0 if binary else messages.MAX_CONTROL_MESSAGE

    def on_rendezvous_data(self, proto: RelayProtocol, payload: bytes) -> bool:
        return False

    def on_rendezvous_message(self, proto: RelayProtocol, data: bytes, binary: bool) -> None:
        pass

    def on_binary(self, proto: RelayProtocol, data: bytes) -> bool:
        return False

    def on_response(self, proto: RelayProtocol, response: messages.Response) -> None:
        pass

    def on_listener_gone(self, proto: RelayProtocol) -> None:
        pass

    def handle(self, request: Request, entity: Entity, suffix: str) -> bytes | int:
        request.setResponseCode(502, b"Bad Gateway")
        return b""


class RootResource(Resource):
    """Every HTTP request: ``/$hc/...`` without upgrade, runtime GET, HTTP senders."""

    isLeaf = True
    _log = Logger()

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub

    def render(self, request: Request) -> bytes | int:
        from hcm_twisted.relay.server import NOT_FOUND, split_hc_path

        set_nodelay_request(request)
        raw = (request.uri or b"/").decode("latin-1")
        path, _, query = raw.partition("?")
        if split_hc_path(path) is not None or path.lower() in ("/$hc", "/%24hc"):
            request.setResponseCode(400, b"This endpoint is only for web-socket requests")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"This endpoint is only for web-socket requests.\n"
        from urllib.parse import parse_qsl, unquote

        found = self.hub.namespace.find(unquote(path.lstrip("/")))
        if found is None:
            request.setResponseCode(404, b"Not Found")
            request.setHeader(b"content-type", b"application/xml; charset=utf-8")
            return error_xml(404, NOT_FOUND)
        entity, suffix = found
        params = {k.lower(): v for k, v in parse_qsl(query, keep_blank_values=True)}
        if (
            request.method == b"GET" and "api-version" in params and not suffix.strip("/")
        ):
            return self._runtime_get(request, entity, params)
        assert self.hub.http is not None
        return self.hub.http.handle(request, entity, suffix)

    def _runtime_get(self, request: Request, entity: Entity, params: dict[str, str]) -> bytes:
        headers = {
            k.decode("latin-1").lower(): v[-1].decode("latin-1")
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        token, _ = find_token(params, headers, http=True)
        try:
            authorize_any(self.hub.namespace, entity, token)
        except TokenRejected as e:
            request.setResponseCode(e.status, e.reason.encode("latin-1", "replace")[:200])
            request.setHeader(b"content-type", b"application/xml; charset=utf-8")
            return error_xml(e.status, e.reason)
        request.setHeader(b"content-type", ATOM_TYPE)
        return runtime_entry(entity, len(self.hub.live_listeners(entity)))


def set_nodelay_request(request: Request) -> None:
    from hcm_twisted.relay.server import set_nodelay

    transport = getattr(request.channel, "transport", None)
    if transport is not None:
        set_nodelay(transport)


def make_site(hub: Hub) -> Site:
    site = Site(RootResource(hub))
    site.displayTracebacks = False
    site.noisy = False
    return site
