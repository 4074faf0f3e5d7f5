"""Test helpers: a scripted relay on the far side of a ``StringTransport``.

Autobahn client protocols are connected to ``StringTransport`` objects by a fake
endpoint; the test plays the relay by answering the upgrade request and by
writing (unmasked) server frames, and decodes the (masked) client frames.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def use_clock(case: SynchronousTestCase, clock: MemoryReactorClock) -> None:
    """Send autobahn's timers (txaio) to ``clock`` for the duration of the test."""
    config: Any = txaio.config  # type: ignore[attr-defined]
    old = config.loop
    config.loop = clock
    case.addCleanup(setattr, config, "loop", old)


def parse_request(data: bytes) -> tuple[str, dict[str, str]]:
    """``(request target, headers)`` of an HTTP upgrade request (header names lower-cased)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    target = lines[0].split(" ")[1]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return target, headers


def switching_protocols(request: bytes, protocol: str | None = None) -> bytes:
    _, headers = parse_request(request)
    key = headers["sec-websocket-key"]
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    extra = f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else ""
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
    ).encode()


def server_frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n <= 125:
        header = struct.pack("!BB", first, n)
    elif n <= 0xFFFF:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return server_frame(struct.pack("!H", code) + reason.encode(), opcode=0x8)


def client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Decode the masked frames a client wrote: ``[(opcode, payload)]``."""
    out = []
    i = 0
    while i < len(data):
        opcode = data[i] & 0x0F
        masked = data[i + 1] & 0x80
        n = data[i + 1] & 0x7F
        i += 2
        if n == 126:
            (n,) = struct.unpack("!H", data[i : i + 2])
            i += 2
        elif n == 127:
            (n,) = struct.unpack("!Q", data[i : i + 8])
            i += 8
        mask = data[i : i + 4] if masked else b"\0\0\0\0"
        if masked:
            i += 4
        payload = bytes(b ^ mask[k % 4] for k, b in enumerate(data[i : i + n]))
        i += n
        out.append((opcode, payload))
    return out


def text_messages(data: bytes) -> list[Any]:
    """The JSON text messages in what a client wrote."""
    return [json.loads(p) for op, p in client_frames(data) if op == 0x1]


class LenientTransport(StringTransport):
    """A StringTransport that, like real ones, tolerates unregistering no producer."""

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Connects a factory's protocol to a ``StringTransport``, or fails as told."""

    def __init__(self, owner: FakeNetwork, host: str, port: int, secure: bool, timeout: float):
        self.owner = owner
        self.host, self.port, self.secure, self.timeout = host, port, secure, timeout

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.owner.attempts.append(self)
        if self.owner.refuse:
            return fail(ConnectionRefusedError("refused by the test"))
        if self.owner.hold:
            d: Deferred[IProtocol] = Deferred()
            self.owner.held.append((d, factory))
            return d
        proto = factory.buildProtocol(IPv4Address("TCP", self.host, self.port))
        assert proto is not None
        transport = LenientTransport()
        self.owner.connections.append((proto, transport))
        proto.makeConnection(transport)
        return succeed(proto)


class FakeNetwork:
    """An endpoint maker (host, port, secure, timeout) whose connections the test scripts."""

    def __init__(self) -> None:
        self.refuse = False
        self.hold = False
        self.attempts: list[FakeEndpoint] = []
        self.connections: list[tuple[Any, StringTransport]] = []
        self.held: list[tuple[Deferred[IProtocol], IProtocolFactory]] = []

    def __call__(self, host: str, port: int, secure: bool, timeout: float) -> FakeEndpoint:
        return FakeEndpoint(self, host, port, secure, timeout)

    def tcp(self, host: str, port: int, timeout: float) -> FakeEndpoint:
        return FakeEndpoint(self, host, port, False, timeout)

    @property
    def last(self) -> tuple[Any, StringTransport]:
        return self.connections[-1]
