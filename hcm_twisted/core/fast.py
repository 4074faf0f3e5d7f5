# -*- test-case-name: tests.core.test_fast -*-
"""Speed helpers shared by the agent worker, the sender and the relay.

Each helper is justified by a profile or a latency measurement (see
``bench/SPEEDWORK.md``):

- :func:`write_through`: a small write on a TCP transport whose buffer is empty
  is sent at once instead of on the reactor's next ``doWrite``.  Twisted only
  buffers in ``write`` and arms epoll for writing; each forwarding hop then
  costs one more reactor iteration and two ``epoll_ctl`` calls.
- :func:`flush_tls`: Twisted's ``BufferingTLSTransport`` holds small writes
  until the next reactor iteration (``callLater(0)``).  Calling this once a read
  has been forwarded sends the batch now (still one TLS record per batch).
- :func:`quiet_autobahn`: autobahn formats a ``pformat`` of 23 options for a
  debug line on every new connection, whatever the log level; this makes that
  formatting lazy (the line is unchanged when debug logging is on).
- :func:`tune_gc`: freeze the objects made during start-up and collect the
  young generation less often.
- :class:`AddressCache` / :func:`cached_tcp_endpoint`: the address a host
  name last connected to, reused for a short while instead of a thread-pool
  ``getaddrinfo`` and a "happy eyeballs" race per connection.  TLS still
  verifies the certificate against the host name (the TLS options carry it).
"""

from __future__ import annotations

import errno
import gc
import struct
import time
from collections.abc import Callable
from types import MethodType
from typing import Any

from twisted.internet import tcp
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "WRITE_THROUGH_MAX",
    "write_through",
    "flush_tls",
    "quiet_autobahn",
    "tune_gc",
    "AddressCache",
    "cached_tcp_endpoint",
    "mask_payload",
]

#: Writes up to this size go out at once when nothing is buffered.  Bigger
#: writes (bulk transfers) keep Twisted's buffering, which joins them into
#: fewer ``send`` calls.
WRITE_THROUGH_MAX = 16 * 1024 + 256


_RETRY_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR})


def _write_through(self: Any, data: bytes) -> None:
    if (
        len(data) <= WRITE_THROUGH_MAX
        and not self._tempDataBuffer
        and self.offset == len(self.dataBuffer)
        and self.connected
        and not self.disconnecting
        and not self._writeDisconnected
        and not self.TLS
        and data
    ):
        try:
            sent = self.socket.send(data)
        except OSError as e:
            if e.errno not in _RETRY_ERRNOS:
                # A real error (ECONNRESET, EPIPE): this send() consumed it, so a later
                # recv() would read a clean EOF. Report the loss (ConnectionAborted).
                self.abortConnection()
                return
            # EAGAIN: the buffered path below sends it, as Twisted always does.
            sent = 0
        if sent >= len(data):
            return
        if sent:
            data = data[sent:]
    type(self).write(self, data)


def write_through(transport: Any) -> bool:
    """Send small writes on ``transport`` at once when its buffer is empty.

    ``transport`` may be a TCP connection or a TLS wrapper around one (the TCP
    connection under it is changed).  Returns whether it was installed;
    anything that is not a plain Twisted TCP connection is left alone.
    """
    for candidate in (transport, getattr(transport, "transport", None)):
        if isinstance(candidate, tcp.Connection) and not getattr(candidate, "TLS", False):
            if "write" not in vars(candidate):  # not installed yet (no extra attribute)
                candidate.write = MethodType(  # type: ignore[method-assign]
                    _write_through, candidate
                )
            return True
    return False


def flush_tls(transport: Any) -> None:
    """Send what a ``BufferingTLSTransport`` holds for the next reactor iteration, now."""
    aggregator = getattr(transport, "_aggregator", None)
    if aggregator is not None and aggregator._buffer:
        aggregator.flush()


class _LazyPformat:
    __slots__ = ("_obj",)

    def __init__(self, obj: object) -> None:
        self._obj = obj

    def __str__(self) -> str:
        from pprint import pformat

        return pformat(self._obj)

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def quiet_autobahn() -> None:
    """Make autobahn's per-connection ``pformat`` of its options lazy."""
    from autobahn.websocket import protocol

    protocol.pformat = _LazyPformat  # type: ignore[assignment]


_gc_tuned = False


def tune_gc(threshold0: int = 10_000) -> None:
    """Freeze what start-up allocated and raise the generation-0 threshold (once)."""
    global _gc_tuned
    if _gc_tuned:
        return
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    _, t1, t2 = gc.get_threshold()
    gc.set_threshold(max(threshold0, gc.get_threshold()[0]), t1, t2)


def startup_done(log: Any) -> None:
    """What every program does once start-up is over: warn when autobahn runs without its
    native (NVX) masking, make its per-connection ``pformat`` lazy, calm the cyclic GC."""
    from autobahn.websocket import USES_NVX

    if not USES_NVX:
        log.warn("autobahn runs without its native (NVX) WebSocket masking: expect lower "
                 "throughput; install autobahn with its C extensions for full speed")
    quiet_autobahn()
    tune_gc()


class AddressCache:
    """``(host, port)`` -> the IP address that last connected, for ``ttl`` seconds."""

    def __init__(self, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 limit: int = 256) -> None:
        self.ttl = ttl
        self._clock = clock
        self._limit = limit
        self._entries: dict[tuple[str, int], tuple[str, float]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, host: str, port: int) -> str | None:
        entry = self._entries.get((host, port))
        if entry is None:
            return None
        if self._clock() >= entry[1]:
            del self._entries[(host, port)]
            return None
        return entry[0]

    def put(self, host: str, port: int, address: str) -> None:
        if len(self._entries) >= self._limit and (host, port) not in self._entries:
            self._entries.clear()
        self._entries[(host, port)] = (address, self._clock() + self.ttl)

    def forget(self, host: str, port: int) -> None:
        self._entries.pop((host, port), None)


def _ip_endpoint(reactor: Any, address: str, port: int, timeout: float) -> IStreamClientEndpoint:
    if isIPv6Address(address):
        return TCP6ClientEndpoint(reactor, address, port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, address, port, timeout=timeout)


def _peer_host(protocol: Any) -> str | None:
    transport = getattr(protocol, "transport", None)
    try:
        host = transport.getPeer().host  # type: ignore[union-attr]
    except Exception:
        return None
    return host if isinstance(host, str) and (isIPAddress(host) or isIPv6Address(host)) else None


@implementer(IStreamClientEndpoint)
class _CachedHostEndpoint:
    """Connect to the cached address of ``host``; resolve (and remember) when there is none.

    A failed connection to a cached address forgets it and falls back to a
    fresh ``HostnameEndpoint`` attempt, so a moved host costs one retry.
    """

    def __init__(self, reactor: Any, cache: AddressCache, host: str, port: int,
                 timeout: float) -> None:
        self._reactor = reactor
        self._cache = cache
        self._host = host
        self._port = port
        self._timeout = timeout

    def connect(self, factory: Any) -> Deferred[Any]:
        current: list[Deferred[Any]] = []
        result: Deferred[Any] = Deferred(lambda _: current[-1].cancel() if current else None)
        cache, host, port = self._cache, self._host, self._port

        def resolve() -> None:
            cache.misses += 1
            d = HostnameEndpoint(self._reactor, host, port, timeout=self._timeout).connect(factory)
            current.append(d)

            def ok(protocol: Any) -> None:
                address = _peer_host(protocol)
                if address is not None:
                    cache.put(host, port, address)
                result.callback(protocol)

            d.addCallbacks(ok, failed)

        def failed(f: Failure) -> None:
            if not result.called:
                result.errback(f)

        def cached_failed(f: Failure) -> None:
            if result.called or f.check(CancelledError):
                failed(f)
                return
            if f.check(ConnectError) is not None:
                cache.forget(host, port)
                resolve()
                return
            failed(f)

        address = cache.get(host, port)
        if address is None:
            resolve()
        else:
            cache.hits += 1
            d = _ip_endpoint(self._reactor, address, port, self._timeout).connect(factory)
            current.append(d)
            d.addCallbacks(lambda p: result.callback(p) if not result.called else None,
                           cached_failed)
        return result


def cached_tcp_endpoint(reactor: Any, cache: AddressCache | None, host: str, port: int,
                        timeout: float) -> IStreamClientEndpoint:
    """A TCP client endpoint for ``host:port``: IP literals direct, names through ``cache``."""
    if isIPAddress(host) or isIPv6Address(host):
        return _ip_endpoint(reactor, host, port, timeout)
    if cache is None:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    return _CachedHostEndpoint(reactor, cache, host, port, timeout)


def _nvx() -> tuple[Any, Any] | None:
    try:
        from _nvx_xormasker import ffi, lib  # autobahn's native masker (NVX)
    except ImportError:  # pragma: no cover (autobahn built without NVX)
        return None
    return ffi, lib


_NVX = _nvx()


def frame_header(opcode: int, fin: bool, length: int, mask: bytes = b"") -> bytes:
    """A WebSocket frame header (RFC 6455 section 5.2); with a 4-byte ``mask`` (client
    frames) the mask bit is set and the key follows."""
    b0 = (0x80 if fin else 0) | opcode
    b1 = 0x80 if mask else 0
    if length <= 125:
        return bytes((b0, b1 | length)) + mask
    if length <= 0xFFFF:
        return struct.pack("!BBH", b0, b1 | 126, length) + mask
    return struct.pack("!BBQ", b0, b1 | 127, length) + mask


def mask_payload(mask: bytes, data: bytes) -> bytes | bytearray:
    """``data`` XORed with the 4-byte WebSocket ``mask`` (RFC 6455 section 5.3).

    Uses autobahn's native masker in place on one copy of ``data``; autobahn's own
    wrapper makes a zeroed buffer, copies in, masks and copies out again, and is
    made per message.
    """
    if len(mask) != 4:
        raise ValueError("a WebSocket mask is 4 bytes")
    if _NVX is None:  # pragma: no cover (autobahn built without NVX)
        from autobahn.websocket.xormasker import create_xor_masker

        return create_xor_masker(mask, len(data)).process(data)  # type: ignore[no-any-return]
    ffi, lib = _NVX
    buf = bytearray(data)
    if buf:
        masker = lib.nvx_xormask_new(mask)
        if masker == ffi.NULL:
            raise MemoryError("cannot allocate a WebSocket masker")
        try:
            lib.nvx_xormask_process(masker, ffi.from_buffer(buf), len(buf))
        finally:
            lib.nvx_xormask_free(masker)
    return buf
