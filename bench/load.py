"""Load generators and measurements (the "app" side of every path).

Everything here talks to ``bench/endpoint.py`` through whatever path forwards
``port`` (raw, socat, ssh -R, hcm).  Every loop is bounded in count *and* in
time and stops by itself; a bound that is hit is reported, never waited out.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

HOST = "127.0.0.1"
CHUNK = 256 * 1024
_PAYLOAD = memoryview(os.urandom(CHUNK))
OP_TIMEOUT = 20.0  # seconds any single socket operation may block


class Timeout(Exception):
    """A measurement hit its time bound."""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _connect(port: int) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=OP_TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _recv_exact(s: socket.socket, n: int, deadline: float) -> None:
    buf = bytearray(min(n, CHUNK))
    view = memoryview(buf)
    while n > 0:
        if time.monotonic() > deadline:
            raise Timeout(f"{n} bytes still to receive at the deadline")
        got = s.recv_into(view[: min(n, CHUNK)])
        if not got:
            raise ConnectionError(f"connection closed with {n} bytes still expected")
        n -= got


def _send_n(s: socket.socket, n: int, deadline: float) -> None:
    while n > 0:
        if time.monotonic() > deadline:
            raise Timeout(f"{n} bytes still to send at the deadline")
        k = min(n, CHUNK)
        s.sendall(_PAYLOAD[:k])
        n -= k


def _prime(s: socket.socket, deadline: float) -> None:
    """One tiny upload round trip: the whole path is set up after this."""
    s.sendall(b"U" + struct.pack("!Q", 1) + b"x")
    _recv_exact(s, 1, deadline)


def _one_transfer(port: int, direction: str, nbytes: int, deadline: float,
                  start: threading.Barrier | None = None) -> tuple[float, float]:
    """Move ``nbytes`` one way on a new connection; returns (t_start, t_end) (monotonic)."""
    with _connect(port) as s:
        _prime(s, deadline)
        if start is not None:
            start.wait(timeout=OP_TIMEOUT)
        t0 = time.monotonic()
        if direction == "up":
            s.sendall(b"U" + struct.pack("!Q", nbytes))
            _send_n(s, nbytes, deadline)
            _recv_exact(s, 1, deadline)  # the endpoint's "K": every byte arrived
        else:
            s.sendall(b"D" + struct.pack("!Q", nbytes))
            _recv_exact(s, nbytes, deadline)
        return t0, time.monotonic()


def transfer(port: int, direction: str, streams: int, nbytes_each: int,
             time_limit: float = 60.0) -> dict[str, Any]:
    """``streams`` parallel connections each moving ``nbytes_each``; aggregate MB/s."""
    deadline = time.monotonic() + time_limit
    results: list[tuple[float, float]] = []
    errors: list[str] = []
    barrier = threading.Barrier(streams) if streams > 1 else None

    def run() -> None:
        try:
            results.append(_one_transfer(port, direction, nbytes_each, deadline, barrier))
        except Exception as e:  # reported, not raised: one failure is data too
            errors.append(f"{type(e).__name__}: {e}")
            if barrier is not None:
                barrier.abort()

    if streams == 1:
        run()
    else:
        threads = [threading.Thread(target=run, daemon=True) for _ in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(time_limit + OP_TIMEOUT)
    if errors or len(results) != streams:
        return {"ok": False, "error": (errors or ["thread did not finish"])[0]}
    t0 = min(r[0] for r in results)
    t1 = max(r[1] for r in results)
    total = nbytes_each * streams
    return {"ok": True, "bytes": total, "seconds": t1 - t0, "mbps": total / (t1 - t0) / 1e6}


def echo_rtt(port: int, count: int = 2000, time_limit: float = 3.0,
             warmup: int = 50) -> dict[str, Any]:
    """1-byte echo round trips on one connection: p50/p99 in microseconds."""
    deadline = time.monotonic() + time_limit + 5.0
    samples: list[float] = []
    with _connect(port) as s:
        s.sendall(b"E")
        stop = None
        for i in range(warmup + count):
            t0 = time.perf_counter()
            s.sendall(b"x")
            if not s.recv(1):
                raise ConnectionError("echo connection closed")
            t1 = time.perf_counter()
            if i == warmup:
                stop = time.monotonic() + time_limit
            if i >= warmup:
                samples.append((t1 - t0) * 1e6)
                if stop is not None and time.monotonic() > stop:
                    break
            if time.monotonic() > deadline:
                break
    return {"n": len(samples), "p50_us": percentile(samples, 50),
            "p99_us": percentile(samples, 99)}


def connect_latency(port: int, count: int = 200, time_limit: float = 10.0) -> dict[str, Any]:
    """Sequential new connections: app connect -> first echoed byte, p50/p99 in ms."""
    stop = time.monotonic() + time_limit
    samples: list[float] = []
    failures = 0
    for _ in range(count):
        if time.monotonic() > stop:
            break
        t0 = time.perf_counter()
        try:
            with _connect(port) as s:
                s.sendall(b"Ex")
                if s.recv(1) != b"x":
                    raise ConnectionError("no echo")
                samples.append((time.perf_counter() - t0) * 1e3)
        except OSError:
            failures += 1
    if not samples:
        return {"n": 0, "failures": failures}
    return {"n": len(samples), "failures": failures, "p50_ms": percentile(samples, 50),
            "p99_ms": percentile(samples, 99)}


async def _echo_once(port: int, timeout: float) -> float:
    t0 = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        writer.write(b"Ex")
        got = await asyncio.wait_for(reader.readexactly(1), timeout)
        if got != b"x":
            raise ConnectionError("bad echo")
        return time.perf_counter() - t0
    finally:
        writer.close()


async def _rate(port: int, total: int, concurrency: int, time_limit: float) -> dict[str, Any]:
    stop = time.monotonic() + time_limit
    lat: list[float] = []
    failures: list[str] = []
    started = 0

    async def worker() -> None:
        nonlocal started
        while started < total and time.monotonic() < stop:
            started += 1
            try:
                lat.append(await _echo_once(port, max(0.1, stop - time.monotonic())))
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
                failures.append(type(e).__name__)

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - t0
    out: dict[str, Any] = {"ok": len(lat), "failed": len(failures), "seconds": elapsed,
                           "per_s": len(lat) / elapsed if elapsed else 0.0}
    if lat:
        out["p50_ms"] = percentile(lat, 50) * 1e3
        out["p99_ms"] = percentile(lat, 99) * 1e3
    if failures:
        out["first_failure"] = failures[0]
    return out


def connection_rate(port: int, total: int = 600, concurrency: int = 32,
                    time_limit: float = 10.0) -> dict[str, Any]:
    """New connections per second (connect, 1-byte echo, close) with ``concurrency`` in flight."""
    return asyncio.run(_rate(port, total, concurrency, time_limit))


async def _hold(port: int, n: int, concurrency: int, time_limit: float,
                on_held: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    stop = time.monotonic() + time_limit
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failures: list[str] = []
    sem = asyncio.Semaphore(concurrency)

    async def open_one() -> None:
        async with sem:
            if time.monotonic() > stop:
                return
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(HOST, port),
                                              max(0.1, stop - time.monotonic()))
                w.write(b"Ex")
                await asyncio.wait_for(r.readexactly(1), max(0.1, stop - time.monotonic()))
                conns.append((r, w))
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
                failures.append(type(e).__name__)

    t0 = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(n)))
    setup = time.monotonic() - t0
    await asyncio.sleep(1.0)  # let the processes settle before reading their RSS
    info = on_held(len(conns))
    # Still alive?  A sample of the held connections must echo.
    alive = 0
    sample = conns[:: max(1, len(conns) // 50)]
    for r, w in sample:
        try:
            w.write(b"y")
            if await asyncio.wait_for(r.readexactly(1), 5.0) == b"y":
                alive += 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass
    for _, w in conns:
        w.close()
    await asyncio.sleep(0.5)
    return {"requested": n, "held": len(conns), "failed": len(failures),
            "setup_seconds": setup, "sample_alive": f"{alive}/{len(sample)}",
            "first_failure": failures[0] if failures else None, **info}


def hold_connections(port: int, n: int, on_held: Callable[[int], dict[str, Any]],
                     concurrency: int = 100, time_limit: float = 90.0) -> dict[str, Any]:
    """Open ``n`` connections through the path (each echoes once), call ``on_held``, close."""
    return asyncio.run(_hold(port, n, concurrency, time_limit, on_held))
