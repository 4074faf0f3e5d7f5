"""Tests for hcm_twisted.core.fast (speed helpers)."""

from __future__ import annotations

import gc
import hashlib
import pprint
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest

from hcm_twisted.core import fast


class _Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class WriteThroughTests(unittest.TestCase):
    @defer.inlineCallbacks
    def _pair(self) -> Any:
        server = _Collect()
        factory = protocol.Factory.forProtocol(lambda: server)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            protocol.Factory.forProtocol(protocol.Protocol)
        )
        return client, server

    @defer.inlineCallbacks
    def test_small_write_sent_at_once_big_write_buffered(self) -> Any:
        client, server = yield self._pair()
        transport = client.transport
        self.assertTrue(fast.write_through(transport))
        self.assertTrue(fast.write_through(transport))  # idempotent
        transport.write(b"x" * 100)
        # Nothing left in Twisted's buffers: the socket took it in write().
        self.assertEqual(transport._tempDataBuffer, [])
        self.assertEqual(transport.dataBuffer, b"")
        big = b"y" * (fast.WRITE_THROUGH_MAX + 1)
        transport.write(big)
        self.assertEqual(transport._tempDataLen, len(big))  # buffered, as Twisted does
        transport.write(b"z")  # must queue behind the buffered data, not jump ahead
        self.assertEqual(transport._tempDataLen, len(big) + 1)
        expected = b"x" * 100 + big + b"z"
        transport.loseConnection()
        yield server.lost
        self.assertEqual(hashlib.sha256(server.data).hexdigest(),
                         hashlib.sha256(expected).hexdigest())

    @defer.inlineCallbacks
    def test_write_while_disconnecting_keeps_twisteds_behaviour(self) -> Any:
        client, server = yield self._pair()
        transport = client.transport
        fast.write_through(transport)
        transport.write(b"a")
        transport.loseConnection()
        transport.write(b"b")  # disconnecting: Twisted's own path (flushed before the close)
        self.assertEqual(transport._tempDataBuffer, [b"b"])
        yield server.lost
        self.assertEqual(bytes(server.data), b"ab")

    def test_not_tcp(self) -> None:
        self.assertFalse(fast.write_through(StringTransport()))


class FlushTlsTests(unittest.TestCase):
    def test_flushes_only_when_something_is_held(self) -> None:
        flushed: list[bool] = []

        class Aggregator:
            _buffer: list[bytes] = []

            def flush(self) -> None:
                flushed.append(True)
                self._buffer = []

        class Transport:
            _aggregator = Aggregator()

        t = Transport()
        fast.flush_tls(t)
        self.assertEqual(flushed, [])
        t._aggregator._buffer = [b"x"]
        fast.flush_tls(t)
        self.assertEqual(flushed, [True])
        fast.flush_tls(StringTransport())  # no aggregator: nothing happens
        fast.flush_tls(None)


class QuietAutobahnTests(unittest.TestCase):
    def test_pformat_is_lazy_and_unchanged(self) -> None:
        from autobahn.websocket import protocol as ab

        fast.quiet_autobahn()
        calls: list[int] = []

        class Counted:
            def __repr__(self) -> str:
                calls.append(1)
                return "Counted()"

        value = [("a", 1, "X"), ("b", Counted(), "Y")]
        lazy = ab.pformat(value)
        self.assertEqual(calls, [])
        self.assertEqual(str(lazy), pprint.pformat(value))
        self.assertEqual(f"\n{lazy}", "\n" + pprint.pformat(value))


class TuneGcTests(unittest.TestCase):
    def test_threshold_raised(self) -> None:
        fast.tune_gc()
        self.assertGreaterEqual(gc.get_threshold()[0], 10_000)
        fast.tune_gc()  # once only
        self.assertGreaterEqual(gc.get_threshold()[0], 10_000)


class AddressCacheTests(unittest.TestCase):
    def test_ttl_forget_limit(self) -> None:
        now = [100.0]
        cache = fast.AddressCache(ttl=30, clock=lambda: now[0], limit=2)
        self.assertIsNone(cache.get("h", 1))
        cache.put("h", 1, "10.0.0.1")
        self.assertEqual(cache.get("h", 1), "10.0.0.1")
        self.assertIsNone(cache.get("h", 2))
        now[0] += 29.9
        self.assertEqual(cache.get("h", 1), "10.0.0.1")
        now[0] += 0.2
        self.assertIsNone(cache.get("h", 1))
        cache.put("h", 1, "10.0.0.1")
        cache.forget("h", 1)
        self.assertIsNone(cache.get("h", 1))
        cache.put("a", 1, "1.1.1.1")
        cache.put("b", 1, "2.2.2.2")
        cache.put("c", 1, "3.3.3.3")  # over the limit: starts again
        self.assertIsNone(cache.get("a", 1))
        self.assertEqual(cache.get("c", 1), "3.3.3.3")


class CachedEndpointTests(unittest.TestCase):
    def test_kinds(self) -> None:
        r = MemoryReactorClock()
        cache = fast.AddressCache()
        self.assertIsInstance(fast.cached_tcp_endpoint(r, cache, "127.0.0.1", 1, 5),
                              TCP4ClientEndpoint)
        self.assertIsInstance(fast.cached_tcp_endpoint(r, cache, "::1", 1, 5), TCP6ClientEndpoint)
        self.assertIsInstance(fast.cached_tcp_endpoint(r, None, "localhost", 1, 5),
                              HostnameEndpoint)

    def test_cancel_cached_attempt(self) -> None:
        r = MemoryReactorClock()
        cache = fast.AddressCache()
        cache.put("relay.example", 443, "192.0.2.1")
        d = fast.cached_tcp_endpoint(r, cache, "relay.example", 443, 5).connect(
            protocol.Factory.forProtocol(protocol.Protocol)
        )
        self.assertEqual(r.tcpClients[0][:2], ("192.0.2.1", 443))
        d.cancel()
        self.failureResultOf(d, ConnectingCancelledError)  # as TCP4ClientEndpoint says it
        self.assertEqual(cache.get("relay.example", 443), "192.0.2.1")

    @defer.inlineCallbacks
    def test_remembers_and_falls_back(self) -> Any:
        server = protocol.Factory.forProtocol(protocol.Protocol)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server)
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        cache = fast.AddressCache()
        client = protocol.Factory.forProtocol(protocol.Protocol)

        first = yield fast.cached_tcp_endpoint(reactor, cache, "localhost", number, 5).connect(
            client
        )
        first.transport.loseConnection()
        self.assertEqual((cache.misses, cache.hits), (1, 0))
        self.assertEqual(cache.get("localhost", number), "127.0.0.1")

        second = yield fast.cached_tcp_endpoint(reactor, cache, "localhost", number, 5).connect(
            client
        )
        second.transport.loseConnection()
        self.assertEqual((cache.misses, cache.hits), (1, 1))
        self.assertEqual(second.transport.getPeer().host, "127.0.0.1")

        # A stale address (nothing listens on 127.0.0.2): forgotten, resolved again.
        cache.put("localhost", number, "127.0.0.2")
        third = yield fast.cached_tcp_endpoint(reactor, cache, "localhost", number, 5).connect(
            client
        )
        third.transport.loseConnection()
        self.assertEqual((cache.misses, cache.hits), (2, 2))
        self.assertEqual(cache.get("localhost", number), "127.0.0.1")


class RedactPrefilterTests(unittest.TestCase):
    """core.logging.redact skips its patterns for lines that hold none of their words."""

    def _slow(self, text: str) -> str:
        from hcm_twisted.core import logging as hcm_logging

        for pattern, replacement in hcm_logging._REDACTIONS:
            text = pattern.sub(replacement, text)
        return text

    def test_same_result_as_every_pattern(self) -> None:
        from hypothesis import given, settings
        from hypothesis import strategies as st

        from hcm_twisted.core import logging as hcm_logging

        pieces = st.sampled_from([
            "SharedAccessKey=abc", "sharedaccesssignature sr=x&sig=y&se=1&skn=k", "sig%3Dzz",
            "?sb-hc-token=t", "ServiceBusAuthorization: SharedAccessSignature a",
            "primary-key = \"k\"", "Authorization: Bearer t", "https://u:p@h/", " ", ";",
            "&", "=", "@", "ſig=x", "KEY", "\u212aey=", "hc1: connection 5 closed", "\"",
        ])
        texts = st.lists(st.one_of(pieces, st.text(max_size=8)), max_size=8).map("".join)

        @settings(max_examples=400, deadline=None)
        @given(texts)
        def check(text: str) -> None:
            self.assertEqual(hcm_logging.redact(text), self._slow(text))

        check()

    def test_plain_line_unchanged(self) -> None:
        from hcm_twisted.core import logging as hcm_logging

        line = "hc1: connection 1f2e from 127.0.0.1:5 closed after 0.012 s, 1 bytes in (tcp closed)"
        self.assertIs(hcm_logging.redact(line), line)


class MaskPayloadTests(unittest.TestCase):
    def test_same_as_rfc6455_xor(self) -> None:
        import os

        for n in (0, 1, 3, 4, 5, 127, 128, 129, 1000, 65536 + 7):
            data = os.urandom(n)
            mask = os.urandom(4)
            expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            self.assertEqual(bytes(fast.mask_payload(mask, data)), expected, n)

    def test_bad_mask(self) -> None:
        self.assertRaises(ValueError, fast.mask_payload, b"abc", b"data")


class FrameHeaderTests(unittest.SynchronousTestCase):
    def test_masked_header(self) -> None:
        """A client frame header: mask bit set, the length in the right width, the key last."""
        mask = b"\x01\x02\x03\x04"
        for n, width in ((0, 0), (125, 0), (126, 2), (65535, 2), (65536, 8)):
            header = fast.frame_header(2, True, n, mask)
            self.assertEqual(header[0], 0x82)
            self.assertTrue(header[1] & 0x80)
            self.assertEqual(header[-4:], mask)
            self.assertEqual(len(header), 2 + width + 4)
            if width:
                self.assertEqual(int.from_bytes(header[2:2 + width], "big"), n)
            else:
                self.assertEqual(header[1] & 0x7F, n)
