"""Socket-free helpers for relay tests: a hub on a fake clock, raw WebSocket bytes."""

from __future__ import annotations

import base64
import os
import struct
import time
from pathlib import Path
from typing import Any

import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest

from hcm_twisted.core import sas
from hcm_twisted.relay import server
from hcm_twisted.relay.namespace import Namespace, parse_config

LISTEN_KEY = "bGlzdGVuLWtleS1mb3ItdGVzdHMtb25seS0xMTExMTE="
SEND_KEY = "c2VuZC1rZXktZm9yLXRlc3RzLW9ubHktMjIyMjIyMjI="
ROOT_KEY = "cm9vdC1rZXktZm9yLXRlc3RzLW9ubHktMDAwMDAwMDA="


class Transport(StringTransport):
    """Like a TCP transport: unregistering without a producer is not an error."""

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()


def config_dict(**top: Any) -> dict[str, Any]:
    hc = {
        "name": "hc1",
        "user-metadata": '[{"key":"endpoint","value":"db:1433"}]',
        "authorization-rule": [
            {"name": "defaultListener", "rights": ["Listen"], "primary-key": LISTEN_KEY},
            {"name": "defaultSender", "rights": ["Send"], "primary-key": SEND_KEY},
        ],
    }
    data: dict[str, Any] = {
        "namespace": "localhost",
        "authorization-rule": [{"name": "RootManageSharedAccessKey",
                                "rights": ["Manage", "Listen", "Send"], "primary-key": ROOT_KEY}],
        "hybrid-connection": [hc, {"name": "open", "requires-client-authorization": False,
                                   "authorization-rule": hc["authorization-rule"]}],
    }
    data.update(top)
    return data


def listen_token(hc: str = "hc1", lifetime: float = 3600, now: float | None = None) -> str:
    return sas.mint(f"http://localhost/{hc}", "defaultListener", LISTEN_KEY, lifetime, now=now)


def send_token(hc: str = "hc1", lifetime: float = 3600, now: float | None = None) -> str:
    return sas.mint(f"http://localhost/{hc}", "defaultSender", SEND_KEY, lifetime, now=now)


def handshake(target: str, headers: dict[str, str] | None = None,
              protocols: list[str] | None = None, host: str = "localhost:9443") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if protocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def client_frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"\x01\x02\x03\x04",
                 ) -> bytes:
    """A masked (client-to-server) frame."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n <= 125:
        head = bytes((b0, 0x80 | n))
    elif n <= 0xFFFF:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return client_frame(8, struct.pack("!H", code) + reason)


def parse_frames(data: bytes) -> list[tuple[bool, int, bytes]]:
    """Unmasked server frames in ``data`` -> ``[(fin, opcode, payload)]``."""
    out = []
    i = 0
    while i + 2 <= len(data):
        b0, b1 = data[i], data[i + 1]
        n = b1 & 0x7F
        i += 2
        if n == 126:
            (n,) = struct.unpack("!H", data[i:i + 2])
            i += 2
        elif n == 127:
            (n,) = struct.unpack("!Q", data[i:i + 8])
            i += 8
        assert not b1 & 0x80, "server frames are not masked"
        out.append((bool(b0 & 0x80), b0 & 0x0F, data[i:i + n]))
        i += n
    assert i == len(data), "trailing partial frame"
    return out


def split_response(data: bytes) -> tuple[str, bytes]:
    """``(status line, rest after the head)``."""
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode("latin-1"), rest


class Conn:
    """One WebSocket connection to the relay over a StringTransport."""

    def __init__(self, proto: server.RelayProtocol, transport: Transport) -> None:
        self.proto = proto
        self.transport = transport
        self.status = ""
        self._buf = b""

    def take(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def frames(self) -> list[tuple[bool, int, bytes]]:
        return parse_frames(self.take())

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def text(self, payload: bytes | str) -> None:
        if isinstance(payload, str):
            payload = payload.encode()
        self.send(client_frame(1, payload))

    def binary(self, payload: bytes) -> None:
        self.send(client_frame(2, payload))


class RelayUnitTest(unittest.TestCase):
    """A hub on a fake clock; txaio (autobahn's timers) uses the same clock."""

    config_overrides: dict[str, Any] = {}

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(time.time())  # wall-clock seconds for token expiry
        tx: Any = txaio
        old_loop = tx.config.loop
        tx.config.loop = self.clock
        self.addCleanup(setattr, tx.config, "loop", old_loop)
        base = Path(self.mktemp())
        base.mkdir()
        cfg = parse_config(config_dict(**self.config_overrides), base)
        self.namespace = Namespace.open(cfg)
        self.hub, self.factory = server.build(self.namespace, self.clock)
        self.ws = self.factory.ws_factory
        self._port = 40000

    def now(self) -> float:
        return self.clock.seconds()

    def open(self, target: str, headers: dict[str, str] | None = None,
             protocols: list[str] | None = None, host: str = "localhost:9443") -> Conn:
        """Connect and send a handshake; ``conn.status`` holds the response status line."""
        self._port += 1
        proto: Any = self.ws.buildProtocol(IPv4Address("TCP", "127.0.0.1", self._port))
        transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", self._port))
        proto.makeConnection(transport)
        conn = Conn(proto, transport)
        proto.dataReceived(handshake(target, headers, protocols, host))
        self._read_status(conn)
        return conn

    def _read_status(self, conn: Conn) -> None:
        data = conn.transport.value()
        if b"\r\n\r\n" in data:
            status, rest = split_response(data)
            conn.status = status
            conn.transport.clear()
            conn.transport.write(rest)

    def listen(self, hc: str = "hc1", token: str | None = None) -> Conn:
        tok = token or listen_token(hc, now=self.now())
        conn = self.open(f"/$hc/{hc}?sb-hc-action=listen",
                         {"ServiceBusAuthorization": tok})
        self.assertIn(" 101 ", conn.status)
        return conn
