# -*- test-case-name: tests.relay.test_httpmode -*-
"""HTTP side of the relay: HTTP senders (spec section 7) and the runtime GET (section 9)."""

from __future__ import annotations

import json
import re
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote
from xml.sax.saxutils import escape

import attrs
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from hcm_twisted.core import messages, urls
from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.core.sas import TokenRejected
from hcm_twisted.core.timers import cancel
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


HOP_BY_HOP = frozenset({
    "connection", "content-length", "host", "te", "trailer", "transfer-encoding", "upgrade",
    "close", "keep-alive", "proxy-connection", "servicebusauthorization",
})
RESPONSE_DROP = frozenset({
    "connection", "content-length", "transfer-encoding", "keep-alive", "upgrade", "trailer", "te",
})
MAX_INLINE_BODY = 64 * 1024
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)
MAX_INLINE_HEADERS = 32 * 1024


def request_headers(request: Request, drop_authorization: bool) -> dict[str, str]:
    """The sender's headers for the listener: no hop-by-hop headers, no relay auth."""
    out: dict[str, str] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        text = name.decode("latin-1")
        lowered = text.lower()
        if lowered in HOP_BY_HOP or (drop_authorization and lowered == "authorization"):
            continue
        out[text] = ", ".join(v.decode("latin-1") for v in values)
    return out


@attrs.define(eq=False)
class PendingRequest:
    """An HTTP sender's request travelling to a listener and its answer coming back."""

    id: str
    entity: Entity
    request: Request
    listener: RelayProtocol
    message: messages.Request
    body: bytes
    rendezvous_only: bool
    timer: IDelayedCall | None = None
    rendezvous: RelayProtocol | None = None
    sent_on_rendezvous: bool = False
    responded: bool = False  # the response JSON arrived (status and headers are set)
    streaming: RelayProtocol | None = None  # the connection the body arrives on
    done: bool = False

    def cancel_timer(self) -> None:
        cancel(self.timer)
        self.timer = None


class HttpMode:
    """HTTP senders relayed to listeners as ``request`` messages (spec section 7)."""

    _log = Logger()

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        #: Sender HTTP connection -> the rendezvous kept for its later requests.
        self._kept: dict[Any, RelayProtocol] = {}

    # -- the sender side ------------------------------------------------------

    def handle(self, request: Request, entity: Entity, suffix: str) -> bytes | int:
        from hcm_twisted.relay.auth import SEND, authorize
        from hcm_twisted.relay.server import NOT_FOUND

        raw = (request.uri or b"/").decode("latin-1")
        path, _, query = raw.partition("?")
        params = {k.lower(): v for k, v in parse_qsl(query, keep_blank_values=True)}
        headers = {
            k.decode("latin-1").lower(): v[-1].decode("latin-1")
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        token, where = find_token(params, headers, http=True)
        try:
            authorize(self.hub.namespace, entity, SEND, token, self.hub.reactor.seconds(), suffix)
        except TokenRejected as e:
            return self._fail(request, e.status, e.reason)
        kept_rdv = self._kept_rendezvous(request, entity)
        if kept_rdv is not None:
            return self._send_on_rendezvous(kept_rdv, request, entity, path, query, where)
        listener = self.hub.pick_listener(entity, headers)
        if listener is None:
            return self._fail(request, 502, f"{NOT_FOUND} No listener is connected.",
                              code="NoListener")
        message, body = self._request_message(request, listener, path, query, where)
        text = messages.encode(message).encode("utf-8")
        rendezvous_only = len(body) > MAX_INLINE_BODY or len(text) > MAX_INLINE_HEADERS
        rid, address = message.id, message.address
        self._register(PendingRequest(rid, entity, request, listener, message, body,
                                      rendezvous_only))
        if rendezvous_only:
            stub = messages.Request(address=address, id=rid)
            listener.sendMessage(messages.encode(stub).encode("utf-8"), isBinary=False)
        else:
            listener.sendMessage(text, isBinary=False)
            if body:
                listener.sendMessage(body, isBinary=True)
        self._log.info("request {id} {method} on {hc} sent to listener {listener}{rdv}",
                       id=rid, method=message.method, hc=entity.name,
                       listener=listener.listener_id,
                       rdv=" (rendezvous only)" if rendezvous_only else "")
        return NOT_DONE_YET

    # -- a rendezvous kept for the sender's later requests (spec section 7) --------
    #
    # "Once a rendezvous exists for a sender, later requests from the same sender HTTP
    # connection arrive on it and must be answered on it; if the listener drops it, the
    # service drops the sender's connection."  Kept: rendezvous the listener opened for a
    # rendezvous-only request (both Microsoft clients then read requests from it in a loop).
    # A rendezvous opened only to send a large response is closed after it, as before.

    def _kept_rendezvous(self, request: Request, entity: Entity) -> RelayProtocol | None:
        rdv = self._kept.get(request.channel)
        if rdv is None:
            return None
        if rdv.state != rdv.STATE_OPEN or rdv.entity is not entity or (
            isinstance(self.hub.pending.get(rdv.request_id or ""), PendingRequest)
        ):
            # Closing, another HC on this connection, or still busy: a new request path.
            return None
        return rdv

    def _send_on_rendezvous(self, rdv: RelayProtocol, request: Request, entity: Entity,
                            path: str, query: str, where: str | None) -> int:
        message, body = self._request_message(request, rdv, path, query, where)
        self._register(PendingRequest(message.id, entity, request, rdv, message, b"", True,
                                      rendezvous=rdv, sent_on_rendezvous=True))
        rdv.request_id = message.id
        rdv.sendMessage(messages.encode(message).encode("utf-8"), isBinary=False)
        if body:
            rdv.sendMessage(body, isBinary=True)
        self._log.info("request {id} {method} on {hc} sent on the sender's rendezvous",
                       id=message.id, method=message.method, hc=entity.name)
        return NOT_DONE_YET

    def _request_message(self, request: Request, via: RelayProtocol, path: str, query: str,
                         where: str | None) -> tuple[messages.Request, bytes]:
        """The ``request`` message for the sender's ``request`` (and its body), with an
        address on the host the listener ``via`` used."""
        from hcm_twisted.relay.server import remote_endpoint

        rid = str(uuid.uuid4())
        kept = urls.strip_relay_params(query)
        scheme = "wss" if via.secure else "ws"
        host = via.listener_host or self.hub.config.namespace
        body = request.content.read() if request.content is not None else b""
        message = messages.Request(
            address=(f"{scheme}://{host}/$hc/{path.lstrip('/')}"
                     f"?sb-hc-action=request&sb-hc-id={rid}"),
            id=rid, request_target=path + (f"?{kept}" if kept else ""),
            method=request.method.decode("latin-1"),
            request_headers=request_headers(request, drop_authorization=where == "Authorization"),
            body=bool(body), remote_endpoint=remote_endpoint(request.transport),
        )
        return message, body

    def _register(self, pending: PendingRequest) -> None:
        """Track ``pending`` until it is answered, the deadline passes or the sender leaves."""
        pending.timer = self.hub.reactor.callLater(
            self.hub.config.request_timeout, self._timed_out, pending
        )
        self.hub.pending[pending.id] = pending
        self.hub.hc_stats(pending.entity)["http_requests_total"] += 1
        pending.request.notifyFinish().addBoth(self._sender_done, pending)

    def _keep(self, rdv: RelayProtocol, channel: Any) -> bool:
        """Keep ``rdv`` for ``channel``'s next requests; False if it cannot be kept."""
        if not rdv.http_reusable or not isinstance(channel, HTTPChannel) or (
            channel.transport is None or getattr(channel, "_hc_gone", False)
            or not getattr(channel, "persistent", True)
        ):
            return False
        if rdv.http_channel is None:
            rdv.http_channel = channel
            self._kept[channel] = rdv
            lost = channel.connectionLost

            def connection_lost(reason: Any) -> None:
                channel._hc_gone = True  # type: ignore[attr-defined]
                lost(reason)
                self._sender_channel_gone(channel)

            channel.connectionLost = connection_lost  # type: ignore[method-assign]
        return True

    def _sender_channel_gone(self, channel: Any) -> None:
        rdv = self._kept.pop(channel, None)
        if rdv is not None and rdv.state == rdv.STATE_OPEN:
            rdv._send_close(1000, "The sender closed its connection.")

    def _fail(self, request: Request, status: int, reason: str, code: str | None = None) -> bytes:
        from hcm_twisted.relay.server import clean_reason

        request.setResponseCode(status, clean_reason(reason, 200).encode("latin-1", "replace"))
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        error = {"code": code or str(status), "message": reason}
        return json.dumps({"error": error}).encode("utf-8")

    def _timed_out(self, pending: PendingRequest) -> None:
        pending.timer = None
        if pending.done:
            return
        if pending.responded:
            # A streaming response stalled: end what was sent so far.
            self._log.info("request {id}: response body idle too long", id=pending.id)
            self._finish(pending, abort=True)
            return
        self._log.info("request {id} on {hc}: no response in time", id=pending.id,
                       hc=pending.entity.name)
        pending.request.setResponseCode(504, b"Gateway Timeout")
        pending.request.setHeader(b"content-type", b"application/json; charset=utf-8")
        pending.request.write(json.dumps({"error": {
            "code": "GatewayTimeout",
            "message": "The request was routed to the listener but the listener did not "
                       "respond in the required time.",
        }}).encode())
        self._finish(pending)

    def _sender_done(self, result: object, pending: PendingRequest) -> None:
        if not pending.done:
            # The sender went away before the answer was complete.
            pending.done = True
            self._cleanup(pending)
            if pending.rendezvous is not None:
                pending.rendezvous._send_close(1001, "The sender went away.")

    def _cleanup(self, pending: PendingRequest) -> None:
        pending.cancel_timer()
        if self.hub.pending.get(pending.id) is pending:
            del self.hub.pending[pending.id]
        if pending.listener._http_body_for is pending:
            pending.listener._http_body_for = None
        if pending.streaming is not None:
            try:
                pending.request.unregisterProducer()
            except Exception:  # noqa: S110
                pass

    def _finish(self, pending: PendingRequest, abort: bool = False) -> None:
        if pending.done:
            return
        pending.done = True
        self._cleanup(pending)
        if abort:
            transport = getattr(pending.request.channel, "transport", None)
            if transport is not None:
                transport.abortConnection()
            return
        channel = getattr(pending.request, "channel", None)  # gone after finish()
        rdv = pending.rendezvous
        keep = rdv is not None and rdv.state == rdv.STATE_OPEN and self._keep(rdv, channel)
        try:
            pending.request.finish()
        except Exception as e:  # the sender's connection is gone
            self._log.debug("request {id}: finish failed: {e}", id=pending.id, e=e)
        if rdv is not None and rdv.state == rdv.STATE_OPEN and not keep:
            rdv._send_close(1000, "Request complete.")

    def _respond(self, pending: PendingRequest, response: messages.Response,
                 via: RelayProtocol) -> None:
        from hcm_twisted.relay.server import clean_reason

        request = pending.request
        pending.responded = True
        pending.cancel_timer()
        desc = response.status_description or ""
        request.setResponseCode(
            response.status_code,
            clean_reason(desc, 200).encode("latin-1", "replace") if desc else None,
        )
        for name, value in response.response_headers.items():
            if name.lower() in RESPONSE_DROP or not _TOKEN_RE.fullmatch(name):
                continue
            request.responseHeaders.addRawHeader(
                name.encode("latin-1", "replace"),
                " ".join(value.splitlines()).encode("latin-1", "replace"),
            )
        request.responseHeaders.addRawHeader(b"Via", f"1.1 {self.hub.config.namespace}".encode())
        if not response.body or request.method == b"HEAD":
            if response.body:
                pending.streaming = via  # swallow the body message
            self._finish(pending)
            return
        pending.streaming = via
        if via.role == "request":
            from hcm_twisted.relay.server import _LegProducer

            request.registerProducer(_LegProducer(via), True)
        pending.timer = self.hub.reactor.callLater(
            self.hub.config.request_timeout, self._timed_out, pending
        )

    # -- hooks called by RelayProtocol ----------------------------------------

    def on_response(self, proto: RelayProtocol, response: messages.Response) -> None:
        """A ``response`` on a control channel."""
        pending = self.hub.pending.get(response.request_id)
        if not isinstance(pending, PendingRequest) or pending.responded:
            self._log.info("listener {id}: response for unknown request {rid}",
                           id=proto.listener_id, rid=response.request_id[:80])
            if response.body:
                proto._http_body_for = _DISCARD
            return
        self._respond(pending, response, proto)
        if response.body and not pending.done:
            proto._http_body_for = pending
        elif response.body:
            proto._http_body_for = _DISCARD

    def on_binary(self, proto: RelayProtocol, data: bytes) -> bool:
        """A binary message on a control channel: a response body, if one is due."""
        target = proto._http_body_for
        if target is None:
            return False
        proto._http_body_for = None
        if isinstance(target, PendingRequest) and not target.done:
            if data:
                target.request.write(data)
            self._finish(target)
        return True

    def on_listener_gone(self, proto: RelayProtocol) -> None:
        for pending in list(self.hub.pending.values()):
            if (
                isinstance(pending, PendingRequest) and pending.listener is proto
                and pending.rendezvous is None and not pending.done
            ):
                if pending.responded:
                    self._finish(pending, abort=True)
                else:
                    pending.request.write(self._fail(
                        pending.request, 502, "The listener went away.", "ListenerGone"))
                    self._finish(pending)

    def on_rendezvous(self, proto: RelayProtocol, rid: str, params: dict[str, str]) -> Any:
        from hcm_twisted.relay.server import deny

        pending = self.hub.pending.get(rid)
        if not isinstance(pending, PendingRequest) or pending.done or (
            pending.rendezvous is not None
        ):
            raise deny(403, "The rendezvous address is invalid or has expired.")
        proto.role = "request"
        proto.request_id = rid
        proto.entity = pending.entity
        proto.listener_host = pending.listener.listener_host  # for later requests' addresses
        pending.rendezvous = proto
        return None

    def on_rendezvous_open(self, proto: RelayProtocol) -> None:
        pending = self.hub.pending.get(proto.request_id or "")
        if not isinstance(pending, PendingRequest):
            proto._send_close(1001, "The request is gone.")
            return
        if pending.rendezvous_only and not pending.sent_on_rendezvous:
            pending.sent_on_rendezvous = True
            proto.http_reusable = True
            proto.sendMessage(messages.encode(pending.message).encode("utf-8"), isBinary=False)
            if pending.body:
                proto.sendMessage(pending.body, isBinary=True)
            pending.body = b""

    def on_rendezvous_gone(self, proto: RelayProtocol) -> None:
        pending = self.hub.pending.get(proto.request_id or "")
        if isinstance(pending, PendingRequest) and pending.rendezvous is proto and not pending.done:
            if pending.responded:
                self._finish(pending, abort=pending.streaming is proto)
            else:
                pending.rendezvous = None
                if pending.rendezvous_only:
                    pending.request.write(self._fail(
                        pending.request, 502, "The listener dropped the rendezvous.",
                        "ListenerGone"))
                    self._finish(pending)
        channel = proto.http_channel
        if channel is not None and self._kept.get(channel) is proto:
            # The listener dropped the sender's rendezvous: drop the sender's connection
            # (after what was already written to it).
            del self._kept[channel]
            self._log.info("the rendezvous of an HTTP sender closed: closing its connection")
            channel.loseConnection()

    def rendezvous_message_limit(self, proto: RelayProtocol, binary: bool) -> int:
        pending = self.hub.pending.get(proto.request_id or "")
        if binary and isinstance(pending, PendingRequest) and pending.streaming is proto:
            return 0
        return messages.MAX_CONTROL_MESSAGE if not binary else 256 * 1024

    def on_rendezvous_data(self, proto: RelayProtocol, payload: bytes) -> bool:
        """Body bytes of a response streaming on a rendezvous (written as they arrive)."""
        pending = self.hub.pending.get(proto.request_id or "")
        if not isinstance(pending, PendingRequest) or pending.streaming is not proto:
            return False
        if payload and not pending.done:
            pending.request.write(payload)
            if pending.timer is not None and pending.timer.active():
                pending.timer.reset(self.hub.config.request_timeout)
        return True

    def on_rendezvous_message(self, proto: RelayProtocol, data: bytes, binary: bool) -> None:
        pending = self.hub.pending.get(proto.request_id or "")
        if not isinstance(pending, PendingRequest):
            return
        if binary:
            if pending.streaming is proto:
                self._finish(pending)
            elif data:
                proto._send_close(1003, "Unexpected binary message.")
            return
        try:
            message = messages.parse(data)
        except MalformedInput as e:
            proto._send_close(1008, f"Malformed message: {e}"[:120])
            return
        if isinstance(message, messages.Response):
            if message.request_id != pending.id or pending.responded:
                self._log.info("rendezvous {id}: response for another request", id=pending.id)
                return
            self._respond(pending, message, proto)
        elif not isinstance(message, messages.Unknown):
            self._log.info("rendezvous {id}: ignoring {kind}", id=pending.id,
                           kind=type(message).__name__)


_DISCARD = object()


class RootResource(Resource):
    """Every HTTP request: ``/$hc/...`` without upgrade, runtime GET, HTTP senders."""

    isLeaf = True
    _log = Logger()

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub

    def render(self, request: Request) -> bytes | int:
        from hcm_twisted.relay.server import NOT_FOUND, split_hc_path

        raw = (request.uri or b"/").decode("latin-1")
        path, _, query = raw.partition("?")
        if split_hc_path(path) is not None or path.lower() in ("/$hc", "/%24hc"):
            request.setResponseCode(400, b"This endpoint is only for web-socket requests")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"This endpoint is only for web-socket requests.\n"
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
        return self.hub.http.handle(request, entity, suffix)

    def _runtime_get(self, request: Request, entity: Entity, params: dict[str, str]) -> bytes:
        headers = {
            k.decode("latin-1").lower(): v[-1].decode("latin-1")
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        token, _ = find_token(params, headers, http=True)
        try:
            authorize_any(self.hub.namespace, entity, token, self.hub.reactor.seconds())
        except TokenRejected as e:
            request.setResponseCode(e.status, e.reason.encode("latin-1", "replace")[:200])
            request.setHeader(b"content-type", b"application/xml; charset=utf-8")
            return error_xml(e.status, e.reason)
        request.setHeader(b"content-type", ATOM_TYPE)
        return runtime_entry(entity, len(self.hub.live_listeners(entity)))


def _access_log(timestamp: str, request: Request) -> str:
    """An access-log line without the query string (it may hold a token)."""
    path = (request.uri or b"/").split(b"?", 1)[0].decode("latin-1", "replace")
    return (
        f'"{request.getClientAddress().host}" "{request.method.decode("latin-1")} {path}" '
        f"{request.code} {request.sentLength}"
    )


class RelayRequest(Request):
    """A sender's HTTP request, refused with 413 once its body passes ``max-request-body``
    (at once when ``Content-Length`` says so), before the relay has stored it."""

    _log = Logger()
    _too_large = False
    _received = 0

    def _limit(self) -> int:
        site = getattr(self.channel, "site", None)
        hub = getattr(site, "hcm_hub", None)
        if hub is None:
            from hcm_twisted.relay.namespace import DEFAULT_MAX_REQUEST_BODY

            return DEFAULT_MAX_REQUEST_BODY
        return int(hub.config.max_request_body)

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            self._refuse(length)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._too_large:
            return
        self._received += len(data)
        if self._received > self._limit():
            self._refuse(None)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._too_large:
            return  # answered 413 already; the connection is closing
        super().requestReceived(command, path, version)

    def _refuse(self, length: int | None) -> None:
        from io import BytesIO

        limit = self._limit()
        self._too_large = True
        self.content = BytesIO()
        # No "100 Continue" after this answer (Twisted sends it after gotLength).
        self.requestHeaders.removeHeader(b"expect")
        body = json.dumps({"error": {
            "code": "RequestEntityTooLarge",
            "message": f"The request body is larger than this relay's limit of {limit} bytes "
                       "(max-request-body).",
        }}).encode()
        channel = self.channel
        if channel.transport is None:
            return
        channel.transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\n"
            b"Content-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + body
        )
        channel.loseConnection()
        self._log.info("HTTP request refused (413): body {size} over the limit of {limit} bytes",
                       size=f"of {length} bytes" if length is not None else "(chunked)",
                       limit=limit)


def make_site(hub: Hub) -> Site:
    site = Site(RootResource(hub), logFormatter=_access_log, reactor=hub.reactor)
    site.requestFactory = RelayRequest
    site.hcm_hub = hub  # type: ignore[attr-defined]  # RelayRequest reads its limit here
    if not hub.config.log_requests:
        site.log = lambda request: None  # type: ignore[method-assign]
    site.displayTracebacks = False
    site.noisy = False
    return site
