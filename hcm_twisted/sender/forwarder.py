# -*- test-case-name: tests.sender.test_forwarder -*-
"""The app side: local TCP ports forwarded through Hybrid Connections.

For each accepted TCP connection the :class:`Forwarder` of its HC opens a
sender WebSocket (``wss://{ns}/$hc/{hc}?sb-hc-action=connect``, a freshly
minted token in ``ServiceBusAuthorization``, TLS verified) and splices both
with :class:`hcm_twisted.core.bridge.Bridge`.  The app's connection stays
paused until the relay has joined a listener.  When the relay refuses (no
listener: 404, rejection by the listener, auth failure) or cannot be reached,
the app's connection is closed at once and the reason (status and
description, never a secret) is logged and counted.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from hcm_twisted.core import urls
from hcm_twisted.core.bridge import Bridge, BridgeClientFactory, TcpLeg
from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.core.fast import startup_done
from hcm_twisted.core.relayconn import TlsOptionsCache, default_endpoint_maker
from hcm_twisted.sender.config import SenderConfig, SenderHc, listen_description

USER_AGENT = "hcm-twisted-sender"
#: Seconds between attempts to read DNS-mode metadata or to listen, after a failure.
RETRY_INTERVAL = 30.0


@attrs.define(eq=False)
class HcStats:
    """Counters for one HC."""

    accepted: int = 0
    open: int = 0
    joined: int = 0
    failed: int = 0
    bytes_to_relay: int = 0
    bytes_from_relay: int = 0
    last_error: str | None = None
    failures_by_reason: dict[str, int] = attrs.field(factory=dict)


class _AppLeg(TcpLeg):
    """An accepted app connection: opens its sender WebSocket once connected."""

    def __init__(self, bridge: Bridge, forwarder: Forwarder) -> None:
        super().__init__(bridge)
        self.forwarder = forwarder

    def connectionMade(self) -> None:
        super().connectionMade()
        self.forwarder.connection_accepted(self)


class Forwarder(Factory):
    """Accepts app connections for one HC and forwards each through the relay."""

    _log = Logger()

    def __init__(
        self,
        hc: SenderHc,
        reactor: Any,
        ca_certificates: tuple[str, ...] = (),
        token_lifetime: float = 3600.0,
        connect_timeout: float = 30.0,
        linger: float = 60.0,
        ping_interval: float = 0.0,
        proxy: str | None = None,
        no_proxy: str | None = None,
    ) -> None:
        self.hc = hc
        self.ping_interval = ping_interval
        self._reactor = reactor
        self.token_lifetime = token_lifetime
        self.connect_timeout = connect_timeout
        self.linger = linger
        self.stats = HcStats()
        self.bridges: set[Bridge] = set()
        # Verified TLS that resumes sessions, the relay's address remembered for a while,
        # the egress proxy: as the agent's connections to the relay.
        tls_options = TlsOptionsCache(ca_certificates, proxy, no_proxy)
        cs = hc.connection_string
        tls_options.options_for(cs.host, cs.port)  # a bad CA file fails here, at start-up
        self._connect = default_endpoint_maker(reactor, tls_options)

    # -- accepting -----------------------------------------------------------

    def buildProtocol(self, addr: Any) -> _AppLeg:
        bridge = Bridge(reactor=self._reactor, linger=self.linger, name=self.hc.name)
        return _AppLeg(bridge, self)

    def connection_accepted(self, leg: _AppLeg) -> None:
        bridge = leg.bridge
        self.stats.accepted += 1
        self.stats.open += 1
        self.bridges.add(bridge)
        peer = _peer(leg.transport)
        # sb-hc-id: the relay passes it to the listener as the accept id, so one id
        # names this connection in the sender's, the relay's and the agent's logs.
        conn_id = str(uuid.uuid4())
        bridge.when_done().addCallback(self._finished, peer, conn_id, self._reactor.seconds())
        factory = BridgeClientFactory(
            urls.connect_url(self.hc.connection_string, id=conn_id), bridge,
            headers=self.headers(), reactor=self._reactor, useragent=USER_AGENT,
        )
        # Pings keep idle connections alive through NATs and load balancers.  No pong
        # timeout: a leg paused by flow control does not read its pongs.
        factory.setProtocolOptions(
            openHandshakeTimeout=self.connect_timeout,
            autoPingInterval=self.ping_interval,
            autoPingTimeout=0,
        )
        d = self.relay_endpoint().connect(factory)
        d.addErrback(self._connect_failed, bridge)

    def headers(self) -> dict[str, str]:
        """The handshake headers: a sender token unless the HC is anonymous."""
        token = self.hc.connection_string.token(self.token_lifetime, time.time())
        return {"ServiceBusAuthorization": token} if token is not None else {}

    def relay_endpoint(self) -> IStreamClientEndpoint:
        cs = self.hc.connection_string
        return self._connect(cs.host, cs.port, True, self.connect_timeout)

    def _connect_failed(self, failure: Failure, bridge: Bridge) -> None:
        bridge.fail(f"cannot reach the relay: {failure.getErrorMessage()}")

    def _finished(self, bridge: Bridge, peer: str, conn_id: str, started: float) -> None:
        self.bridges.discard(bridge)
        self.stats.open -= 1
        self.stats.bytes_to_relay += bridge.bytes_to_ws
        self.stats.bytes_from_relay += bridge.bytes_to_tcp
        if bridge.joined:
            self.stats.joined += 1
            # One line per connection, at its end.
            self._log.info(
                "{hc}: connection from {peer} (id {id}) closed after {duration:.3f} s, "
                "{up} bytes out, {down} bytes in ({reason})",
                hc=self.hc.name, peer=peer, id=conn_id, up=bridge.bytes_to_ws,
                down=bridge.bytes_to_tcp, duration=self._reactor.seconds() - started,
                reason=bridge.close_reason,
            )
            return
        reason = bridge.failure or bridge.close_reason or "closed before the relay answered"
        self.stats.failed += 1
        self.stats.last_error = reason
        key = reason.split(" ", 1)[0] if reason[:3].isdigit() else reason.split(":", 1)[0]
        self.stats.failures_by_reason[key] = self.stats.failures_by_reason.get(key, 0) + 1
        # A TLS failure (certificate not trusted, expired, wrong name) is an error.
        tls = reason.startswith(("TLS", "SSL")) or "certificate verify failed" in reason
        emit = self._log.error if tls else self._log.warn
        emit(
            "{hc}: connection from {peer} closed, the relay did not connect it: {reason}"
            " (id {id})",
            hc=self.hc.name, peer=peer, reason=reason, id=conn_id,
        )

    def close_all(self, reason: str) -> None:
        for bridge in list(self.bridges):
            bridge.fail(reason, ws_code=1001)


def _peer(transport: Any) -> str:
    try:
        address = transport.getPeer()
    except Exception:
        return "?"
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"{host}:{port}"


def _host_of(port: IListeningPort) -> str:
    address: Any = port.getHost()
    host = getattr(address, "host", None)
    if host is None:
        return str(getattr(address, "name", address))
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{address.port}"


def metadata_client(config: SenderConfig, reactor: Any) -> Any:
    """The web client that reads HCs' user metadata: the config's CAs, proxy and no-proxy."""
    from hcm_twisted.agent import metadata

    return metadata.make_agent(reactor, config.ca_certificates, config.proxy, config.no_proxy)


async def read_endpoint(web: Any, hc: SenderHc, reactor: Any) -> str:
    """``host:port`` from ``hc``'s user metadata on the relay (the runtime GET)."""
    from hcm_twisted.agent import metadata

    return await metadata.fetch_endpoint(web, hc.connection_string, time.time(), reactor)


class SenderService(service.Service):
    """Listens for every configured HC; resolves DNS-mode endpoints first."""

    _log = Logger()

    def __init__(self, config: SenderConfig, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self._reactor = reactor
        self.forwarders: dict[str, Forwarder] = {}
        self.ports: dict[str, IListeningPort] = {}
        self.endpoints: dict[str, str] = {}
        self._retries: dict[str, Any] = {}
        self._stopping = False
        self._web: Any = None  # the metadata web client, made on first use
        for hc in config.hybrid_connections:
            self.forwarders[hc.name] = Forwarder(
                hc, reactor, config.ca_certificates, config.token_lifetime,
                config.connect_timeout, config.linger, config.ping_interval,
                config.proxy, config.no_proxy,
            )

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        for hc in self.config.hybrid_connections:
            self._start(hc)
        startup_done(self._log)

    def _start(self, hc: SenderHc) -> None:
        self._retries.pop(hc.name, None)
        d = defer.ensureDeferred(self._listen(hc))
        d.addErrback(self._failed, hc)

    async def _listen(self, hc: SenderHc) -> None:
        endpoint = hc.endpoint
        if hc.dns_mode and endpoint is None:
            endpoint = await self._read_metadata(hc)
        if endpoint is not None:
            self.endpoints[hc.name] = endpoint
        description = listen_description(hc, endpoint)
        port = await serverFromString(self._reactor, description).listen(self.forwarders[hc.name])
        if self._stopping:
            await port.stopListening()
            return
        self.ports[hc.name] = port
        extra = f" (apps use {endpoint})" if hc.dns_mode else ""
        self._log.info(
            "hcm-sender listening on {address} for {hc}{extra}",
            address=_host_of(port), hc=hc.name, extra=extra,
        )

    async def _read_metadata(self, hc: SenderHc) -> str:
        if self._web is None:
            self._web = metadata_client(self.config, self._reactor)
        return await read_endpoint(self._web, hc, self._reactor)

    def _failed(self, failure: Failure, hc: SenderHc) -> None:
        if self._stopping:
            return
        if failure.check(MalformedInput):
            text = str(failure.value)
        else:
            text = failure.getErrorMessage()
        self._log.error(
            "{hc}: cannot listen: {error}; retrying in {delay} s",
            hc=hc.name, error=text, delay=RETRY_INTERVAL,
        )
        self._retries[hc.name] = self._reactor.callLater(RETRY_INTERVAL, self._start, hc)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self._stopping = True
        for call in self._retries.values():
            if call.active():
                call.cancel()
        self._retries.clear()
        ports, self.ports = list(self.ports.values()), {}
        waits: list[defer.Deferred[Any]] = [
            defer.maybeDeferred(p.stopListening) for p in ports
        ]
        for forwarder in self.forwarders.values():
            st = forwarder.stats
            self._log.info(
                "{hc}: {accepted} connections ({failed} not connected, {open} still open), "
                "{up} bytes out, {down} bytes in",
                hc=forwarder.hc.name, accepted=st.accepted, failed=st.failed, open=st.open,
                up=st.bytes_to_relay, down=st.bytes_from_relay,
            )
            bridges = list(forwarder.bridges)
            forwarder.close_all("hcm-sender is stopping")
            waits.extend(b.when_done() for b in bridges)
        done: defer.Deferred[None] = defer.Deferred()
        call = self._reactor.callLater(5, done.callback, None)

        def _all_closed(_: object) -> None:
            if call.active():
                call.cancel()
                done.callback(None)

        defer.DeferredList(waits, consumeErrors=True).addCallback(_all_closed)
        return done
