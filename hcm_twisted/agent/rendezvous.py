# -*- test-case-name: tests.agent.test_rendezvous -*-
"""Accepted connections: the rendezvous WebSocket bridged to the endpoint.

On ``accept`` both legs start at once: the TCP connection to the endpoint and
the connection (TCP and TLS) for the WebSocket to the accept ``address`` (used
unchanged, no token).  They are spliced by :class:`hcm_twisted.core.bridge.Bridge`,
which holds the first leg paused until the other one is there.

The rendezvous' upgrade request waits for the endpoint's fate (autobahn's
``onConnecting`` hook), so the decision is never racy: endpoint connected ->
``GET`` the accept address; endpoint unreachable -> ``GET`` the *reject*
address (accept address plus ``sb-hc-statusCode=502`` and a description) on
that same connection.  The relay answers the reject with 410 and fails the
sender's handshake at once with our status and description.

HTTP-mode requests that arrive as a rendezvous-only stub are answered 501 on
their rendezvous (this agent forwards TCP only).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectingRequest
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from hcm_twisted.agent.listener import HcSpec, not_implemented
from hcm_twisted.core import messages, urls
from hcm_twisted.core.bridge import (
    Bridge,
    BridgeClientFactory,
    TcpLeg,
    WebSocketClientLeg,
    refused_status,
)
from hcm_twisted.core.configfile import parse_host_port
from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.core.fast import cached_tcp_endpoint
from hcm_twisted.core.relayconn import EndpointMaker
from hcm_twisted.core.timers import cancel

#: How long the rendezvous WebSocket may take to open ([NET] gives it 20 s).
RENDEZVOUS_TIMEOUT = 20.0
REJECT_TIMEOUT = 10.0
#: How long an HTTP-request rendezvous may stay idle before we close it.
REQUEST_IDLE = 60.0

TcpEndpointMaker = Callable[[str, int, float], IStreamClientEndpoint]


def default_tcp_endpoints(reactor: Any) -> TcpEndpointMaker:
    """TCP endpoints for ``host:port``: IP literals directly (no resolver round trip)."""
    return partial(cached_tcp_endpoint, reactor, None)


def first_subprotocol(headers: dict[str, str]) -> str | None:
    """The first protocol the sender offered in ``Sec-WebSocket-Protocol``, if any."""
    for key, value in headers.items():
        if key.lower() == "sec-websocket-protocol":
            for piece in value.split(","):
                if piece.strip():
                    return piece.strip()
    return None


class _RejectProtocol(WebSocketClientProtocol):
    """Opens the reject URL; the relay answers 410 (that is success)."""

    factory: _RejectFactory

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        refused = refused_status(getattr(self, "http_status_line", None))
        self.factory.finished(refused[0] if refused is not None else None, reason)


class _RejectFactory(WebSocketClientFactory):
    protocol = _RejectProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, url: str, on_done: Callable[[int | None, str | None], None],
                 reactor: Any) -> None:
        super().__init__(url, reactor=reactor, useragent="hcm-twisted")
        self.setProtocolOptions(openHandshakeTimeout=REJECT_TIMEOUT, closeHandshakeTimeout=1)
        self._on_done: Callable[[int | None, str | None], None] | None = on_done

    def finished(self, status: int | None, reason: str | None) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(status, reason)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.finished(None, reason.getErrorMessage())


class _RequestProtocol(WebSocketClientProtocol):
    """A rendezvous for HTTP requests: answer each request 501.

    Later requests from the same sender connection arrive on the same
    rendezvous, so it stays open until the relay closes it or it has been
    idle for ``REQUEST_IDLE`` seconds.
    """

    factory: _RequestFactory
    _idle: Any = None

    def onOpen(self) -> None:
        self._touch()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            return  # a request body
        request_id = self.factory.request_id
        try:
            message = messages.parse(payload)
        except MalformedInput:
            return
        if not isinstance(message, messages.Request):
            return
        if message.id:
            request_id = message.id
        self.sendMessage(not_implemented(request_id).encode("utf-8"), isBinary=False)
        self.factory.answered += 1
        self._touch()

    def _touch(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = self.factory.reactor.callLater(REQUEST_IDLE, self.sendClose, 1000)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        cancel(self._idle)
        self._idle = None


class _RequestFactory(WebSocketClientFactory):
    protocol = _RequestProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, url: str, request_id: str, reactor: Any) -> None:
        super().__init__(url, reactor=reactor, useragent="hcm-twisted")
        self.setProtocolOptions(
            openHandshakeTimeout=RENDEZVOUS_TIMEOUT, closeHandshakeTimeout=2,
            maxMessagePayloadSize=1024 * 1024,
        )
        self.request_id = request_id
        self.answered = 0


class _RendezvousLeg(WebSocketClientLeg):
    """The rendezvous WebSocket: its upgrade request waits for the endpoint's fate.

    TCP and TLS to the relay are set up while the endpoint connection is being
    made; the request then goes out for the accept address (endpoint reached)
    or for the reject address (endpoint unreachable), on the same connection.
    """

    factory: _RendezvousFactory
    _log = Logger(namespace="hcm_twisted.agent.rendezvous")

    def onConnecting(  # type: ignore[override]
        self, transport_details: Any
    ) -> Deferred[ConnectingRequest]:
        # autobahn waits for a Deferred returned here before it sends the request.
        self.factory.connection = self
        factory = self.factory
        factory.times["relay"] = factory.reactor.seconds()

        def request(resource: str) -> ConnectingRequest:
            return ConnectingRequest(
                host=factory.host,
                port=factory.port,
                resource=resource,
                headers=factory.headers,
                useragent=factory.useragent,
                origin=factory.origin,
                protocols=[] if factory.rejecting else factory.protocols,
            )

        return factory.gate.addCallback(request)

    def onOpen(self) -> None:
        super().onOpen()
        times = self.factory.times
        start = times.get("accept", 0.0)
        now = self.factory.reactor.seconds()
        self._log.debug(
            "rendezvous open after {total:.1f} ms (endpoint {endpoint:.1f} ms, relay TCP"
            " {relay:.1f} ms)",
            total=1000 * (now - start),
            endpoint=1000 * (times.get("endpoint", now) - start),
            relay=1000 * (times.get("relay", now) - start),
        )

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        super().onClose(wasClean, code, reason)
        if self.factory.rejecting:
            self.factory.reject_finished(self.handshake_status, self.handshake_reason or reason)


class _RendezvousFactory(BridgeClientFactory):
    protocol = _RendezvousLeg
    noisy = False

    def __init__(self, url: str, bridge: Bridge, gate: Deferred[str],
                 on_reject: Callable[[int | None, str | None], None], **kwargs: Any) -> None:
        super().__init__(url, bridge, **kwargs)
        self.gate = gate
        self.times: dict[str, float] = {"accept": self.reactor.seconds()}
        self.connection: _RendezvousLeg | None = None
        self.rejecting = False
        self._on_reject: Callable[[int | None, str | None], None] | None = on_reject

    def reject_finished(self, status: int | None, reason: str | None) -> None:
        on_reject, self._on_reject = self._on_reject, None
        if on_reject is not None:
            on_reject(status, reason)


@attrs.define(eq=False)
class _Pending:
    """One accept in progress or bridged."""

    bridge: Bridge
    accept: messages.Accept
    gate: Deferred[str] = attrs.field(factory=Deferred)
    factory: _RendezvousFactory | None = None
    ws_connecting: Deferred[Any] | None = None
    ws_failed: bool = False
    rejected: bool = False
    started: float = 0.0

    def drop_rendezvous(self) -> None:
        """Give up on a rendezvous that has not opened."""
        if self.ws_connecting is not None:
            self.ws_connecting.cancel()
        connection = self.factory.connection if self.factory is not None else None
        if connection is not None and not connection._leg_opened:
            connection.dropConnection(abort=True)


class Acceptor:
    """Accepts a Hybrid Connection's senders and counts what happens."""

    _log = Logger()

    def __init__(
        self,
        spec: HcSpec,
        reactor: Any,
        relay_endpoints: EndpointMaker,
        tcp_endpoints: TcpEndpointMaker | None = None,
        linger: float = 60.0,
    ) -> None:
        self.spec = spec
        self._reactor = reactor
        self._relay_endpoints = relay_endpoints
        self._tcp_endpoints = tcp_endpoints or default_tcp_endpoints(reactor)
        self._linger = linger
        self.accepting = True
        self._live: set[_Pending] = set()
        self.accepted = 0  # finished bridges that had joined
        self.rejected = 0
        self.failed = 0
        self.bytes_in = 0  # finished bridges: sender -> endpoint
        self.bytes_out = 0  # finished bridges: endpoint -> sender
        self.endpoint_reachable: bool | None = None
        self.http_requests = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def counters(self) -> dict[str, Any]:
        live = list(self._live)
        return {
            "open": len(live),
            "accepted": self.accepted + sum(1 for p in live if p.bridge.joined),
            "rejected": self.rejected,
            "bytes_in": self.bytes_in + sum(p.bridge.bytes_to_tcp for p in live),
            "bytes_out": self.bytes_out + sum(p.bridge.bytes_to_ws for p in live),
            "endpoint_reachable": self.endpoint_reachable,
        }

    # ---- accept ---------------------------------------------------------------

    def accept(self, accept: messages.Accept) -> None:
        if not self.accepting:
            self._reject(accept, 503, "Listener is draining")
            return
        endpoint = self.spec.endpoint
        if endpoint is None:
            self._reject(accept, 502, "No endpoint configured for this Hybrid Connection")
            return
        host, port = parse_host_port(endpoint)
        bridge = Bridge(self._reactor, linger=self._linger, name=f"{self.name}/{accept.id[:40]}")
        pending = _Pending(bridge, accept, started=self._reactor.seconds())
        self._live.add(pending)
        bridge.when_done().addCallback(lambda _: self._finished(pending))

        # Both at once: the endpoint, and TCP+TLS to the relay (upgrade gated on the endpoint).
        subprotocol = first_subprotocol(accept.connect_headers)
        pending.factory = _RendezvousFactory(
            accept.address,
            bridge,
            pending.gate,
            on_reject=lambda status, reason: self._reject_result(accept, status, reason),
            reactor=self._reactor,
            protocols=[subprotocol] if subprotocol else None,
            useragent="hcm-twisted",
        )
        tcp_factory = Factory.forProtocol(lambda: TcpLeg(bridge))
        tcp_factory.noisy = False
        try:
            tcp_d = self._tcp_endpoints(host, port, self.spec.connect_timeout).connect(tcp_factory)
        except Exception:
            tcp_d = fail()
        tcp_d.addCallbacks(
            lambda proto: self._endpoint_connected(pending),
            lambda f: self._endpoint_failed(pending, f),
        )

        secure, rhost, rport, _ = urls.split_ws_url(accept.address)
        try:
            ws_d = self._relay_endpoints(rhost, rport, secure, RENDEZVOUS_TIMEOUT).connect(
                pending.factory
            )
        except Exception:
            ws_d = fail()
        if not ws_d.called:
            pending.ws_connecting = ws_d

        def ws_connected(proto: IProtocol) -> None:
            pending.ws_connecting = None

        def ws_failed(f: Failure) -> None:
            pending.ws_connecting = None
            pending.ws_failed = True
            if f.check(CancelledError):
                return
            self._log.warn(
                "{name}: cannot reach the relay for a rendezvous: {error}",
                name=self.name, error=f.getErrorMessage(),
            )
            bridge.fail(f"rendezvous unreachable: {f.getErrorMessage()}")

        ws_d.addCallbacks(ws_connected, ws_failed)

    def _endpoint_connected(self, pending: _Pending) -> None:
        self.endpoint_reachable = True
        factory = pending.factory
        assert factory is not None
        factory.times["endpoint"] = self._reactor.seconds()
        if not pending.gate.called:
            pending.gate.callback(factory.resource)

    def _endpoint_failed(self, pending: _Pending, f: Failure) -> None:
        self.endpoint_reachable = False
        error = f.getErrorMessage()
        self._log.warn(
            "{name}: endpoint {endpoint} unreachable: {error}",
            name=self.name, endpoint=self.spec.endpoint, error=error,
        )
        description = f"Endpoint unreachable: {error}"[:200]
        factory = pending.factory
        if factory is not None and not pending.gate.called and not pending.ws_failed:
            # Reject on the connection made for the rendezvous: the sender fails at once.
            pending.rejected = True
            self.rejected += 1
            factory.rejecting = True
            url = urls.reject_url(pending.accept.address, 502, description)
            pending.gate.callback(urls.split_ws_url(url)[3])
        pending.bridge.fail(f"endpoint unreachable: {error}")

    def _reject_result(self, accept: messages.Accept, status: int | None,
                       reason: str | None) -> None:
        if status == 410:
            self._log.info(
                "{name}: rejected connection {id} (endpoint unreachable)",
                name=self.name, id=accept.id[:60],
            )
        else:
            self._log.warn(
                "{name}: rejecting connection {id} failed: {status} {reason}",
                name=self.name, id=accept.id[:60], status=status, reason=reason,
            )

    def _finished(self, pending: _Pending) -> None:
        self._live.discard(pending)
        bridge = pending.bridge
        if bridge.joined:
            self.accepted += 1
        elif not pending.rejected:
            self.failed += 1
        self.bytes_in += bridge.bytes_to_tcp
        self.bytes_out += bridge.bytes_to_ws
        if bridge.joined:
            # One line per connection, at its end: who, how long, how much, why it ended.
            remote = pending.accept.remote_endpoint
            self._log.info(
                "{name}: connection {id} from {remote} closed after {duration:.3f} s, "
                "{bytes_in} bytes in, {bytes_out} bytes out ({reason})",
                name=self.name, id=pending.accept.id[:60],
                remote=f"{remote.address}:{remote.port}" if remote else "?",
                duration=self._reactor.seconds() - pending.started,
                bytes_in=bridge.bytes_to_tcp, bytes_out=bridge.bytes_to_ws,
                reason=bridge.close_reason,
            )
        else:
            self._log.debug(
                "{name}: connection ended ({reason})", name=self.name, reason=bridge.close_reason
            )

    # ---- reject -------------------------------------------------------------------

    def _reject(self, accept: messages.Accept, status: int, description: str) -> None:
        self.rejected += 1
        url = urls.reject_url(accept.address, status, description)
        secure, host, port, _ = urls.split_ws_url(url)

        def done(http_status: int | None, reason: str | None) -> None:
            if http_status == 410:
                self._log.info(
                    "{name}: rejected a connection ({status} {description})",
                    name=self.name, status=status, description=description,
                )
            else:
                self._log.warn(
                    "{name}: rejecting a connection failed: {reason}",
                    name=self.name, reason=reason,
                )

        factory = _RejectFactory(url, done, self._reactor)
        try:
            self._relay_endpoints(host, port, secure, REJECT_TIMEOUT).connect(factory).addErrback(
                lambda f: factory.finished(None, f.getErrorMessage())
            )
        except Exception as e:
            done(None, f"{type(e).__name__}: {e}")

    # ---- HTTP-mode rendezvous -------------------------------------------------------

    def answer_request(self, request: messages.Request, channel: Any = None) -> None:
        """Answer a rendezvous-only HTTP request with 501 on its rendezvous."""
        self.http_requests += 1
        factory = _RequestFactory(request.address, request.id, self._reactor)
        secure, host, port, _ = urls.split_ws_url(request.address)
        try:
            self._relay_endpoints(host, port, secure, RENDEZVOUS_TIMEOUT).connect(
                factory
            ).addErrback(
                lambda f: self._log.warn(
                    "{name}: cannot answer an HTTP request: {error}",
                    name=self.name, error=f.getErrorMessage(),
                )
            )
        except Exception:
            self._log.failure("{name}: cannot answer an HTTP request", name=self.name)

    # ---- shutting down -----------------------------------------------------------------

    def drain(self, timeout: float) -> Deferred[None]:
        """Stop accepting; wait up to ``timeout`` s for open connections, then close them."""
        self.accepting = False
        live = list(self._live)
        if not live:
            return succeed(None)
        waits: Deferred[Any] = DeferredList(
            [p.bridge.when_done() for p in live], consumeErrors=True
        )
        timer = self._reactor.callLater(timeout, self.close_all, "drain timeout")

        def done(_: object) -> None:
            if timer.active():
                timer.cancel()

        waits.addBoth(done)
        return waits

    def close_all(self, reason: str = "hybrid connection closed") -> None:
        """Close every open connection (WebSocket Close 1001, TCP after flushing)."""
        for pending in list(self._live):
            pending.drop_rendezvous()
            pending.bridge.fail(reason, ws_code=1001)
