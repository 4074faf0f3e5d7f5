# -*- test-case-name: tests.relay.test_server -*-
"""The relay's network side: one TLS port for WebSockets (``/$hc/...``) and HTTP.

A connection's first request head decides who serves it: a WebSocket upgrade
to ``/$hc/...`` goes to :class:`RelayProtocol` (autobahn), everything else to
a ``twisted.web`` site (HTTP senders, the runtime GET, 400 for non-WebSocket
requests to ``/$hc/``).

Roles of a :class:`RelayProtocol`:

``listen``
    a listener's control channel (``sb-hc-action=listen``).
``sender``
    a WebSocket sender (``connect``); its upgrade is held until a listener
    has connected to the accept address, then both become ``leg``.
``leg``
    one side of a joined rendezvous.  Frames are forwarded as they arrive
    (never reassembled); each received chunk goes out as a complete frame so
    that control frames (pong, close) can be interleaved safely.  Each leg is
    the other's push producer, so a slow reader pauses the fast writer.
``request``
    a listener's HTTP rendezvous (``sb-hc-action=request``), see
    :mod:`hcm_twisted.relay.httpmode`.
"""

from __future__ import annotations

import datetime
import random
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import attrs
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.server import Site
from zope.interface import implementer

from hcm_twisted.core import messages, urls
from hcm_twisted.core.bridge import set_nodelay
from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.core.fast import flush_tls, frame_header, startup_done, write_through
from hcm_twisted.core.sas import TokenRejected
from hcm_twisted.core.timers import cancel
from hcm_twisted.relay.auth import LISTEN, SEND, authorize, find_token
from hcm_twisted.relay.httpmode import HttpMode, make_site
from hcm_twisted.relay.namespace import Entity, Namespace

MAX_TEXT_CONTROL = messages.MAX_CONTROL_MESSAGE
MAX_BINARY_CONTROL = 256 * 1024
MAX_HEAD = 32 * 1024
NOT_FOUND = "Endpoint does not exist."

_CLOSE_ALLOWED = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}


def forwardable_close(code: int | None) -> bool:
    """Whether a leg's Close ``code`` may be sent on to the other leg as it is."""
    return code in _CLOSE_ALLOWED or (code is not None and 3000 <= code <= 4999)


def tracking_suffix(namespace: str, path: str) -> str:
    """Azure-style tracking text appended to error descriptions."""
    now = datetime.datetime.now(datetime.UTC).strftime("%m/%d/%Y %I:%M:%S %p")
    return f" TrackingId:{uuid.uuid4()}_G0, SystemTracker:sb://{namespace}/{path}, Timestamp:{now}"


def clean_reason(text: str, limit: int = 400) -> str:
    """A reason phrase safe for an HTTP status line."""
    out = "".join(c if c.isprintable() else " " for c in text)
    return out[:limit]


def deny(status: int, reason: str, namespace: str = "", path: str = "") -> ConnectionDeny:
    suffix = tracking_suffix(namespace, path) if namespace else ""
    return ConnectionDeny(status, clean_reason(reason) + suffix)


def raw_headers(head: bytes) -> list[tuple[str, str]]:
    """Header lines of a request head with their original case (folding ignored)."""
    out: list[tuple[str, str]] = []
    for line in head.split(b"\r\n")[1:]:
        if not line or line[:1] in (b" ", b"\t"):
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        out.append((name.decode("latin-1").strip(), value.decode("latin-1").strip()))
    return out


def flat_headers(
    pairs: list[tuple[str, str]], drop: frozenset[str] | set[str] = frozenset()
) -> dict[str, str]:
    """A flat name -> value map; repeated headers joined with ``", "``."""
    out: dict[str, str] = {}
    lower: dict[str, str] = {}
    for name, value in pairs:
        if name.lower() in drop:
            continue
        key = lower.setdefault(name.lower(), name)
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def split_hc_path(path: str) -> str | None:
    """``/$hc/{rest}`` -> ``rest`` (still URL-encoded), or None."""
    lowered = path.lower()
    for prefix in ("/$hc/", "/%24hc/"):
        if lowered.startswith(prefix):
            return path[len(prefix):]
    return None


def host_for_url(host: str) -> str:
    """A ``Host`` header value usable in a URL (brackets an unbracketed IPv6 ``::1:9443``)."""
    host = host.strip()
    if host.count(":") > 1 and not host.startswith("["):
        addr, _, port = host.rpartition(":")
        if port.isdigit() and addr.count(":") >= 2:
            return f"[{addr}]:{port}"
        return f"[{host}]"
    return host


def remote_endpoint(transport: Any) -> messages.RemoteEndpoint | None:
    try:
        peer = transport.getPeer()
        return messages.RemoteEndpoint(address=str(peer.host), port=int(peer.port))
    except Exception:
        return None


@implementer(IPushProducer)
class _LegProducer:
    """One leg's transport as the other leg's producer; never closes it."""

    def __init__(self, leg: RelayProtocol) -> None:
        self._leg = leg

    def pauseProducing(self) -> None:
        if self._leg.transport is not None:
            self._leg.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self._leg.transport is not None:
            self._leg.transport.resumeProducing()

    def stopProducing(self) -> None:
        """Closing is close propagation's business, not the transport's."""


@attrs.define(eq=False)
class PendingAccept:
    """A sender waiting for a listener to use the accept address."""

    id: str
    entity: Entity
    sender: RelayProtocol
    deferred: defer.Deferred[Any]
    offered: list[str]
    issued_params: frozenset[str]
    timer: IDelayedCall | None = None
    rendezvous: RelayProtocol | None = None

    def cancel_timer(self) -> None:
        cancel(self.timer)
        self.timer = None


@attrs.define(eq=False)
class Hub:
    """Shared state: live listeners per entity and pending rendezvous addresses."""

    namespace: Namespace
    reactor: IReactorTime
    listeners: dict[str, list[RelayProtocol]] = attrs.field(factory=dict)
    pending: dict[str, Any] = attrs.field(factory=dict)
    http: HttpMode = attrs.field(init=False)
    rng: random.Random = attrs.field(factory=random.SystemRandom)
    connections: set[RelayProtocol] = attrs.field(factory=set)
    stats: dict[str, dict[str, int]] = attrs.field(factory=dict)
    _drained: list[defer.Deferred[None]] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        self.http = HttpMode(self)

    def hc_stats(self, entity: Entity) -> dict[str, int]:
        key = entity.name.lower()
        found = self.stats.get(key)
        if found is None:
            found = self.stats[key] = {
                "accepted_total": 0, "rejected_total": 0, "http_requests_total": 0,
                "bytes_to_listener_total": 0, "bytes_to_sender_total": 0,
            }
        return found

    def counters(self) -> dict[str, Any]:
        """Numbers for metrics (``core.metrics.registry_from_dict``) and tests."""
        hcs: dict[str, dict[str, int]] = {}
        for entity in self.namespace.entities.values():
            hcs[entity.name] = dict(self.hc_stats(entity))
            hcs[entity.name]["listeners"] = len(self.live_listeners(entity))
        return {
            "connections": len(self.connections),
            "pending_rendezvous": len(self.pending),
            "hcs": hcs,
        }

    def connection_gone(self, proto: RelayProtocol) -> None:
        self.connections.discard(proto)
        if not self.connections:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def apply_namespace(self, new: Namespace) -> dict[str, list[str]]:
        """Switch to a re-read namespace (a reload).

        Live connections move to the new entity objects; listeners of deleted
        hybrid connections are closed with 1001 (as Azure does).  Joined
        connections of a deleted HC keep flowing until they end.
        """
        old = self.namespace
        added = [e.name for k, e in new.entities.items() if k not in old.entities]
        removed = [e.name for k, e in old.entities.items() if k not in new.entities]
        self.namespace = new
        for proto in list(self.connections):
            if proto.entity is None:
                continue
            replacement = new.entities.get(proto.entity.name.lower())
            if replacement is not None:
                proto.entity = replacement
            elif proto.role == "listen":
                proto._send_close(1001, "The hybrid connection was deleted or disabled.")
        return {"added": added, "removed": removed}

    def recycle_listeners(self, hc: str | None = None) -> int:
        """Close live control channels with 1011, as Azure's periodic listener recycle does.

        Listeners are expected to reconnect.  Returns how many were closed.
        """
        count = 0
        for name, items in list(self.listeners.items()):
            if hc is not None and name != hc.lower():
                continue
            for proto in list(items):
                if proto.is_live_listener():
                    proto.recycle()
                    count += 1
        return count

    def shutdown(self, timeout: float) -> defer.Deferred[None]:
        """Close every WebSocket with 1001 and wait (at most ``timeout``) until they are gone.

        A joined leg gets 1012 (Service Restart) instead: its stream is cut, and a 1001
        would read as the peer's normal end of the stream.
        """
        for proto in list(self.connections):
            code = 1012 if proto.role == "leg" else 1001
            proto._send_close(code, "The relay is shutting down.")
        if not self.connections:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._drained.append(d)

        def give_up() -> None:
            for proto in list(self.connections):
                if proto.transport is not None:
                    proto.transport.abortConnection()
            if not d.called:
                self._drained.remove(d)
                d.callback(None)

        call = self.reactor.callLater(timeout, give_up)
        d.addBoth(lambda r: call.cancel() if call.active() else None)
        return d

    @property
    def config(self) -> Any:
        return self.namespace.config

    def live_listeners(self, entity: Entity) -> list[RelayProtocol]:
        return [p for p in self.listeners.get(entity.name.lower(), []) if p.is_live_listener()]

    def count_listeners(self, entity: Entity) -> int:
        """Listeners that count against the limit (connecting or open, not closing)."""
        return sum(
            1 for p in self.listeners.get(entity.name.lower(), [])
            if p.state in (p.STATE_CONNECTING, p.STATE_OPEN)
        )

    def add_listener(self, entity: Entity, protocol: RelayProtocol) -> None:
        self.listeners.setdefault(entity.name.lower(), []).append(protocol)

    def remove_listener(self, entity: Entity, protocol: RelayProtocol) -> None:
        items = self.listeners.get(entity.name.lower(), [])
        if protocol in items:
            items.remove(protocol)

    def pick_listener(self, entity: Entity, headers: dict[str, str]) -> RelayProtocol | None:
        """A random live listener; honours ``Microsoft-Relay-(Dis)AllowedListeners``."""
        live = self.live_listeners(entity)
        allowed = headers.get("microsoft-relay-allowedlisteners")
        disallowed = headers.get("microsoft-relay-disallowedlisteners")
        if allowed:
            ids = {x.strip().lower() for x in allowed.split(",") if x.strip()}
            live = [p for p in live if (p.listener_id or "").lower() in ids]
        if disallowed:
            ids = {x.strip().lower() for x in disallowed.split(",") if x.strip()}
            live = [p for p in live if (p.listener_id or "").lower() not in ids]
        if not live:
            return None
        return self.rng.choice(live)

    def new_id(self, wanted: str | None) -> str:
        if wanted and wanted not in self.pending and len(wanted) <= 200:
            return wanted
        return str(uuid.uuid4())


class RelayProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    """One WebSocket connection to the relay (see the module docstring for roles)."""

    _log = Logger()
    factory: RelayServerFactory
    transport: Any

    role: str = "new"
    entity: Entity | None = None
    listener_id: str | None = None
    listener_host: str = ""
    secure: bool = False
    token_expiry: float | None = None
    pending: PendingAccept | None = None
    peer_leg: RelayProtocol | None = None
    request_id: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self._lapse: IDelayedCall | None = None
        self._half_close_timer: IDelayedCall | None = None
        self._abort_timer: IDelayedCall | None = None
        self._recycle_timer: IDelayedCall | None = None
        self._queue: list[bytes] = []
        self._out_opcode = 2
        self._out_started = False
        self._got_close = False  # this leg sent Close (half-closed toward its peer)
        self._was_joined = False
        self._ctl_parts: list[bytes] = []
        self._ctl_len = 0
        self._ctl_binary = False
        self._ctl_failed = False
        self.pairs: list[tuple[str, str]] = []
        self._chosen: str | None = None
        self._http_body_for: Any = None  # HTTP mode: whose response body comes next
        #: HTTP mode: the sender's HTTP connection this rendezvous now serves (kept for its
        #: later requests, spec section 7) and whether it may be kept (rendezvous-only).
        self.http_channel: Any = None
        self.http_reusable = False
        self._stats: dict[str, int] = {"": 0}
        self._stats_key = ""

    @property
    def hub(self) -> Hub:
        return self.factory.hub

    # -- plumbing ----------------------------------------------------------

    def connectionMade(self) -> None:
        write_through(self.transport)  # (TCP_NODELAY: set by the sniffer)
        self.hub.connections.add(self)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        # Skip the adapter's per-chunk debug formatting.
        self._dataReceived(data)
        # What this read forwarded goes out now, not on the next reactor iteration.
        peer = self.peer_leg
        if peer is not None:
            flush_tls(peer.transport)

    def is_live_listener(self) -> bool:
        return self.role == "listen" and self.state == self.STATE_OPEN

    # -- handshake ---------------------------------------------------------

    def onConnect(self, request: Any) -> Any:
        status_line = self.http_status_line or ""
        parts = status_line.split(" ")
        target = parts[1] if len(parts) >= 2 else "/"
        path, _, query = target.partition("?")
        self.pairs = raw_headers(self.http_request_data or b"")
        headers = {k.lower(): v for k, v in flat_headers(self.pairs).items()}
        params = {k.lower(): v for k, v in parse_qsl(query, keep_blank_values=True)}
        self.secure = isinstance(self.transport, TLSMemoryBIOProtocol)
        ns = self.hub.namespace
        rest = split_hc_path(path)
        if rest is None:
            raise deny(404, NOT_FOUND)
        action = params.get("sb-hc-action", "connect").lower()
        if action in ("accept", "request"):
            return self._on_rendezvous(action, params)
        found = ns.find(unquote(rest))
        if found is None:
            raise deny(404, NOT_FOUND, ns.config.namespace, unquote(rest))
        entity, suffix = found
        token, _where = find_token(params, headers)
        if action == "listen":
            if suffix.strip("/"):
                raise deny(404, NOT_FOUND, ns.config.namespace, unquote(rest))
            return self._on_listen(entity, token, params, headers)
        if action == "connect":
            return self._on_connect(entity, token, rest, query, headers, request)
        raise deny(400, f"BadRequest: unknown sb-hc-action {action[:20]!r}.")

    def _authorize(
        self, entity: Entity, right: str, token: str | None, suffix: str = ""
    ) -> float | None:
        try:
            result = authorize(
                self.hub.namespace, entity, right, token, self.hub.reactor.seconds(), suffix
            )
        except TokenRejected as e:
            self._log.info(
                "refused {right} on {hc} from {peer}: {status} {reason}",
                right=right, hc=entity.name, peer=self.peer, status=e.status, reason=e.reason,
            )
            raise deny(e.status, e.reason, self.hub.config.namespace, entity.name) from None
        return float(result.expiry) if result is not None else None

    def _on_listen(
        self, entity: Entity, token: str | None, params: dict[str, str], headers: dict[str, str]
    ) -> None:
        expiry = self._authorize(entity, LISTEN, token)
        if self.hub.count_listeners(entity) >= self.hub.config.max_listeners:
            raise deny(
                403,
                "MaximumListenersPerEndpoint: the maximum number of listeners "
                f"({self.hub.config.max_listeners}) for this endpoint is reached.",
                self.hub.config.namespace, entity.name,
            )
        self.role = "listen"
        self.entity = entity
        self.token_expiry = expiry
        self.listener_id = params.get("sb-hc-id") or str(uuid.uuid4())
        self.listener_host = host_for_url(headers.get("host", self.hub.config.namespace))
        self.hub.add_listener(entity, self)
        return None

    def _on_connect(
        self, entity: Entity, token: str | None, rest: str, query: str,
        headers: dict[str, str], request: Any,
    ) -> defer.Deferred[Any]:
        self._authorize(entity, SEND, token, unquote(rest)[len(entity.name):])
        listener = self.hub.pick_listener(entity, headers)
        if listener is None:
            raise deny(404, NOT_FOUND, self.hub.config.namespace, entity.name)
        params = dict(parse_qsl(query, keep_blank_values=True))
        rid = self.hub.new_id(params.get("sb-hc-id"))
        app_query = urls.strip_relay_params(query)
        scheme = "wss" if listener.secure else "ws"
        tail = f"{app_query}&" if app_query else ""
        address = (
            f"{scheme}://{listener.listener_host}/$hc/{rest}?{tail}"
            f"sb-hc-action=accept&sb-hc-id={quote(rid, safe='')}"
        )
        issued = frozenset(
            k.lower() for k, _ in parse_qsl(app_query, keep_blank_values=True)
        )
        connect_headers = flat_headers(self.pairs, drop={"servicebusauthorization"})
        accept = messages.Accept(
            address=address, id=rid, connect_headers=connect_headers,
            remote_endpoint=remote_endpoint(self.transport),
        )
        d: defer.Deferred[Any] = defer.Deferred()
        pending = PendingAccept(
            id=rid, entity=entity, sender=self, deferred=d,
            offered=list(request.protocols or []), issued_params=issued,
        )
        pending.timer = self.hub.reactor.callLater(
            self.hub.config.accept_timeout, self._accept_timed_out, pending
        )
        self.hub.pending[rid] = pending
        self.pending = pending
        self.role = "sender"
        self.entity = entity
        # The accept timer replaces autobahn's opening-handshake timer.
        if self.openHandshakeTimeoutCall is not None:
            self.openHandshakeTimeoutCall.cancel()
            self.openHandshakeTimeoutCall = None
        listener.sendMessage(messages.encode(accept).encode("utf-8"), isBinary=False)
        self._log.info(
            "accept {id} on {hc} sent to listener {listener}",
            id=rid, hc=entity.name, listener=listener.listener_id,
        )
        return d

    def _accept_timed_out(self, pending: PendingAccept) -> None:
        pending.timer = None
        if self.hub.pending.get(pending.id) is pending:
            del self.hub.pending[pending.id]
            self._log.info("accept {id} on {hc}: no answer in time", id=pending.id,
                           hc=pending.entity.name)
            pending.deferred.errback(
                deny(504, "GatewayTimeout: the listener did not accept the connection in time.",
                     self.hub.config.namespace, pending.entity.name)
            )

    def _on_rendezvous(self, action: str, params: dict[str, str]) -> Any:
        rid = params.get("sb-hc-id", "")
        if action == "request":
            return self.hub.http.on_rendezvous(self, rid, params)
        pending = self.hub.pending.get(rid)
        if not isinstance(pending, PendingAccept):
            raise deny(403, "The rendezvous address is invalid or has expired.")
        del self.hub.pending[rid]
        pending.cancel_timer()
        sender = pending.sender
        code_text = params.get("sb-hc-statuscode")
        desc = params.get("sb-hc-statusdescription")
        if code_text is None and "statuscode" not in pending.issued_params:
            code_text = params.get("statuscode")
            if desc is None and "statusdescription" not in pending.issued_params:
                desc = params.get("statusdescription")
        if code_text is not None:
            try:
                code = int(code_text)
            except ValueError:
                code = 400
            if not 300 <= code <= 599:
                code = 400
            reason = clean_reason(desc if desc else "Rejected by user code")
            sender.pending = None
            self.hub.hc_stats(pending.entity)["rejected_total"] += 1
            self._log.info("accept {id} on {hc} rejected: {code}", id=rid,
                           hc=pending.entity.name, code=code)
            if sender.state == sender.STATE_CONNECTING:
                pending.deferred.errback(ConnectionDeny(code, reason))
            raise ConnectionDeny(410, "Gone: the rejection was delivered to the sender.")
        if sender.state != sender.STATE_CONNECTING:
            raise deny(403, "The rendezvous address is invalid or has expired.")
        chosen = None
        for proto in self.websocket_protocols or []:
            if proto in pending.offered:
                chosen = proto
                break
        self.role = "leg"
        self.entity = pending.entity
        self.pending = pending
        pending.rendezvous = self
        self._chosen = chosen
        return chosen

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        headers = list(responseHeaders or []) + [("Content-Length", "0"), ("Connection", "close")]
        super().failHandshake(clean_reason(reason, 1000), code, headers)

    # -- open --------------------------------------------------------------

    def onOpen(self) -> None:
        if self.role == "listen":
            assert self.entity is not None
            self._schedule_lapse()
            recycle = self.hub.config.listener_recycle
            if recycle > 0:
                self._recycle_timer = self.hub.reactor.callLater(
                    recycle * self.hub.rng.uniform(0.9, 1.0), self.recycle
                )
            self._log.info(
                "listener {id} connected on {hc} ({n} live)", id=self.listener_id,
                hc=self.entity.name, n=len(self.hub.live_listeners(self.entity)),
            )
        elif self.role == "leg" and self.pending is not None:
            pending, self.pending = self.pending, None
            sender = pending.sender
            sender.pending = None
            sender.role = "leg"
            # Fires the sender's held upgrade: 101 (and its onOpen) happen right here.
            pending.deferred.callback(self._chosen)
            if sender.state == sender.STATE_OPEN:
                join(sender, self)
                stats = self.hub.hc_stats(pending.entity)
                stats["accepted_total"] += 1
                sender._stats, sender._stats_key = stats, "bytes_to_listener_total"
                self._stats, self._stats_key = stats, "bytes_to_sender_total"
                self._log.info("rendezvous {id} on {hc} joined", id=pending.id,
                               hc=pending.entity.name)
            else:
                self._send_close(1001, "The sender went away.")
        elif self.role == "request":
            self.hub.http.on_rendezvous_open(self)

    # -- control channel ----------------------------------------------------

    def _schedule_lapse(self) -> None:
        cancel(self._lapse)
        self._lapse = None
        if self.token_expiry is None:
            return
        now = self.hub.reactor.seconds()
        delay = max(0.0, self.token_expiry + self.hub.config.token_grace - now)
        self._lapse = self.hub.reactor.callLater(delay, self._token_lapsed)

    def recycle(self) -> None:
        """Close this control channel with 1011 (the listener reconnects)."""
        self._recycle_timer = None
        self._log.info("listener {id} on {hc}: recycled", id=self.listener_id,
                       hc=self.entity.name if self.entity else "?")
        self._send_close(1011, "InternalServerError: NameRenewalFailed (listener recycle).")

    def _token_lapsed(self) -> None:
        self._lapse = None
        self._log.info("listener {id} on {hc}: token expired without renewal",
                       id=self.listener_id, hc=self.entity.name if self.entity else "?")
        self._send_close(1008, "TokenExpired: the token has expired and was not renewed.")

    def _send_close(self, code: int, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False)
        elif self.state in (self.STATE_CONNECTING,):
            self.dropConnection(abort=True)

    def _control_message(self, data: bytes, binary: bool) -> None:
        http = self.hub.http
        if binary:
            if http.on_binary(self, data):
                return
            if not data:
                return  # hyco-https sends an empty binary message after body:false responses
            self._log.info("listener {id}: unexpected binary message ({n} bytes)",
                           id=self.listener_id, n=len(data))
            self._send_close(1003, "Unexpected binary message on the control channel.")
            return
        try:
            message = messages.parse(data)
        except MalformedInput as e:
            self._log.info("listener {id}: bad control message: {error}", id=self.listener_id,
                           error=str(e))
            self._send_close(1008, f"Malformed control message: {e}"[:120])
            return
        if isinstance(message, messages.RenewToken):
            self._renew(message.token)
        elif isinstance(message, messages.Response):
            http.on_response(self, message)
        elif isinstance(message, messages.Unknown):
            self._log.info("listener {id}: ignoring unknown message {kind!r}",
                           id=self.listener_id, kind=message.kind)
        else:
            self._log.info("listener {id}: ignoring unexpected {kind}", id=self.listener_id,
                           kind=type(message).__name__)

    def _renew(self, token: str) -> None:
        if self.role != "listen" or self.entity is None:
            self._send_close(1008, "renewToken is only valid on a control channel.")
            return
        try:
            result = authorize(
                self.hub.namespace, self.entity, LISTEN, token, self.hub.reactor.seconds()
            )
        except TokenRejected as e:
            self._log.info("listener {id} on {hc}: renewToken refused: {reason}",
                           id=self.listener_id, hc=self.entity.name, reason=e.reason)
            self._send_close(1008, e.reason[:120])
            return
        self.token_expiry = float(result.expiry) if result is not None else None
        self._schedule_lapse()
        self._log.debug("listener {id} renewed its token", id=self.listener_id)

    # -- frames --------------------------------------------------------------

    def onMessageBegin(self, isBinary: bool) -> None:
        if self.role == "leg":
            self._out_opcode = 2 if isBinary else 1
            self._out_started = False
            return
        self._ctl_binary = isBinary
        self._ctl_parts = []
        self._ctl_len = 0
        self._ctl_failed = False

    def onMessageFrameBegin(self, length: int) -> None:
        if self.role == "leg" or self._ctl_failed:
            return
        self._ctl_len += length
        limit = MAX_BINARY_CONTROL if self._ctl_binary else MAX_TEXT_CONTROL
        if self.role == "request":
            limit = self.hub.http.rendezvous_message_limit(self, self._ctl_binary)
        if limit and self._ctl_len > limit:
            self._ctl_failed = True
            self._ctl_parts = []
            self._log.info("{role} {id}: message over {limit} bytes", role=self.role,
                           id=self.listener_id or self.request_id, limit=limit)
            self._send_close(1009, f"Message too big (limit {limit} bytes).")

    def onMessageFrameData(self, payload: bytes) -> None:
        if self.role == "leg":
            if self._got_close:
                return
            frame = self.current_frame
            fin = bool(frame.fin) and self.current_frame_masker.pointer() >= frame.length
            if not payload and not fin:
                return
            opcode = 0 if self._out_started else self._out_opcode
            self._out_started = True
            self._stats[self._stats_key] += len(payload)
            self._forward(frame_header(opcode, fin, len(payload)) + payload)
            return
        if self.role == "request" and self._ctl_binary:
            if self.hub.http.on_rendezvous_data(self, payload):
                return
        if not self._ctl_failed:
            self._ctl_parts.append(payload)

    def onMessageFrameEnd(self) -> None:
        pass

    def onMessageEnd(self) -> None:
        if self.role == "leg" or self._ctl_failed:
            return
        data = b"".join(self._ctl_parts)
        self._ctl_parts = []
        if self.role == "listen":
            self._control_message(data, self._ctl_binary)
        elif self.role == "request":
            self.hub.http.on_rendezvous_message(self, data, self._ctl_binary)

    def _forward(self, data: bytes) -> None:
        peer = self.peer_leg
        if peer is None:
            if self._was_joined:
                return  # the other side is gone; this leg is being closed
            self._queue.append(data)
            if len(self._queue) == 1 and self.transport is not None:
                self.transport.pauseProducing()
            return
        if peer.state == peer.STATE_OPEN and peer.transport is not None:
            peer.transport.write(data)

    def flush_queue(self) -> None:
        peer = self.peer_leg
        queue, self._queue = self._queue, []
        if peer is not None and peer.transport is not None:
            for data in queue:
                peer.transport.write(data)
            flush_tls(peer.transport)
        if queue and self.transport is not None:
            self.transport.resumeProducing()

    # -- close ---------------------------------------------------------------

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> Any:
        peer = self.peer_leg
        if (
            self.role == "leg" and peer is not None and self.state == self.STATE_OPEN
            and not self._got_close
        ):
            forwardable = forwardable_close(code)
            fwd_code = code if forwardable else 1001
            reason = reasonRaw if forwardable else None
            if peer.state == peer.STATE_OPEN:
                # Half-close: forward the Close, keep the other direction flowing
                # until the peer answers with its own Close.
                self._got_close = True
                peer.sendCloseFrame(code=fwd_code, reasonUtf8=reason, isReply=True)
                peer._half_close_timer = self.hub.reactor.callLater(
                    self.hub.config.half_close_timeout, peer._half_close_expired
                )
                return None
        if (
            self.role == "leg" and peer is not None and self.state == self.STATE_CLOSING
            and peer._got_close and peer.state == peer.STATE_OPEN
        ):
            # Our peer half-closed earlier; this Close answers it: finish both.
            fwd_code = code if forwardable_close(code) else 1000
            peer.sendCloseFrame(code=fwd_code, reasonUtf8=reasonRaw if code else None,
                                isReply=True)
            peer.dropConnection(abort=False)
        return super().onCloseFrame(code, reasonRaw)  # type: ignore[arg-type]

    def _closeConnection(self, abort: bool = False) -> None:
        """After a clean closing handshake, flush what is queued (our Close included) first.

        autobahn aborts a server's TCP as soon as the peer's Close arrives; a peer that
        sent its Close on its own (not as an answer) may not have read ours yet.  A timer
        aborts connections that do not drain.
        """
        if abort and self.wasClean and self.transport is not None:
            abort = False
            self._abort_timer = self.hub.reactor.callLater(
                self.hub.config.close_timeout, self._abort_now
            )
        super()._closeConnection(abort)

    def _abort_now(self) -> None:
        self._abort_timer = None
        if self.transport is not None:
            self.transport.abortConnection()

    def _half_close_expired(self) -> None:
        self._half_close_timer = None
        peer = self.peer_leg
        self.dropConnection(abort=True)
        if peer is not None:
            peer.dropConnection(abort=True)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._teardown()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        try:
            super().connectionLost(reason)
        finally:
            self._teardown()
            self.hub.connection_gone(self)

    def _teardown(self) -> None:
        cancel(self._abort_timer)
        self._abort_timer = None
        cancel(self._lapse)
        self._lapse = None
        cancel(self._half_close_timer)
        self._half_close_timer = None
        cancel(self._recycle_timer)
        self._recycle_timer = None
        if self.role == "listen" and self.entity is not None:
            self.hub.remove_listener(self.entity, self)
            self.hub.http.on_listener_gone(self)
            self._log.info("listener {id} on {hc} gone", id=self.listener_id,
                           hc=self.entity.name)
            self.role = "closed"
        elif self.role == "sender" and self.pending is not None:
            pending, self.pending = self.pending, None
            pending.cancel_timer()
            if self.hub.pending.get(pending.id) is pending:
                del self.hub.pending[pending.id]
            if pending.rendezvous is not None:
                pending.rendezvous._send_close(1001, "The sender went away.")
            self.role = "closed"
        elif self.role == "leg":
            peer, self.peer_leg = self.peer_leg, None
            self.role = "closed"
            if peer is not None:
                peer.peer_leg = None
                unjoin(self, peer)
                # A leg lost without a closing handshake (crash, kill, network) may have cut
                # its stream short: say so with 1011, so that the other side does not take it
                # for a graceful end (1000/1001) and pass on a truncated stream as complete.
                code, reason = (1001, b"The other side went away.") if self.wasClean else (
                    1011, b"The other side was lost.")
                if peer.state == peer.STATE_OPEN and peer._got_close:
                    # The peer's own Close was waiting for this side's answer.
                    peer.sendCloseFrame(code=code, reasonUtf8=reason, isReply=True)
                    peer.dropConnection(abort=False)
                elif peer.state == peer.STATE_OPEN:
                    peer._send_close(code, reason.decode())
                elif peer.state == peer.STATE_CLOSING:
                    peer.dropConnection(abort=False)
        elif self.role == "request":
            self.hub.http.on_rendezvous_gone(self)
            self.role = "closed"


def join(a: RelayProtocol, b: RelayProtocol) -> None:
    """Splice two open legs: frames flow both ways, each transport the other's producer."""
    a.peer_leg, b.peer_leg = b, a
    a._was_joined = b._was_joined = True
    for consumer, producer in ((a, b), (b, a)):
        try:
            consumer.transport.registerProducer(_LegProducer(producer), True)
        except RuntimeError:
            pass
    a.flush_queue()
    b.flush_queue()


def unjoin(gone: RelayProtocol, other: RelayProtocol) -> None:
    for proto in (gone, other):
        try:
            if proto.transport is not None:
                proto.transport.unregisterProducer()
        except Exception:  # noqa: S110 (already torn down)
            pass
    # The remaining leg may have been paused because the gone one was slow.
    if other.transport is not None:
        try:
            other.transport.resumeProducing()
        except Exception:  # noqa: S110
            pass


class RelayServerFactory(WebSocketServerFactory):  # type: ignore[misc]
    protocol = RelayProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, hub: Hub, url: str | None = None) -> None:
        super().__init__(url, reactor=hub.reactor)
        self.hub = hub
        cfg = hub.config
        self.setProtocolOptions(
            webStatus=False,
            utf8validateIncoming=False,  # control messages are checked by json; legs pass through
            applyMask=True,
            autoFragmentSize=0,
            maxFramePayloadSize=0,  # streaming hooks: nothing is buffered per message on legs
            maxMessagePayloadSize=0,
            failByDrop=False,
            openHandshakeTimeout=cfg.handshake_timeout,
            closeHandshakeTimeout=cfg.close_timeout,
            autoPingInterval=cfg.ping_interval or None,
            autoPingTimeout=(cfg.ping_interval * 2) if cfg.ping_interval else None,
            echoCloseCodeReason=True,
            tcpNoDelay=True,
        )
        self.setSessionParameters(server="hcm-relay")


def _wants_websocket(head: bytes) -> bool:
    first, _, rest = head.partition(b"\r\n")
    parts = first.split(b" ")
    if len(parts) < 2 or split_hc_path(parts[1].decode("latin-1")) is None:
        return False
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


class _Sniffer(Protocol):
    """Reads the first request head, then hands the connection to WebSocket or HTTP."""

    transport: Any

    def __init__(self, factory: SniffingFactory, addr: Any) -> None:
        self._factory = factory
        self._addr = addr
        self._buf = b""
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        set_nodelay(self.transport)
        self._timer = self._factory.reactor.callLater(
            self._factory.handshake_timeout, self._timed_out
        )

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        cancel(self._timer)
        self._timer = None

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                self.transport.write(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
                self.transport.loseConnection()
                self._buf = b""
            return
        cancel(self._timer)
        self._timer = None
        if _wants_websocket(self._buf[:end]):
            proto: Any = self._factory.ws_factory.buildProtocol(self._addr)
        else:
            proto = self._factory.site.buildProtocol(self._addr)
        transport = self.transport
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = proto
        else:
            transport.protocol = proto
        buf, self._buf = self._buf, b""
        proto.makeConnection(transport)
        proto.dataReceived(buf)


class SniffingFactory(Factory):
    """The listening port's factory: WebSocket or HTTP per connection."""

    noisy = False
    _log = Logger()

    def __init__(
        self, ws_factory: RelayServerFactory, site: Site, reactor: IReactorTime,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.ws_factory = ws_factory
        self.site = site
        self.reactor = reactor
        self.handshake_timeout = handshake_timeout

    def buildProtocol(self, addr: Any) -> Protocol:
        return _Sniffer(self, addr)

    def doStart(self) -> None:
        super().doStart()
        startup_done(self._log)
        self.ws_factory.doStart()
        self.site.doStart()

    def doStop(self) -> None:
        self.ws_factory.doStop()
        self.site.doStop()
        super().doStop()


def build(
    namespace: Namespace, reactor: IReactorTime, site_factory: Callable[[Hub], Site] | None = None
) -> tuple[Hub, SniffingFactory]:
    """The hub and the port factory for a namespace."""
    hub = Hub(namespace=namespace, reactor=reactor)
    ws_factory = RelayServerFactory(hub)
    site = (site_factory or make_site)(hub)
    return hub, SniffingFactory(ws_factory, site, reactor, namespace.config.handshake_timeout)


__all__ = ["Hub", "RelayProtocol", "RelayServerFactory", "SniffingFactory", "build"]
