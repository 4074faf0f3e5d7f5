"""Faults injected into the whole path under load: nothing acknowledged is lost.

app (this process) -> hcm-sender -> hcm-relay -> hcm agent (master + 2 workers) -> endpoint
(this process).  Every app connection checks each byte it gets back against the stream it
sent (in order, exactly once); a connection that does not complete must fail visibly (reset,
or closed before any data came back), never end cleanly after a part of the data.

Timings are short for CI; ``HCM_FAULT_SINK_SECONDS`` (default 8) sets how long ~1 GiB is
offered to the endpoint that never reads.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, threads
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.e2e import harness
from tests.e2e.stack import (
    Echo,
    Stack,
    alive,
    listen,
    rss,
    run_pattern,
    secret_findings,
    sleep,
    wait_until,
)
from tests.faults.load import Load, check_no_loss


def _d(coro: Any) -> defer.Deferred[Any]:
    return defer.ensureDeferred(coro)


@implementer(IHalfCloseableProtocol)
class CutEcho(protocol.Protocol):
    """Echo the first ``factory.limit`` bytes, then reset (``factory.abort``) or end its
    half of the stream with a FIN (reading and discarding the rest)."""

    def connectionMade(self) -> None:
        self.got = 0
        self.factory.connections += 1  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        limit = self.factory.limit  # type: ignore[attr-defined]
        if self.got >= limit:
            return
        data = data[: limit - self.got]
        self.got += len(data)
        self.transport.write(data)  # type: ignore[union-attr]
        self.factory.echoed.append(len(data))  # type: ignore[attr-defined]
        if self.got >= limit:
            if self.factory.abort:  # type: ignore[attr-defined]
                # A real reset: without SO_LINGER 0 the kernel sends a FIN when nothing
                # is unread, and the endpoint would have closed cleanly.
                self.transport.getHandle().setsockopt(  # type: ignore[union-attr]
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.transport.abortConnection()  # type: ignore[union-attr]
            else:
                self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


class Sink(protocol.Protocol):
    """Never reads."""

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]
        self.factory.connections += 1  # type: ignore[attr-defined]


class PeerTracking(Echo):
    """Echo that remembers the peer port of each open connection (to find its worker)."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.open[self.transport.getPeer().port] = self  # type: ignore[attr-defined,union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open.pop(self.transport.getPeer().port, None)  # type: ignore[attr-defined,union-attr]


def socket_pid(local_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` owns the loopback TCP socket bound to ``local_port``."""
    inodes: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if int(parts[1].split(":")[1], 16) == local_port:
            inodes.add(parts[9])
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return pid
        except OSError:
            continue
    return None


class FaultTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.echo = listen(PeerTracking, open={})
        self.addCleanup(self.echo.stopListening)
        self.refused_port = harness.free_port()
        self.cut = listen(CutEcho, limit=100_000, abort=True, echoed=[])
        self.addCleanup(self.cut.stopListening)
        self.cut_fin = listen(CutEcho, limit=100_000, abort=False, echoed=[])
        self.addCleanup(self.cut_fin.stopListening)
        self.sink = listen(Sink)
        self.addCleanup(self.sink.stopListening)
        self.stack = Stack(Path(self.mktemp()), {
            "hc1": f"127.0.0.1:{self.echo.getHost().port}",
            "down": f"127.0.0.1:{self.refused_port}",
            "cut": f"127.0.0.1:{self.cut.getHost().port}",
            "cutfin": f"127.0.0.1:{self.cut_fin.getHost().port}",
            "sink": f"127.0.0.1:{self.sink.getHost().port}",
        }, workers=2, agent={"ping-interval": 1}, relay_toml="token-grace = 2")
        self.stack.start()
        self.addCleanup(self.stack.stop)
        self.addCleanup(self.check_secrets)
        self.port = self.stack.sender_ports["hc1"]

    def load(self, port: int, **kw: Any) -> Load:
        load = Load(port, **kw)
        self.addCleanup(lambda: defer.ensureDeferred(load.stop()))
        return load

    def check_secrets(self) -> None:
        found = secret_findings(self.stack.logs(), harness.TEST_KEYS.values())
        self.assertEqual(found, [], "a key or token signature in a log")

    def report(self, what: str, summary: dict[str, int]) -> None:
        print(f"\n{what}: {summary}")

    # -- the relay -----------------------------------------------------------------------

    def test_relay_killed_and_restarted_under_load(self) -> defer.Deferred[Any]:
        return _d(self._relay_killed())

    async def _relay_killed(self) -> None:
        relay = self.stack.relay
        assert relay is not None and relay.proc is not None
        load = self.load(self.port, concurrency=4, size=1 << 20, rate=1 << 20).start()
        await load.mid_transfer()
        relay.proc.kill()
        killed = time.monotonic()
        await sleep(1.0)
        relay.start()
        restarted = time.monotonic()
        await wait_until(lambda: len(load.completed(after=restarted)) >= 8, 30,
                         what="8 transfers started after the restart")
        first = min(c.ended or 0 for c in load.completed(after=restarted)) - restarted
        clients = await load.stop()
        summary = check_no_loss(self, clients)
        in_flight = [c for c in clients if c.started < killed < (c.ended or 0)]
        self.assertTrue(in_flight, "some transfers were in flight when the relay died")
        summary["in_flight_at_kill"] = len(in_flight)
        summary["first_ok_after_restart_ms"] = int(first * 1000)
        self.report("relay kill -9 + restart", summary)
        # The agent reconnected every HC.
        await wait_until(lambda: all(s["connected"] for s in self.stack.status()), 15,
                         what="all HCs connected again")

    def test_relay_stopped_cleanly_under_load(self) -> defer.Deferred[Any]:
        return _d(self._relay_stopped())

    async def _relay_stopped(self) -> None:
        """SIGTERM (an upgrade, a service restart): the relay closes every WebSocket with
        1001; a transfer cut by that must still be visible to its app."""
        relay = self.stack.relay
        assert relay is not None and relay.proc is not None
        load = self.load(self.port, concurrency=4, size=1 << 20, rate=1 << 20).start()
        await load.mid_transfer()
        stopped = time.monotonic()
        await threads.deferToThread(relay.stop)
        relay.start()
        restarted = time.monotonic()
        await wait_until(lambda: len(load.completed(after=restarted)) >= 4, 30,
                         what="transfers after the restart")
        clients = await load.stop()
        in_flight = [c for c in clients if c.started < stopped < (c.ended or 0)]
        summary = check_no_loss(self, clients)
        summary["in_flight_at_stop"] = len(in_flight)
        self.report("relay SIGTERM + start", summary)

    def test_relay_paused_pings_notice(self) -> defer.Deferred[Any]:
        return _d(self._relay_paused())

    async def _relay_paused(self) -> None:
        relay = self.stack.relay
        assert relay is not None and relay.proc is not None
        agent = self.stack.agent
        assert agent is not None
        before = agent.output().count("control channel connected: hc1")
        load = self.load(self.port, concurrency=4, size=512 << 10, rate=1 << 20).start()
        await load.mid_transfer()
        # ping-interval 1 s gives a pong timeout of 1 s: pause for twice that and a bit.
        relay.proc.signal(signal.SIGSTOP)
        try:
            await sleep(2.5)
        finally:
            relay.proc.signal(signal.SIGCONT)
        resumed = time.monotonic()
        # Each worker noticed the dead channel and opened a new one.
        await wait_until(
            lambda: agent.output().count("control channel connected: hc1") >= before + 2, 20,
            what="both workers reconnected hc1 after the pause")
        await wait_until(lambda: len(load.completed(after=resumed)) >= 4, 30,
                         what="transfers after the pause")
        clients = await load.stop()
        summary = check_no_loss(self, clients)
        self.report("relay SIGSTOP 2.5 s + SIGCONT", summary)

    def test_relay_recycles_control_channels(self) -> defer.Deferred[Any]:
        return _d(self._recycled())

    async def _recycled(self) -> None:
        """The relay closes every control channel with 1011 (SIGUSR1, as Azure's recycle)
        twice under load: the workers reconnect at once each time; open transfers finish.

        The rounds are 11 s apart: a channel that lived less than the listener's
        STABLE_AFTER (10 s) reconnects with backoff, by design."""
        relay = self.stack.relay
        agent = self.stack.agent
        assert relay is not None and relay.proc is not None and agent is not None

        def connects() -> int:
            return agent.output().count("control channel connected: hc1")

        load = self.load(self.port, concurrency=4, size=1 << 20, rate=1 << 20).start()
        await load.mid_transfer()
        for round_ in range(2):
            want = connects() + 2
            relay.proc.signal(signal.SIGUSR1)
            await wait_until(lambda w=want: connects() >= w, 10,  # type: ignore[misc]
                             what=f"recycle {round_ + 1}: both workers reconnected hc1")
            if round_ == 0:
                await sleep(11.0)
        self.assertEqual(relay.output().count("SIGUSR1: recycled"), 2)
        self.assertIn("control channel hc1 closed (closed: 1011", agent.output())
        last = time.monotonic()
        await wait_until(lambda: len(load.completed(after=last)) >= 2, 20, what="transfers after")
        clients = await load.stop()
        summary = check_no_loss(self, clients)
        # A transfer that had its rendezvous never depends on the control channel.
        self.report("relay recycle (1011) x2", summary)
        self.assertLessEqual(summary["failed"], 2 * 4, "only connects in the reconnect gap")

    # -- the agent -----------------------------------------------------------------------

    def test_worker_kill9_under_load(self) -> defer.Deferred[Any]:
        return _d(self._worker_killed(visible=True))

    async def _worker_killed(self, visible: bool) -> None:
        workers = self.stack.worker_pids()
        self.assertEqual(len(workers), 2)
        load = self.load(self.port, concurrency=8, size=2 << 20, rate=1 << 20).start()
        await wait_until(lambda: len(self.echo.factory.open) >= 6, 20, what="transfers open")
        await sleep(0.5)
        victim, survivor = workers
        owners = {port: socket_pid(port, workers) for port in list(self.echo.factory.open)}
        on_survivor = sum(1 for pid in owners.values() if pid == survivor)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        agent = self.stack.agent
        assert agent is not None
        await wait_until(lambda: len(self.stack.worker_pids()) == 2
                         and victim not in self.stack.worker_pids(), 15,
                         what="the master restarted the worker")
        await wait_until(lambda: len(load.completed(after=killed + 1)) >= 2, 20,
                         what="new transfers after the kill")
        clients = await load.stop()
        summary = check_no_loss(self, clients, visible=visible)
        in_flight = [c for c in clients if c.started < killed]
        done_in_flight = [c for c in in_flight if c.complete]
        summary.update(on_survivor=on_survivor, in_flight=len(in_flight),
                       in_flight_completed=len(done_in_flight))
        self.report("worker kill -9", summary)
        self.assertGreaterEqual(len(done_in_flight), on_survivor,
                                "the other worker's transfers completed")
        self.assertTrue(load.completed(after=killed + 1), "new transfers after the kill")

    def test_master_kill9_leaves_no_worker(self) -> defer.Deferred[Any]:
        return _d(self._master_killed())

    async def _master_killed(self) -> None:
        agent = self.stack.agent
        assert agent is not None
        workers = self.stack.worker_pids()
        self.assertEqual(len(workers), 2)
        os.kill(agent.pid, signal.SIGKILL)
        killed = time.monotonic()
        await wait_until(lambda: not any(alive(p) for p in workers), 2.0,
                         interval=0.02, what="no worker left 2 s after the master died")
        print(f"\nmaster kill -9: workers gone after {time.monotonic() - killed:.2f} s")

    def test_sender_kill9_leaves_nothing_open(self) -> defer.Deferred[Any]:
        return _d(self._sender_killed())

    async def _sender_killed(self) -> None:
        """The sender dies with 8 transfers open: every app sees it, the relay and the
        agent close the other legs (endpoint connections closed, no fd left), and a new
        sender works."""
        sender = self.stack.sender
        relay = self.stack.relay
        assert sender is not None and relay is not None and relay.proc is not None
        from tests.e2e.stack import fd_count

        base = {role: fd_count(pid) for role, pid in self.stack.pids().items()
                if role != "sender"}
        load = self.load(self.port, concurrency=8, size=4 << 20, rate=1 << 20)
        load.start()
        await wait_until(lambda: len(self.echo.factory.open) >= 8, 20, what="8 transfers open")
        sender.kill()
        clients = await load.stop()
        # The kernel ends a dead process's sockets with a FIN when nothing is unread: the
        # sender cannot make that visible, so only the bytes are checked here.
        summary = check_no_loss(self, clients, visible=False)
        await wait_until(lambda: not self.echo.factory.open, 15,
                         what="the agent closed every endpoint connection")
        await wait_until(lambda: all(fd_count(pid) <= base[role] + 2
                                     for role, pid in self.stack.pids().items()
                                     if role in base), 15,
                         what="relay and agent fds back to their baseline")
        status = {s["name"]: s for s in self.stack.status()}
        self.assertEqual(sum(w["open"] for w in status["hc1"]["workers"]), 0)
        self.stack.sender = None
        self.stack.start_sender()
        client = await run_pattern(self.port, 1 << 20)
        self.assertTrue(client.complete, client.describe())
        self.report("sender kill -9", summary)

    # -- the endpoint --------------------------------------------------------------------

    def test_endpoint_refusing(self) -> defer.Deferred[Any]:
        return _d(self._refusing())

    async def _refusing(self) -> None:
        load = self.load(self.port, concurrency=2, size=256 << 10).start()
        started = time.monotonic()
        refused = await defer.gatherResults(
            [run_pattern(self.stack.sender_ports["down"], 10_000, timeout=10)
             for _ in range(30)])
        elapsed = time.monotonic() - started
        for c in refused:
            self.assertEqual(c.count, 0, c.describe())
            self.assertLess((c.ended or 0) - c.started, 5.0, c.describe())
        await wait_until(lambda: len(load.completed()) >= 4, 20, what="hc1 transfers")
        clients = await load.stop()
        summary = check_no_loss(self, clients)
        summary["refused"] = len(refused)
        self.report(f"endpoint refusing (30 connections closed in {elapsed:.2f} s)", summary)
        status = {s["name"]: s for s in self.stack.status()}
        self.assertTrue(status["down"]["connected"])
        self.assertTrue(status["hc1"]["connected"])

    def test_endpoint_resets_mid_stream(self) -> defer.Deferred[Any]:
        return _d(self._cut(self.cut, "cut", visible=False))

    def test_endpoint_reset_visible_to_the_app(self) -> defer.Deferred[Any]:
        return _d(self._cut(self.cut, "cut", visible=True, n=8))

    def test_endpoint_closes_mid_stream(self) -> defer.Deferred[Any]:
        return _d(self._cut(self.cut_fin, "cutfin"))

    async def _cut(self, port: Any, hc: str, visible: bool = True, n: int = 4) -> None:
        """The endpoint echoes 100 kB of 1 MiB then closes: the app gets exactly those bytes
        back, in order, and its connection ends (a reset when the endpoint reset)."""
        abort = port.factory.abort
        clients = await defer.gatherResults(
            [run_pattern(self.stack.sender_ports[hc], 1 << 20, timeout=30) for _ in range(n)])
        echoed = sum(port.factory.echoed)
        self.assertEqual(echoed, n * 100_000)
        for c in clients:
            self.assertTrue(c.in_order, c.describe())
            self.assertFalse(c.complete)
            self.assertLessEqual(c.count, 100_000, c.describe())
            self.assertLess((c.ended or 0) - c.started, 20, c.describe())
            if not abort:
                self.assertEqual(c.count, 100_000, c.describe())
            elif visible:
                self.assertFalse(c.clean, f"endpoint reset, app saw a clean close: {c.describe()}")
        # Others still work.
        client = await run_pattern(self.port, 256 << 10)
        self.assertTrue(client.complete, client.describe())
        print(f"\nendpoint {'reset' if abort else 'FIN'} after 100 kB: "
              f"{[c.describe() for c in clients]}")

    def test_endpoint_never_reads(self) -> defer.Deferred[Any]:
        return _d(self._never_reads())

    async def _never_reads(self) -> None:
        """~1 GiB offered for a bounded time to an endpoint that never reads: the workers'
        memory stays within a few MB (flow control reaches the app)."""
        workers = self.stack.worker_pids()
        before = {p: rss(p) for p in workers}
        seconds = float(os.environ.get("HCM_FAULT_SINK_SECONDS", "8"))
        d = run_pattern(self.stack.sender_ports["sink"], 1 << 30, timeout=seconds)
        peak = dict(before)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await sleep(0.25)
            for p in workers:
                peak[p] = max(peak[p], rss(p))
        client = await d
        grown = {p: (peak[p] - before[p]) >> 10 for p in workers}
        print(f"\nendpoint never reads: app could write {client.written >> 20} MiB of 1 GiB in "
              f"{seconds:g} s; worker RSS growth (KiB) {grown}")
        self.assertLess(client.written, 256 << 20, "the app was stopped by flow control")
        for p in workers:
            self.assertLess(peak[p] - before[p], 8 << 20, f"worker {p} grew {grown[p]} KiB")
        client2 = await run_pattern(self.port, 256 << 10)
        self.assertTrue(client2.complete, client2.describe())
