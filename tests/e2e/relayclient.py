"""A small autobahn WebSocket client for relay tests (listener, sender and rendezvous legs)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IReactorTime

from hcm_twisted.core import sas, tls


class HandshakeFailed(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class Client(WebSocketClientProtocol):  # type: ignore[misc]
    factory: ClientFactory
    transport: Any

    def __init__(self) -> None:
        super().__init__()
        self.messages: defer.DeferredQueue[tuple[bytes, bool]] = defer.DeferredQueue()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed: defer.Deferred[tuple[int | None, str | None]] = defer.Deferred()
        self.opened = False
        self.hold_close = False
        self.held_close: defer.Deferred[tuple[int | None, bytes | None]] = defer.Deferred()

    def onConnect(self, response: Any) -> None:
        self.response = response

    def onOpen(self) -> None:
        self.opened = True
        self.factory.done.callback(self)

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> Any:
        if self.hold_close and self.state == self.STATE_OPEN and not self.held_close.called:
            # Do not answer yet (half-close): the test answers later.
            self.held_close.callback((code, reasonRaw))
            return None
        return super().onCloseFrame(code, reasonRaw)  # type: ignore[arg-type]

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.put((payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code = code
        self.close_reason = reason
        if not self.opened and not self.factory.done.called:
            line = getattr(self, "http_status_line", None) or ""
            parts = line.split(" ", 2)
            if len(parts) >= 2 and parts[1].isdigit():
                self.factory.done.errback(
                    HandshakeFailed(int(parts[1]), parts[2] if len(parts) > 2 else "")
                )
            else:
                self.factory.done.errback(HandshakeFailed(0, reason or "connection lost"))
        if not self.closed.called:
            self.closed.callback((code, reason))

    async def json(self) -> dict[str, Any]:
        payload, binary = await self.messages.get()
        assert not binary, "expected a text message"
        return json.loads(payload)  # type: ignore[no-any-return]


class ClientFactory(WebSocketClientFactory):  # type: ignore[misc]
    protocol = Client  # type: ignore[assignment]

    def __init__(self, url: str, headers: dict[str, str] | None, protocols: list[str] | None):
        super().__init__(url, headers=headers or {}, protocols=protocols or [])
        self.done: defer.Deferred[Client] = defer.Deferred()
        self.setProtocolOptions(
            autoFragmentSize=0, maxFramePayloadSize=0, maxMessagePayloadSize=0,
            openHandshakeTimeout=20, closeHandshakeTimeout=5, utf8validateIncoming=False,
        )


def connect(url: str, ca_path: str, headers: dict[str, str] | None = None,
            protocols: list[str] | None = None) -> defer.Deferred[Client]:
    """Open a WebSocket; fires with the open :class:`Client` or fails with HandshakeFailed."""
    factory = ClientFactory(url, headers, protocols)
    ctx = tls.client_options("localhost", tls.load_ca_certificates(ca_path)) \
        if url.startswith("wss:") else None
    connectWS(factory, ctx, timeout=20)
    return factory.done


def token(port: int, hc: str, rule: str, key: str, lifetime: float = 3600,
          now: float | None = None) -> str:
    return sas.mint(f"http://localhost:{port}/{hc}", rule, key, lifetime=lifetime, now=now)


def listen_url(port: int, hc: str, tok: str | None = None, id: str | None = None) -> str:
    url = f"wss://localhost:{port}/$hc/{hc}?sb-hc-action=listen"
    if id:
        url += f"&sb-hc-id={quote(id, safe='')}"
    if tok:
        url += f"&sb-hc-token={quote(tok, safe='')}"
    return url


def connect_url(port: int, hc: str, tok: str | None = None, id: str | None = None,
                suffix: str = "", query: str = "") -> str:
    url = f"wss://localhost:{port}/$hc/{hc}{suffix}?{query + '&' if query else ''}sb-hc-action=connect"
    if id:
        url += f"&sb-hc-id={quote(id, safe='')}"
    if tok:
        url += f"&sb-hc-token={quote(tok, safe='')}"
    return url


def sleep(seconds: float, clock: IReactorTime = reactor) -> defer.Deferred[None]:  # type: ignore[assignment]
    from twisted.internet.task import deferLater

    return deferLater(clock, seconds, lambda: None)
