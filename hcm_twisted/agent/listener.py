# -*- test-case-name: tests.agent.test_listener -*-
"""One Hybrid Connection's control channel, kept open by a ``ClientService``.

The channel is an autobahn WebSocket client to the listen URL with the SAS
token in the ``ServiceBusAuthorization`` header and a fresh ``sb-hc-id`` on
every connect.  ``ClientService`` counts a connection as made only when the
WebSocket handshake has completed: a small wrapping endpoint
(:class:`_ChannelEndpoint`) runs TCP, TLS and the upgrade and hands the service
a stand-in protocol (:class:`_ChannelHandle`) once the channel is open.  A
refused upgrade (401, 403, 404, ...) is therefore a failed attempt and goes
through the retry policy:

- transient failures back off 0, 1, 2, 5, 10, 30, 30 ... s with jitter,
- 404 (no such Hybrid Connection) is retried only every 60 s,
- a channel that stayed up at least ``STABLE_AFTER`` seconds resets the count.

States: ``connecting`` -> ``connected`` -> (drop) -> ``backing-off`` or
``failed`` (401/403/404 or TLS verification: needs an operator or a new token;
the reason is in ``last_error``) -> ``connecting`` ... and ``stopped``.  A new
token (:meth:`Listener.renew`) after a 401/403 reconnects at once.

Keep-alive: WebSocket pings every ``ping_interval`` (30 s); no pong within
``min(ping_interval, 15)`` s drops the channel, which then reconnects.

Control messages: ``accept`` goes to the :class:`~hcm_twisted.agent.rendezvous.Acceptor`;
HTTP ``request`` is answered 501 (this agent forwards TCP only); anything
malformed is logged without its content and skipped.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectionResponse
from OpenSSL import SSL
from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from hcm_twisted.core import messages, proxy, sas, urls
from hcm_twisted.core.bridge import refused_status, set_nodelay
from hcm_twisted.core.configfile import parse_host_port
from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.core.relayconn import EndpointMaker, TlsOptionsCache, default_endpoint_maker

BACKOFF: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
NOT_FOUND_RETRY = 60.0
JITTER = 0.2
STABLE_AFTER = 10.0
CONTROL_MAX_MESSAGE = 1024 * 1024

# Channel states (status "state").
CONNECTING = "connecting"
CONNECTED = "connected"
BACKING_OFF = "backing-off"
FAILED = "failed"
STOPPED = "stopped"

# Makes a client endpoint for (host, port, secure, timeout).


@attrs.frozen(repr=False)
class HcSpec:
    """What a worker needs to listen on one Hybrid Connection (one ``SetHybridConnections`` item)."""

    name: str
    url: str
    endpoint: str | None
    token: str
    ca_certificates: tuple[str, ...] = ()
    ping_interval: float = 30.0
    connect_timeout: float = 5.0
    #: Egress proxy for relay connections: None = the environment decides
    #: (``https_proxy``, ``no_proxy``), "none" = direct, or an ``http://`` URL.
    proxy: str | None = None
    no_proxy: str | None = None

    def __repr__(self) -> str:
        return f"<HcSpec {self.name} endpoint={self.endpoint!r}>"

    @classmethod
    def from_json(cls, obj: Any) -> HcSpec:
        """Build from the JSON item; :class:`MalformedInput` names what is wrong."""
        if not isinstance(obj, dict):
            raise MalformedInput("hybrid connection: must be an object")
        name = obj.get("name")
        if not isinstance(name, str) or not name:
            raise MalformedInput("hybrid connection: 'name' must be a non-empty string")
        what = f"hybrid connection {name[:64]!r}"
        url = obj.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme.lower() not in ("wss", "ws"):
            raise MalformedInput(f"{what}: 'url' must be a wss:// URL")
        token = obj.get("token")
        if not isinstance(token, str) or not token:
            raise MalformedInput(f"{what}: 'token' must be a string")
        endpoint = obj.get("endpoint")
        if endpoint is not None:
            if not isinstance(endpoint, str):
                raise MalformedInput(f"{what}: 'endpoint' must be 'host:port' or null")
            parse_host_port(endpoint, f"{what}: endpoint")
        cas = obj.get("ca_certificates") or []
        if isinstance(cas, str):
            cas = [cas]
        if not isinstance(cas, list) or not all(isinstance(c, str) for c in cas):
            raise MalformedInput(f"{what}: 'ca_certificates' must be a list of paths")
        proxy_url = obj.get("proxy")
        no_proxy = obj.get("no_proxy")
        if proxy_url is not None and not isinstance(proxy_url, str):
            raise MalformedInput(f"{what}: 'proxy' must be a URL, \"none\" or null")
        if no_proxy is not None and not isinstance(no_proxy, str):
            raise MalformedInput(f"{what}: 'no_proxy' must be a string or null")
        if proxy_url and proxy_url.strip().lower() not in ("none", "direct"):
            proxy.parse_proxy_url(proxy_url, f"{what}: proxy")
        return cls(
            name=name,
            proxy=proxy_url,
            no_proxy=no_proxy,
            url=url,
            endpoint=endpoint,
            token=token,
            ca_certificates=tuple(cas),
            ping_interval=_positive(obj, "ping_interval", 30.0, what),
            connect_timeout=_positive(obj, "connect_timeout", 5.0, what),
        )


def _positive(obj: dict[str, Any], key: str, default: float, what: str) -> float:
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise MalformedInput(f"{what}: {key!r} must be a positive number")
    return float(value)


def with_fresh_id(url: str, id: str) -> str:
    """The listen URL with ``sb-hc-id`` set to ``id`` (replacing any given)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k.lower() != "sb-hc-id"]
    query.append(("sb-hc-id", id))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


class ListenRefused(Exception):
    """The relay refused the listen upgrade with an HTTP status (or the channel failed before opening)."""

    def __init__(self, status: int | None, reason: str, tls: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.tls = tls  # TLS failed (an untrusted certificate, a wrong host name)


class ControlProtocol(WebSocketClientProtocol):
    """The control channel's WebSocket; passes everything to its :class:`Listener`."""

    factory: ControlFactory
    _opened_once = False
    _lost: Failure | None = None

    def connectionMade(self) -> None:
        set_nodelay(self.transport)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = reason
        super().connectionLost(reason)

    def onConnect(self, response: ConnectionResponse) -> None:
        pass

    def onOpen(self) -> None:
        self._opened_once = True
        opened, self.factory.opened = self.factory.opened, None
        if opened is not None:
            opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.listener.control_message(self, payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        opened, self.factory.opened = self.factory.opened, None
        if opened is not None and not self._opened_once:
            refused = refused_status(getattr(self, "http_status_line", None))
            if refused is not None:
                status, text = refused
                opened.errback(ListenRefused(status, f"HTTP {status} {text}".strip()))
            elif self._lost is not None and _is_tls_failure(self._lost):
                # TLS failed (e.g. the relay's certificate is not trusted): say so.
                opened.errback(ListenRefused(None, f"TLS: {_describe(self._lost)}", tls=True))
            else:
                opened.errback(ListenRefused(None, reason or "connection closed before the upgrade"))
            return
        self.factory.listener.channel_closed(self, code, reason)


class ControlFactory(WebSocketClientFactory):
    protocol = ControlProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, listener: Listener, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listener = listener
        self.opened: Deferred[ControlProtocol] | None = Deferred()
        self.token = ""  # the token sent in this connection's upgrade request


@implementer(ITransport)
class _HandleTransport:
    """What ClientService sees as the transport of a live channel."""

    def __init__(self, channel: ControlProtocol) -> None:
        self._channel = channel

    def write(self, data: bytes) -> None:
        raise NotImplementedError("the control channel is not written through ClientService")

    def writeSequence(self, data: Iterable[bytes]) -> None:  # noqa: N802 (interface)
        raise NotImplementedError("the control channel is not written through ClientService")

    def loseConnection(self) -> None:  # noqa: N802 (interface)
        self._channel.sendClose(1000, "Shutdown")

    def abortConnection(self) -> None:  # noqa: N802 (interface)
        self._channel.dropConnection(abort=True)

    def getPeer(self) -> IAddress:  # noqa: N802 (interface)
        return self._channel.transport.getPeer()  # type: ignore[union-attr, no-any-return]

    def getHost(self) -> IAddress:  # noqa: N802 (interface)
        return self._channel.transport.getHost()  # type: ignore[union-attr, no-any-return]


class _ChannelHandle(Protocol):
    """ClientService's protocol for one live channel (the channel is its transport's)."""


@implementer(IStreamClientEndpoint)
@attrs.define(eq=False, repr=False)
class _ChannelEndpoint:
    """Connects when the WebSocket upgrade has succeeded (see module docstring)."""

    listener: Listener

    def __repr__(self) -> str:
        return f"<control channel {self.listener.name}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        return self.listener._connect_channel(protocolFactory)


class Listener:
    """The control channel of one Hybrid Connection."""

    _log = Logger()

    def __init__(
        self,
        spec: HcSpec,
        reactor: Any,
        on_accept: Callable[[messages.Accept], None],
        on_request: Callable[[messages.Request, ControlProtocol], None] | None = None,
        endpoint_maker: EndpointMaker | None = None,
        rng: Callable[[], float] = random.random,
        wallclock: Callable[[], float] = time.time,
        tls_cache: TlsOptionsCache | None = None,
    ) -> None:
        self.spec = spec
        self._reactor = reactor
        self._on_accept = on_accept
        self._on_request = on_request
        self.tls_cache = tls_cache or TlsOptionsCache(spec.ca_certificates)
        self.tls_cache.proxy, self.tls_cache.no_proxy = spec.proxy, spec.no_proxy
        self._endpoint_maker = endpoint_maker or default_endpoint_maker(reactor, self.tls_cache)
        self._rng = rng
        self._wallclock = wallclock
        self.state = STOPPED
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self.reconnects = 0
        self._last_status: int | None = None
        self._tls_failed = False
        self._attempts = 0
        self._channel: ControlProtocol | None = None
        self._opened_at: float | None = None
        self._service = ClientService(
            _ChannelEndpoint(self),
            Factory.forProtocol(_ChannelHandle),
            retryPolicy=self._retry_delay,
            clock=reactor,
        )

    # ---- public API -------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def token_expiry(self) -> int | None:
        try:
            return sas.expiry_of(self.spec.token)
        except MalformedInput:
            return None

    def start(self) -> None:
        self._set_state(CONNECTING)
        self._service.startService()

    def stop(self) -> Deferred[None]:
        """Close the channel (cleanly if open) and stop reconnecting."""
        if not self._service.running:
            self._set_state(STOPPED)
            return succeed(None)
        d: Deferred[None] = self._service.stopService()  # type: ignore[assignment]

        def stopped(result: object) -> None:
            self._set_state(STOPPED)

        d.addBoth(stopped)
        return d

    def renew(self, token: str) -> None:
        """Use ``token`` from now on; send ``renewToken`` on the live channel."""
        self.spec = attrs.evolve(self.spec, token=token)
        channel = self._channel
        if channel is not None and self.state == CONNECTED:
            text = messages.encode(messages.RenewToken(token=token))
            channel.sendMessage(text.encode("utf-8"), isBinary=False)
            self._log.debug("renewed token on control channel {name}", name=self.name)
        elif self.state == FAILED and self._last_status in (401, 403):
            # The old token was refused; try the new one now rather than after the back-off.
            self._log.info("new token for {name}: reconnecting now", name=self.name)
            self._restart()

    def update(self, spec: HcSpec) -> None:
        """Apply a changed spec: reconnect if the channel's parameters changed."""
        old = self.spec
        self.spec = spec
        if spec.ca_certificates != old.ca_certificates:
            self.tls_cache.reset(spec.ca_certificates)
        self.tls_cache.proxy, self.tls_cache.no_proxy = spec.proxy, spec.no_proxy
        if (spec.url, spec.ca_certificates, spec.ping_interval, spec.proxy, spec.no_proxy) != (
            old.url, old.ca_certificates, old.ping_interval, old.proxy, old.no_proxy
        ):
            self._restart()
        elif spec.token != old.token:
            self.renew(spec.token)

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "last_error": self.last_error,
            "connected_since": self.connected_since,
            "reconnects": self.reconnects,
            "token_expiry": self.token_expiry,
        }

    # ---- ClientService plumbing ------------------------------------------

    def _restart(self) -> None:
        if not self._service.running:
            return
        d = self._service.stopService()
        d.addCallback(lambda _: self._service.startService())  # type: ignore[union-attr]

    def _retry_delay(self, failed_attempts: int) -> float:
        """The retry policy (ClientService's ``failed_attempts`` is not used: see ``_attempts``)."""
        self._attempts += 1
        if self._last_status == 404:
            base = NOT_FOUND_RETRY
        else:
            base = BACKOFF[min(self._attempts, len(BACKOFF)) - 1]
        delay = base * (1.0 + JITTER * (2.0 * self._rng() - 1.0))
        if self._last_status in (401, 403, 404) or self._tls_failed:
            # Needs an operator (or a new token): "failed", but still retried.
            self._set_state(FAILED)
        else:
            self._set_state(BACKING_OFF)
        self._log.info(
            "control channel {name}: retry in {delay:.1f} s ({error})",
            name=self.name, delay=delay, error=self.last_error,
        )
        return delay

    def _make_factory(self) -> ControlFactory:
        url = with_fresh_id(self.spec.url, str(uuid.uuid4()))
        factory = ControlFactory(
            self,
            url,
            headers={"ServiceBusAuthorization": self.spec.token},
            useragent="hcm-twisted",
            reactor=self._reactor,
        )
        factory.token = self.spec.token
        ping = self.spec.ping_interval
        factory.setProtocolOptions(
            autoPingInterval=ping,
            autoPingTimeout=max(1.0, min(ping, 15.0)),
            openHandshakeTimeout=max(self.spec.connect_timeout, 10.0),
            closeHandshakeTimeout=2.0,
            maxMessagePayloadSize=CONTROL_MAX_MESSAGE,
            maxFramePayloadSize=CONTROL_MAX_MESSAGE,
            perMessageCompressionOffers=[],
            tcpNoDelay=True,
        )
        return factory

    def _connect_channel(self, cs_factory: IProtocolFactory) -> Deferred[IProtocol]:
        self._set_state(CONNECTING)
        factory = self._make_factory()
        secure, host, port, _ = urls.split_ws_url(factory.url)
        try:
            # May raise: an unreadable CA file, a bad proxy URL.
            endpoint = self._endpoint_maker(host, port, secure, self.spec.connect_timeout)
        except Exception:
            failure = Failure()
            self._failed(failure)
            return fail(failure)
        opened = factory.opened
        assert opened is not None
        live: list[ControlProtocol] = []

        def cancel(d: Deferred[IProtocol]) -> None:
            try:
                if live:
                    live[0].dropConnection(abort=True)
                else:
                    connecting.cancel()
            except Exception:
                self._log.failure("control channel {name}: cancelling a connect", name=self.name)

        result: Deferred[IProtocol] = Deferred(cancel)
        try:
            connecting = endpoint.connect(factory)
        except Exception:
            connecting = fail()
        connecting.addCallback(live.append)  # type: ignore[call-overload]

        def tcp_failed(f: Failure) -> None:
            if factory.opened is not None:
                factory.opened = None
                opened.errback(f)

        connecting.addErrback(tcp_failed)

        def on_open(channel: ControlProtocol) -> None:
            if result.called:  # cancelled meanwhile
                channel.dropConnection(abort=True)
                return
            handle = cs_factory.buildProtocol(channel.transport.getPeer())  # type: ignore[union-attr]
            assert handle is not None
            handle.makeConnection(_HandleTransport(channel))
            channel.handle = handle  # type: ignore[attr-defined]
            self._opened(channel)
            result.callback(handle)

        def on_fail(f: Failure) -> None:
            if not result.called:
                self._failed(f)
                result.errback(f)

        opened.addCallbacks(on_open, on_fail)
        return result

    def _failed(self, f: Failure) -> None:
        if f.check(ListenRefused):
            err: ListenRefused = f.value  # type: ignore[assignment]
            self._last_status = err.status
            self._tls_failed = err.tls
            if err.status == 404:
                self.last_error = f"{err.reason} (the Hybrid Connection does not exist)"
            else:
                self.last_error = err.reason
        elif f.check(CancelledError):
            self._last_status = None
            self._tls_failed = False
            self.last_error = "connect cancelled"
        else:
            self._last_status = None
            self._tls_failed = False
            self.last_error = _describe(f)
        # A TLS failure is an error (a certificate problem needs an operator), not a warning.
        emit = self._log.error if self._tls_failed else self._log.warn
        emit("control channel {name} failed: {error}", name=self.name, error=self.last_error)

    def _opened(self, channel: ControlProtocol) -> None:
        self._channel = channel
        self._opened_at = self._reactor.seconds()
        self.connected_since = self._wallclock()
        self._last_status = None
        self._tls_failed = False
        self.last_error = None
        self._set_state(CONNECTED)
        self._log.info("control channel connected: {name}", name=self.name)
        if channel.factory.token != self.spec.token:
            # A token arrived while this channel was being opened with the old one.
            self.renew(self.spec.token)

    # ---- events from the channel -------------------------------------------

    def channel_closed(self, channel: ControlProtocol, code: int | None, reason: str | None) -> None:
        if channel is not self._channel:
            return
        self._channel = None
        self.connected_since = None
        lived = self._reactor.seconds() - (self._opened_at or 0.0)
        if lived >= STABLE_AFTER:
            self._attempts = 0
        stopping = self.state == STOPPED or not self._service.running
        if not stopping:
            self.reconnects += 1
            self._last_status = None
            if code == 1008:
                self.last_error = f"closed by relay: 1008 {reason or 'token expired'}"
            elif code is not None:
                self.last_error = f"closed: {code} {reason or ''}".strip()
            else:
                self.last_error = f"connection lost: {reason or 'dropped'}"
            self._log.info(
                "control channel {name} closed ({error}); reconnecting",
                name=self.name, error=self.last_error,
            )
        handle: IProtocol | None = getattr(channel, "handle", None)
        if handle is not None:
            why = ConnectionDone() if code == 1000 else ConnectionLost(reason or "closed")
            handle.connectionLost(Failure(why))

    def control_message(self, channel: ControlProtocol, payload: bytes, is_binary: bool) -> None:
        if is_binary:
            # A request body after a "request" we answered 501 already: nothing to do.
            return
        try:
            message = messages.parse(payload)
        except MalformedInput as e:
            self._log.warn(
                "control channel {name}: ignoring a malformed message ({error})",
                name=self.name, error=str(e),
            )
            return
        try:
            if isinstance(message, messages.Accept):
                self._on_accept(message)
            elif isinstance(message, messages.Request):
                self._request(channel, message)
            elif isinstance(message, messages.Unknown):
                self._log.info(
                    "control channel {name}: ignoring unknown message {kind!r}",
                    name=self.name, kind=message.kind,
                )
            else:
                self._log.info(
                    "control channel {name}: ignoring unexpected {kind}",
                    name=self.name, kind=type(message).__name__,
                )
        except Exception:
            self._log.failure("control channel {name}: handling a message failed", name=self.name)

    def _request(self, channel: ControlProtocol, request: messages.Request) -> None:
        if request.rendezvous_only:
            if self._on_request is not None:
                self._on_request(request, channel)
            return
        channel.sendMessage(not_implemented(request.id).encode("utf-8"), isBinary=False)
        self._log.info(
            "control channel {name}: HTTP request answered 501 (TCP forwarding only)",
            name=self.name,
        )

    def _set_state(self, state: str) -> None:
        self.state = state


def not_implemented(request_id: str) -> str:
    """The 501 ``response`` for an HTTP-mode request."""
    return messages.encode(
        messages.Response(
            request_id=request_id,
            status_code=501,
            status_description="Not Implemented",
            response_headers={"content-type": "text/plain"},
            body=False,
        )
    )


def _is_tls_failure(f: Failure) -> bool:
    """An OpenSSL error or a service-identity host name mismatch."""
    return bool(f.check(SSL.Error)) or type(f.value).__name__ == "VerificationError"


def _describe(f: Failure) -> str:
    """A short error text without secrets (exception type and message)."""
    value = f.value
    text = str(value).strip()
    name = type(value).__name__
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{name}: {text}" if text else name
