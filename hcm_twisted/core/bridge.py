# -*- test-case-name: tests.core.test_bridge -*-
"""Splice a TCP connection and a WebSocket into one byte stream.

Used by agent workers (WebSocket = rendezvous client, TCP = connection to the
endpoint) and by the sender (TCP = accepted app connection, WebSocket = sender
client).  A :class:`Bridge` joins a :class:`TcpLeg` and a protocol built with
the :class:`WebSocketLeg` mixin once both are connected.

Design
------
- Flow control: each leg's transport is registered as a streaming producer on
  the other leg's transport, through a :class:`_Valve`.  When a transport's
  write buffer fills, Twisted pauses the valve, which stops reading the other
  leg; when it drains, reading resumes.  Memory per connection therefore stays
  bounded (a transport buffer plus at most one read) whatever the speeds.
  The valve also keeps the first-connected leg paused until the other leg is
  there (as ``twisted.protocols.portforward`` does), and it turns Twisted's
  ``stopProducing`` (sent when a consumer's connection is lost) into "resume"
  so that closing stays under the bridge's control.
- WebSocket -> TCP: payload is written to TCP as each frame's data arrives
  (autobahn's frame-level hooks), so big messages are never reassembled.
- TCP -> WebSocket: each ``dataReceived`` chunk goes out as one binary message
  written as ``[header, payload]`` (no join; the client mask is applied by
  autobahn's native masker).
- Close: TCP EOF (half-close) or close -> WebSocket Close 1000 after the data
  queued so far; the WebSocket keeps delivering the peer's data until the
  peer's Close arrives.  A Close 1000/1001 from the WebSocket peer half-closes
  TCP (``loseWriteConnection`` after flushing) and data from TCP keeps flowing
  to the WebSocket until TCP reaches EOF, then the Close is answered.  Other
  close codes and lost connections end the TCP connection after flushing.
  ``linger`` bounds how long a half-closed bridge may stay open.
"""

from __future__ import annotations

import random
import struct
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from hcm_twisted.core.fast import flush_tls, frame_header, mask_payload, write_through
from hcm_twisted.core.timers import cancel

__all__ = [
    "Bridge",
    "TcpLeg",
    "WebSocketLeg",
    "WebSocketClientLeg",
    "BridgeClientFactory",
    "tune_factory",
    "set_nodelay",
]

_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSING = WebSocketProtocol.STATE_CLOSING
_CLOSED = WebSocketProtocol.STATE_CLOSED

#: Close codes from the WebSocket peer that mean "no more data from me" (half-close).
_GRACEFUL = (1000, 1001)


def graceful_close(code: int | None) -> bool:
    """Whether a WebSocket Close ``code`` ends the stream normally: 1000, 1001, or no code
    at all (RFC 6455's 1005, what ``ws.close()`` sends in Node); anything else cut it."""
    return code is None or code in _GRACEFUL


DEFAULT_LINGER = 60.0


def set_nodelay(transport: Any) -> None:
    """``setTcpNoDelay(True)`` on a transport (TLS wrappers pass it down); ignore failures."""
    for candidate in (transport, getattr(transport, "transport", None)):
        if candidate is None:
            continue
        try:
            candidate.setTcpNoDelay(True)
            return
        except Exception:  # noqa: S110 (unix sockets, memory transports)
            continue


@implementer(IPushProducer)
class _Valve:
    """Pause a transport's reading while any reason to pause holds.

    Registered as the streaming producer of the *other* leg's transport: its
    ``pauseProducing``/``resumeProducing`` are that transport's buffer state.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.reasons: set[str] = set()
        self.dead = False

    @property
    def paused(self) -> bool:
        return bool(self.reasons)

    def pause(self, reason: str) -> None:
        if self.dead:
            return
        if not self.reasons:
            self.transport.pauseProducing()
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        if self.dead or reason not in self.reasons:
            return
        self.reasons.discard(reason)
        if not self.reasons:
            self.transport.resumeProducing()

    # IPushProducer, driven by the other transport's write buffer.
    def pauseProducing(self) -> None:
        self.pause("peer-buffer")

    def resumeProducing(self) -> None:
        self.resume("peer-buffer")

    def stopProducing(self) -> None:
        # The consumer's connection is gone: the bridge decides how to close.
        self.resume("peer-buffer")


class Bridge:
    """One spliced connection: a TCP leg and a WebSocket leg.

    Counters: ``bytes_to_ws`` (read from TCP, sent on the WebSocket) and
    ``bytes_to_tcp`` (received on the WebSocket, written to TCP).  ``close_reason``
    says why it ended.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: IReactorTime | None = None,
        linger: float = DEFAULT_LINGER,
        name: str = "",
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor  # type: ignore[assignment]
        self._reactor: IReactorTime = reactor  # type: ignore[assignment]
        self.name = name
        self.linger = linger
        self.tcp: TcpLeg | None = None
        self.ws: WebSocketLeg | None = None
        self._tcp_valve: _Valve | None = None
        self._ws_valve: _Valve | None = None
        self._to_ws_pending: list[bytes] = []
        self._to_tcp_pending: list[bytes] = []
        self.bytes_to_ws = 0
        self.bytes_to_tcp = 0
        self.joined = False  # both legs are up (set once, by _join)
        self._tcp_write_shut = False  # TCP half-closed after the WebSocket peer's Close
        self.tcp_eof = False  # TCP peer sent EOF (or is gone)
        self.tcp_gone = False  # TCP connection lost (or never made)
        self.ws_peer_closed = False  # the WebSocket peer sent Close
        self.ws_gone = False  # WebSocket connection lost (or never opened)
        self._ws_broken = False  # it ended with an error (not Close 1000/1001): reset TCP
        self.close_reason: str | None = None
        self.failure: str | None = None
        self._linger_call: IDelayedCall | None = None
        self._done = False
        self._waiters: list[defer.Deferred[Bridge]] = []

    def __repr__(self) -> str:
        return (
            f"<Bridge {self.name} to_ws={self.bytes_to_ws} to_tcp={self.bytes_to_tcp}"
            f" done={self._done}>"
        )

    # -- public ---------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._done

    def when_done(self) -> defer.Deferred[Bridge]:
        """A Deferred fired (with this bridge) once both legs are finished."""
        if self._done:
            return defer.succeed(self)
        d: defer.Deferred[Bridge] = defer.Deferred()
        self._waiters.append(d)
        return d

    def fail(self, reason: str, ws_code: int = 1011) -> None:
        """End the bridge now: a leg could not be connected, or the caller gives up.

        The TCP leg is closed after flushing; an open WebSocket gets Close
        ``ws_code``.  A leg that was never connected counts as finished.
        """
        if self.failure is None:
            self.failure = reason
        if self.close_reason is None:
            self.close_reason = reason
        if self.tcp is None:
            self.tcp_gone = self.tcp_eof = True
        if self.ws is None:
            self.ws_gone = True
        if self.tcp is not None and not self.tcp_gone:
            self._resume_all()
            self._close_tcp()
        if self.ws is not None and not self.ws_gone:
            self.ws.close_leg(ws_code, reason[:120])
        self._check_done()

    # -- legs report here -------------------------------------------------

    def tcp_connected(self, leg: TcpLeg) -> None:
        if self.tcp is not None:
            raise RuntimeError("bridge already has a TCP leg")
        self.tcp = leg
        assert leg.transport is not None
        set_nodelay(leg.transport)
        write_through(leg.transport)
        self._tcp_valve = _Valve(leg.transport)
        if self.ws_gone:
            # The WebSocket failed before TCP connected.
            leg.transport.loseConnection()
            return
        if self.ws is None:
            self._tcp_valve.pause("unjoined")
        else:
            self._join()

    def ws_opened(self, leg: WebSocketLeg) -> None:
        if self.ws is not None:
            raise RuntimeError("bridge already has a WebSocket leg")
        self.ws = leg
        set_nodelay(leg.transport)
        write_through(leg.transport)
        self._ws_valve = _Valve(leg.transport)
        if self.tcp_gone and self.tcp is None:
            leg.close_leg(1011, self.failure or "no TCP connection")
            return
        if self.tcp is None:
            self._ws_valve.pause("unjoined")
        else:
            self._join()

    def _join(self) -> None:
        assert self.tcp is not None and self.ws is not None
        assert self._tcp_valve is not None and self._ws_valve is not None
        self.joined = True
        tcp_t: Any = self.tcp.transport
        ws_t: Any = self.ws.transport
        if not self.tcp_gone:
            tcp_t.registerProducer(self._ws_valve, True)
        if not self.ws_gone:
            ws_t.registerProducer(self._tcp_valve, True)
        if self._to_tcp_pending:
            pending, self._to_tcp_pending = self._to_tcp_pending, []
            for data in pending:
                self._write_tcp(data)
        if self._to_ws_pending:
            pending, self._to_ws_pending = self._to_ws_pending, []
            for data in pending:
                self._write_ws(data)
        self._tcp_valve.resume("unjoined")
        self._ws_valve.resume("unjoined")
        # Events that happened before the join.
        if self.ws_peer_closed:
            self._on_ws_peer_closed()
        if self.tcp_eof or self.tcp_gone:
            self._on_tcp_eof()
        if self.ws_gone:
            self._on_ws_gone()

    # TCP -> WebSocket

    def from_tcp(self, data: bytes) -> None:
        if not self.joined:
            self._to_ws_pending.append(data)
            return
        self._write_ws(data)

    def _write_ws(self, data: bytes) -> None:
        assert self.ws is not None
        if self.ws.send_binary(data):
            self.bytes_to_ws += len(data)
            # Send the TLS record now, not on the next reactor iteration (latency).
            flush_tls(self.ws.transport)

    def tcp_eof_received(self) -> None:
        self.tcp_eof = True
        if self.joined:
            self._on_tcp_eof()

    def tcp_lost(self, reason: Failure) -> None:
        self.tcp_gone = True
        self.tcp_eof = True
        if self._tcp_valve is not None:
            self._tcp_valve.dead = True
        if self._ws_valve is not None:
            # Whatever the TCP buffer said, the WebSocket must be read to its end.
            self._ws_valve.resume("peer-buffer")
        if self.ws is not None and not self.ws_gone:
            transport: Any = self.ws.transport
            try:
                transport.unregisterProducer()
            except Exception:  # noqa: S110
                pass
        if self.joined and reason.check(ConnectionDone) is None and self.ws is not None \
                and not self.ws_gone:
            # A reset or broken TCP connection cuts the stream: say so (1011), not 1000.
            if self.close_reason is None:
                self.close_reason = "tcp connection lost"
            self.ws.close_leg(1011, "connection lost")
        elif self.joined:
            self._on_tcp_eof()
        elif self.ws is not None:
            self._ws_valve.resume("unjoined")  # type: ignore[union-attr]
            self.ws.close_leg(1000, None)
        self._check_done()

    def _on_tcp_eof(self) -> None:
        """TCP will send nothing more: finish the WebSocket side of the stream."""
        if self.ws is None or self.ws_gone:
            if self.tcp is not None and not self.tcp_gone:
                self._close_tcp()
            return
        if self.close_reason is None:
            self.close_reason = "tcp closed"
        self.ws.close_leg(1000, None)
        if self.ws_peer_closed and self.tcp is not None and not self.tcp_gone:
            # Both directions are finished (a reset if the peer's Close was an error).
            self._on_ws_gone()

    # WebSocket -> TCP

    def from_ws(self, data: bytes) -> None:
        if not data:
            return
        if not self.joined:
            self._to_tcp_pending.append(data)
            return
        self._write_tcp(data)

    def _write_tcp(self, data: bytes) -> None:
        if self.tcp_gone or self._tcp_write_shut:
            return
        self.tcp.transport.write(data)  # type: ignore[union-attr]
        self.bytes_to_tcp += len(data)

    def ws_peer_closed_graceful(self) -> None:
        """The WebSocket peer sent Close 1000/1001 and we have not closed yet."""
        self.ws_peer_closed = True
        if self.joined:
            self._on_ws_peer_closed()

    def _on_ws_peer_closed(self) -> None:
        if self.close_reason is None:
            self.close_reason = "websocket closed"
        if self.tcp is None or self.tcp_gone:
            if self.ws is not None:
                self.ws.close_leg(1000, None)
            return
        if self.tcp_eof:
            # TCP is done too: answer the Close and end TCP.
            if self.ws is not None:
                self.ws.close_leg(1000, None)
            self._close_tcp()
            return
        self._tcp_write_shut = True
        self._close_tcp(half=True)
        if self.linger and self._linger_call is None:
            self._linger_call = self._reactor.callLater(self.linger, self._linger_over)

    def _unregister_from_tcp(self) -> None:
        """Nothing more comes from the WebSocket: take its valve off the TCP transport.

        Twisted does not (half-)close a transport while a producer is registered:
        when the buffer drains with the producer paused it resumes the producer
        instead, and the close never happens.
        """
        if self.tcp is None or self.tcp_gone:
            return
        transport: Any = self.tcp.transport
        valve = self._ws_valve
        if valve is None:
            return
        producer = getattr(transport, "producer", None)
        if producer is not None and producer is valve:
            transport.unregisterProducer()
        valve.resume("peer-buffer")

    def _linger_over(self) -> None:
        self._linger_call = None
        if not self._done:
            self._log.info(
                "bridge {name}: half-closed for {linger} s, closing", name=self.name,
                linger=self.linger,
            )
            self.close_reason = "half-close linger expired"
            if self.ws is not None and not self.ws_gone:
                self.ws.close_leg(1000, None)
                transport: Any = self.ws.transport
                if getattr(transport, "producer", None) is not None:
                    transport.unregisterProducer()
                transport.loseConnection()
            if self.tcp is not None and not self.tcp_gone:
                self._close_tcp()

    def ws_lost(self, code: int | None, reason: str | None, opened: bool) -> None:
        """The WebSocket connection is gone (``opened``: it had been open)."""
        self.ws_gone = True
        if not opened:
            if self.failure is None:
                self.failure = reason or "websocket connection failed"
        if self._ws_valve is not None:
            self._ws_valve.dead = True
        if self._tcp_valve is not None:
            self._tcp_valve.resume("peer-buffer")
            self._tcp_valve.resume("unjoined")
        if self.close_reason is None:
            self.close_reason = (
                f"websocket closed ({code})" if opened else (reason or "websocket failed")
            )
        if self.tcp is not None and not self.tcp_gone:
            transport: Any = self.tcp.transport
            try:
                transport.unregisterProducer()
            except Exception:  # noqa: S110
                pass
        if opened and not graceful_close(code):
            self._ws_broken = True
        self._on_ws_gone()
        self._check_done()

    def _on_ws_gone(self) -> None:
        if self.tcp is not None and not self.tcp_gone:
            if self._ws_broken:
                # The stream was cut: reset TCP so the app cannot take a part for the whole.
                transport: Any = self.tcp.transport
                if hasattr(transport, "abortConnection"):
                    transport.abortConnection()
                    return
            self._close_tcp()

    def _close_tcp(self, half: bool = False) -> None:
        """Close (or half-close) TCP after flushing.

        The WebSocket's valve is unregistered first: Twisted does not finish a
        pending ``loseConnection``/``loseWriteConnection`` when the buffer drains
        while a streaming producer is registered and paused (it resumes the
        producer instead).
        """
        if self.tcp is None or self.tcp_gone:
            return
        transport: Any = self.tcp.transport
        self._unregister_from_tcp()
        if half and IHalfCloseableDescriptor.providedBy(transport):
            transport.loseWriteConnection()  # type: ignore[attr-defined]  # plain TCP only
        else:
            transport.loseConnection()

    def _resume_all(self) -> None:
        for valve in (self._tcp_valve, self._ws_valve):
            if valve is not None:
                valve.resume("unjoined")
                valve.resume("peer-buffer")

    def _check_done(self) -> None:
        if self._done:
            return
        tcp_done = self.tcp_gone or self.tcp is None and self.failure is not None
        ws_done = self.ws_gone or self.ws is None and self.failure is not None
        if tcp_done and ws_done:
            self._done = True
            cancel(self._linger_call)
            self._linger_call = None
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(self)

    # -- state for tests and status ------------------------------------

    @property
    def tcp_paused(self) -> bool:
        return self._tcp_valve is not None and self._tcp_valve.paused

    @property
    def ws_paused(self) -> bool:
        return self._ws_valve is not None and self._ws_valve.paused


@implementer(IHalfCloseableProtocol)
class TcpLeg(Protocol):
    """The TCP side of a bridge (accepted app connection, or connection to an endpoint)."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def connectionMade(self) -> None:
        self.bridge.tcp_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.bridge.from_tcp(data)

    def readConnectionLost(self) -> None:
        self.bridge.tcp_eof_received()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.bridge.tcp_lost(reason)


class WebSocketLeg:
    """Mixin for an autobahn WebSocket protocol: the WebSocket side of a bridge.

    Put it before the autobahn class: ``class X(WebSocketLeg, WebSocketClientProtocol)``.
    The bridge is taken from ``self.bridge`` or else ``self.factory.bridge``.
    Incoming data is forwarded frame by frame; messages are never reassembled.
    """

    bridge: Bridge | None = None
    _leg_opened = False
    _leg_drop_call: IDelayedCall | None = None
    #: How long a client waits for the server to drop TCP after answering a Close.
    server_drop_timeout = 5.0

    # autobahn attributes used here (set by WebSocketProtocol).
    state: int
    transport: Any
    factory: Any

    def _leg_bridge(self) -> Bridge:
        if self.bridge is None:
            self.bridge = self.factory.bridge
        assert self.bridge is not None
        return self.bridge

    def dataReceived(self, data: bytes) -> None:
        # Skip autobahn's per-read debug formatting (hltype/hlval whatever the level).
        self._dataReceived(data)  # type: ignore[attr-defined]

    def onOpen(self) -> None:
        self._leg_opened = True
        self._leg_bridge().ws_opened(self)

    def onMessageBegin(self, isBinary: bool) -> None:
        pass

    def onMessageFrameBegin(self, length: int) -> None:
        pass

    def onMessageFrameData(self, payload: bytes) -> None:
        self._leg_bridge().from_ws(payload)

    def onMessageFrameEnd(self) -> None:
        pass

    def onMessageEnd(self) -> None:
        pass

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> bool | None:
        bridge = self._leg_bridge()
        if (
            self.state == _OPEN
            and self._leg_opened
            and graceful_close(code)
            and not bridge.tcp_eof
        ):
            # Half-close: keep sending what TCP still has; answer the Close later.
            ws: Any = self
            ws.wasClean = True
            ws.remoteCloseCode = code
            ws.remoteCloseReason = None
            bridge.ws_peer_closed_graceful()
            return None
        if self.state == _OPEN and self._leg_opened:
            # Non-graceful close: the peer is gone; the default answers it.
            bridge.ws_peer_closed = True
            if not graceful_close(code):
                bridge._ws_broken = True  # the stream was cut: reset TCP when it ends
        return super().onCloseFrame(code, reasonRaw)  # type: ignore[misc, no-any-return]

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        cancel(self._leg_drop_call)
        self._leg_drop_call = None
        bridge = self.bridge if self.bridge is not None else getattr(self.factory, "bridge", None)
        if bridge is not None:
            bridge.ws_lost(code, self._leg_failure_text(reason), self._leg_opened)

    def _leg_failure_text(self, reason: str | None) -> str | None:
        return reason

    def send_binary(self, data: bytes) -> bool:
        """Send ``data`` as one binary message; False if the WebSocket can no longer send."""
        if self.state != _OPEN:
            return False
        ws: Any = self
        if ws.factory.isServer and not ws.maskServerFrames or (
            not ws.factory.isServer and not ws.maskClientFrames
        ):
            ws.transport.write(frame_header(2, True, len(data)) + data)
        else:
            mask = _random_mask()
            ws.transport.write(frame_header(2, True, len(data), mask) + mask_payload(mask, data))
        return True

    def close_leg(self, code: int, reason: str | None) -> None:
        """Send Close (or answer the peer's) unless already closing."""
        ws: Any = self
        if self.state == _OPEN:
            reason_raw = reason.encode("utf-8")[:120] if reason else None
            bridge = self.bridge
            is_reply = bool(bridge is not None and bridge.ws_peer_closed)
            ws.sendCloseFrame(code=code, reasonUtf8=reason_raw, isReply=is_reply)
            if is_reply:
                if ws.factory.isServer:
                    ws.dropConnection(abort=False)
                else:
                    self._leg_drop_call = self._leg_bridge()._reactor.callLater(
                        self.server_drop_timeout, self._leg_drop
                    )
        elif self.state not in (_CLOSING, _CLOSED):
            ws.dropConnection(abort=True)

    def _leg_drop(self) -> None:
        self._leg_drop_call = None
        ws: Any = self
        if self.state != _CLOSED:
            ws.dropConnection(abort=False)


def _random_mask() -> bytes:
    # As autobahn does: masking is not a secret (RFC 6455 section 10.3 concerns browsers).
    return struct.pack("!I", random.getrandbits(32))  # noqa: S311


def refused_status(status_line: str | None) -> tuple[int, str] | None:
    """``(status, reason phrase)`` from a WebSocket upgrade's HTTP status line, if any."""
    pieces = (status_line or "").split(None, 2)
    if len(pieces) >= 2 and pieces[1].isdigit():
        return int(pieces[1]), pieces[2].strip() if len(pieces) > 2 else ""
    return None


class WebSocketClientLeg(WebSocketLeg, WebSocketClientProtocol):  # type: ignore[misc]
    """A WebSocket client leg; remembers the HTTP status of a failed handshake."""

    handshake_status: int | None = None
    handshake_reason: str | None = None
    lost_reason: Failure | None = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost_reason = reason  # before autobahn's onClose asks for the failure text
        super().connectionLost(reason)

    def failHandshake(self, reason: str) -> None:
        refused = refused_status(getattr(self, "http_status_line", None))
        if refused is not None and refused[0] != 101:
            self.handshake_status, self.handshake_reason = refused
        super().failHandshake(reason)

    def _leg_failure_text(self, reason: str | None) -> str | None:
        if self._leg_opened:
            return reason
        if self.handshake_status is not None:
            return f"{self.handshake_status} {self.handshake_reason or ''}".strip()
        lost = self.lost_reason
        if lost is not None and type(lost.value).__name__ == "VerificationError":
            # service_identity: the certificate is not for this host name.
            return f"TLS: certificate verify failed: {str(lost.value)[:200]}"
        was_not_clean = getattr(self, "wasNotCleanReason", None)
        return was_not_clean or reason


def tune_factory(factory: Any, linger: float = DEFAULT_LINGER) -> None:
    """autobahn options for a data path: no timings, no UTF-8 checks, no size limits.

    ``closeHandshakeTimeout`` is the half-close linger: after our Close the peer
    may still send data until its own Close.
    """
    options: dict[str, Any] = {
        "utf8validateIncoming": False,
        "maxFramePayloadSize": 0,
        "maxMessagePayloadSize": 0,
        "autoFragmentSize": 0,
        "failByDrop": True,
        "openHandshakeTimeout": 30,
        "closeHandshakeTimeout": max(linger, 1.0),
        "tcpNoDelay": True,
    }
    if factory.isServer:
        options["perMessageCompressionAccept"] = lambda offers: None
    else:
        options["serverConnectionDropTimeout"] = 5
    factory.setProtocolOptions(**options)
    factory.trackTimings = False
    factory.logFrames = False
    factory.logOctets = False


class BridgeClientFactory(WebSocketClientFactory):
    """A WebSocket client factory whose protocol joins ``bridge``."""

    protocol = WebSocketClientLeg

    def __init__(self, url: str, bridge: Bridge, headers: dict[str, str] | None = None,
                 reactor: Any = None, **kwargs: Any) -> None:
        super().__init__(url, headers=headers or {}, reactor=reactor, **kwargs)
        self.bridge = bridge
        tune_factory(self, bridge.linger)

    def buildProtocol(self, addr: Any) -> Any:
        proto: Any = super().buildProtocol(addr)
        proto.bridge = self.bridge
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.bridge.fail(f"cannot connect: {reason.getErrorMessage()}")
