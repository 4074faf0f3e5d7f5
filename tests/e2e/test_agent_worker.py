"""A real worker process, driven by a small test master over AMP (fds 3/4), behind a real relay.

Path: sender (autobahn client in this process) -> hcm-relay (process) -> worker (process)
-> TCP endpoint (in this process) and back.  Byte streams are hashed at both ends.
"""

from __future__ import annotations

import hashlib
import random
import re
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.endpoints import HostnameEndpoint, TCP4ServerEndpoint, wrapClientTLS
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import deferLater
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from hcm_twisted.agent import commands
from hcm_twisted.core import connstr, sas, tls, urls
from tests.e2e import harness
from tests.e2e.relayfixture import Relay, start_relay

R: Any = reactor
MiB = 1024 * 1024


def sleep(seconds: float) -> defer.Deferred[None]:
    return deferLater(R, seconds, lambda: None)


def mint(relay: Relay, hc: str, rule: str, lifetime: float = 3600) -> str:
    return sas.mint(sas.audience_for(relay.namespace, hc), rule, harness.TEST_KEYS[rule], lifetime)


def hc_item(relay: Relay, hc: str, endpoint: str | None, lifetime: float = 3600,
            ping_interval: float = 30) -> dict[str, Any]:
    return {
        "name": hc,
        "url": urls.listen_url(connstr.parse(relay.connection_string(hc))),
        "endpoint": endpoint,
        "token": mint(relay, hc, "defaultListener", lifetime),
        "ca_certificates": [str(relay.ca_path)],
        "ping_interval": ping_interval,
        "connect_timeout": 5,
    }


# ---- a test master --------------------------------------------------------------------


class _PipeTransport:
    """AMP's transport: writes go to the worker's fd 3."""

    def __init__(self, process: WorkerProcess) -> None:
        self._process = process

    def write(self, data: bytes) -> None:
        self._process.transport.writeToChild(3, data)

    def writeSequence(self, seq: list[bytes]) -> None:  # noqa: N802
        self.write(b"".join(seq))

    def loseConnection(self) -> None:  # noqa: N802
        self._process.transport.closeChildFD(3)

    def getPeer(self) -> Any:  # noqa: N802
        return None

    def getHost(self) -> Any:  # noqa: N802
        return None


class WorkerProcess(protocol.ProcessProtocol):
    """``python -m hcm_twisted.agent.worker`` with AMP on fds 3 (we write) and 4 (we read)."""

    transport: Any

    def __init__(self, log_path: Path) -> None:
        self.amp = amp.AMP()
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in processEnded)
        self.output = ""
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.exit_reason: Failure | None = None

    @classmethod
    def spawn(cls, log_path: Path) -> WorkerProcess:
        proc = cls(log_path)
        R.spawnProcess(
            proc, harness.PYTHON, [harness.PYTHON, "-m", "hcm_twisted.agent.worker"],
            env=harness.child_env(), path=str(harness.ROOT),
            childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"},
        )
        return proc

    def connectionMade(self) -> None:
        self.amp.makeConnection(_PipeTransport(self))  # type: ignore[arg-type]

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == 4:
            self.amp.dataReceived(data)
        else:
            self._log.write(data)
            self._log.flush()
            self.output += data.decode("utf-8", "replace")

    def processEnded(self, reason: Failure) -> None:
        self._log.close()
        self.amp.connectionLost(reason)
        self.exit_reason = reason
        self.ended.callback(None)

    @property
    def running(self) -> bool:
        return not self.ended.called

    async def wait_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while len(rx.findall(self.output)) < count:
            if not self.running:
                raise AssertionError(f"worker exited:\n{self.output[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker: no {pattern!r} x{count} after {timeout} s:\n"
                                     f"{self.output[-3000:]}")
            await sleep(0.05)

    async def call(self, command: type[amp.Command], **kw: Any) -> Any:
        return await self.amp.callRemote(command, **kw)

    async def status(self, hc: str) -> dict[str, Any]:
        result = await self.call(commands.GetStatus)
        return result["status"]["hcs"][hc]  # type: ignore[no-any-return]

    async def stop(self, timeout: float = 5.0) -> None:
        if self.running:
            self.transport.closeChildFD(3)
            deadline = time.monotonic() + timeout
            while self.running and time.monotonic() < deadline:
                await sleep(0.05)
            if self.running:
                self.transport.signalProcess("KILL")
                await self.ended


# ---- the endpoint -------------------------------------------------------------------


class HashingEcho(protocol.Protocol):
    """Echoes everything (with backpressure) and hashes what it received."""

    factory: EchoFactory

    def connectionMade(self) -> None:
        self.hash = hashlib.sha256()
        self.count = 0
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]
        self.factory.connections += 1
        self.factory.live.append(self)
        if self.factory.stalled:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.factory.finished.append((self.count, self.hash.hexdigest()))
        self.factory.live.remove(self)


class EchoFactory(protocol.Factory):
    protocol = HashingEcho  # type: ignore[assignment]

    def __init__(self) -> None:
        self.connections = 0
        self.finished: list[tuple[int, str]] = []
        self.live: list[HashingEcho] = []
        self.stalled = False  # new connections do not read until resumed

    def resume(self) -> None:
        self.stalled = False
        for proto in self.live:
            proto.transport.resumeProducing()  # type: ignore[union-attr]


# ---- the sender ---------------------------------------------------------------------


class SendFailed(Exception):
    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@implementer(IPushProducer)
class Sender(WebSocketClientProtocol):
    """Sends ``payload`` as binary messages (respecting backpressure), reads the echo back."""

    factory: SenderFactory
    CHUNK = 256 * 1024

    def onOpen(self) -> None:
        self.factory.opened_at = time.monotonic()
        self.factory.connection = self
        self._offset = 0
        self._paused = False
        self.received = 0
        self.hash = hashlib.sha256()
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        payload = self.factory.payload
        while not self._paused and self._offset < len(payload):
            chunk = payload[self._offset:self._offset + self.CHUNK]
            self._offset += len(chunk)
            self.sendMessage(chunk, isBinary=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.hash.update(payload)
        self.received += len(payload)
        if self.received >= len(self.factory.payload):
            self.sendClose(1000)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        d = self.factory.done
        if d.called:
            return
        if self.factory.opened_at is None:
            line = getattr(self, "http_status_line", None) or ""
            parts = line.split(" ", 2)
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
            d.errback(SendFailed(status, parts[2] if len(parts) > 2 else (reason or "")))
        else:
            d.callback((self.received, self.hash.hexdigest()))


class SenderFactory(WebSocketClientFactory):
    protocol = Sender  # type: ignore[assignment]

    def __init__(self, url: str, token: str, payload: bytes) -> None:
        super().__init__(url, headers={"ServiceBusAuthorization": token})
        self.payload = payload
        self.opened_at: float | None = None
        self.connection: Sender | None = None
        self.done: defer.Deferred[tuple[int, str]] = defer.Deferred()
        self.setProtocolOptions(
            autoFragmentSize=0, maxFramePayloadSize=0, maxMessagePayloadSize=0,
            utf8validateIncoming=False, openHandshakeTimeout=20, closeHandshakeTimeout=5,
        )


def send(relay: Relay, hc: str, payload: bytes, cas: Any,
         factory: SenderFactory | None = None) -> defer.Deferred[tuple[int, str]]:
    """One sender connection: send ``payload``, read it back; fires (bytes, sha256)."""
    url = urls.connect_url(connstr.parse(relay.connection_string(hc, "defaultSender")))
    if factory is None:
        factory = SenderFactory(url, mint(relay, hc, "defaultSender"), payload)
    else:
        factory.setSessionParameters(url, headers={"ServiceBusAuthorization": mint(
            relay, hc, "defaultSender")})
    endpoint = wrapClientTLS(tls.client_options("localhost", cas),
                             HostnameEndpoint(R, "localhost", relay.port, timeout=10))

    def failed(f: Failure) -> None:
        if not factory.done.called:
            factory.done.errback(f)

    endpoint.connect(factory).addErrback(failed)
    return factory.done


def rss_kib(pid: int) -> int:
    """Resident memory of a process (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def payload_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# ---- the tests ----------------------------------------------------------------------


class WorkerStack:
    """A relay, a TCP echo endpoint and one real worker driven over AMP, for a test case."""

    dir: Path
    relay: Relay
    cas: list[Any]
    echo: EchoFactory
    echo_port: int
    worker: WorkerProcess

    async def start_stack(self, relay_hcs: tuple[str, ...], endpoints: dict[str, str | None],
                          extra_toml: str = "", lifetime: float = 3600) -> None:
        """Start everything; ``endpoints`` maps each HC the worker listens on to its endpoint
        (None: the echo endpoint)."""
        test: Any = self
        self.dir = Path(test.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        self.relay = start_relay(self.dir, hcs=relay_hcs, extra_toml=extra_toml)
        test.addCleanup(self.relay.stop)
        self.cas = tls.load_ca_certificates(str(self.relay.ca_path))
        self.echo = EchoFactory()
        port = await TCP4ServerEndpoint(R, 0, interface="127.0.0.1").listen(self.echo)
        test.addCleanup(port.stopListening)
        self.echo_port = port.getHost().port
        self.worker = WorkerProcess.spawn(self.dir / "worker.log")
        test.addCleanup(self.worker.stop)
        await self.worker.wait_log("hcm worker ready")
        await self.worker.call(commands.SetHybridConnections, hcs=[
            hc_item(self.relay, name, endpoint or f"127.0.0.1:{self.echo_port}", lifetime=lifetime)
            for name, endpoint in endpoints.items()
        ])
        for name in endpoints:
            await self.worker.wait_log(rf"control channel connected: {name}")


class WorkerEndToEnd(WorkerStack, unittest.TestCase):
    timeout = 120

    async def start(self) -> None:
        dead = f"127.0.0.1:{harness.free_port()}"
        await self.start_stack(("hc1", "hc2"), {"hc1": None, "hc2": dead})

    def setUp(self) -> defer.Deferred[None]:  # type: ignore[override]
        return defer.ensureDeferred(self.start())

    @defer.inlineCallbacks
    def test_64mib_byte_exact(self) -> Any:
        """64 MiB go through relay and worker to the endpoint and back, byte for byte."""
        payload = payload_of(64 * MiB, 1)
        digest = hashlib.sha256(payload).hexdigest()
        started = time.monotonic()
        received, echoed = yield send(self.relay, "hc1", payload, self.cas)
        elapsed = time.monotonic() - started
        self.assertEqual(received, len(payload))
        self.assertEqual(echoed, digest)
        # The endpoint saw exactly the same bytes.
        yield self.wait_for(lambda: len(self.echo.finished) == 1, 10)
        self.assertEqual(self.echo.finished, [(len(payload), digest)])
        status = yield defer.ensureDeferred(self.worker.status("hc1"))
        self.assertEqual(status["bytes_in"], len(payload))
        self.assertEqual(status["bytes_out"], len(payload))
        self.assertEqual(status["accepted"], 1)
        self.assertEqual(status["endpoint_reachable"], True)
        print(f"\n64 MiB echo through relay+worker: {elapsed:.2f} s, "
              f"{2 * 64 / elapsed:.1f} MiB/s (both directions)")

    @defer.inlineCallbacks
    def test_100_concurrent(self) -> Any:
        """100 concurrent 1 MiB transfers all arrive intact."""
        payloads = [payload_of(MiB, 100 + i) for i in range(100)]
        started = time.monotonic()
        results = yield defer.gatherResults(
            [send(self.relay, "hc1", p, self.cas) for p in payloads], consumeErrors=True
        )
        elapsed = time.monotonic() - started
        for payload, (received, digest) in zip(payloads, results, strict=True):
            self.assertEqual(received, MiB)
            self.assertEqual(digest, hashlib.sha256(payload).hexdigest())
        yield self.wait_for(lambda: len(self.echo.finished) == 100, 20)
        expected = sorted((MiB, hashlib.sha256(p).hexdigest()) for p in payloads)
        self.assertEqual(sorted(self.echo.finished), expected)
        status = yield self.wait_status("hc1", lambda s: s["open"] == 0, 10)
        self.assertEqual(status["accepted"], 100)
        self.assertEqual(status["bytes_in"], 100 * MiB)
        print(f"\n100 x 1 MiB concurrent echo: {elapsed:.2f} s")

    @defer.inlineCallbacks
    def test_backpressure_stalled_endpoint(self) -> Any:
        """An endpoint that does not read pauses the sender; the worker's memory stays
        bounded; once it reads again, every byte arrives."""
        self.echo.stalled = True
        payload = payload_of(64 * MiB, 3)
        url = urls.connect_url(connstr.parse(self.relay.connection_string("hc1", "defaultSender")))
        factory = SenderFactory(url, "", payload)
        pid = self.worker.transport.pid
        rss_before = rss_kib(pid)
        done = send(self.relay, "hc1", payload, self.cas, factory)
        yield sleep(2)
        assert factory.connection is not None
        sent = factory.connection._offset
        rss_stalled = rss_kib(pid)
        self.assertLess(sent, 40 * MiB, "the sender was not paused")
        self.assertLess(rss_stalled - rss_before, 40 * 1024, "worker memory grew")
        self.echo.resume()
        received, digest = yield done
        self.assertEqual((received, digest), (len(payload), hashlib.sha256(payload).hexdigest()))
        print(f"\nstalled endpoint: sender paused after {sent / MiB:.1f} MiB; worker RSS "
              f"{rss_before / 1024:.0f} -> {rss_stalled / 1024:.0f} MiB")

    @defer.inlineCallbacks
    def test_endpoint_down_fails_sender_fast(self) -> Any:
        """An unreachable endpoint: the sender's handshake fails with 502 within 2 s."""
        started = time.monotonic()
        d = send(self.relay, "hc2", b"x", self.cas)
        try:
            yield d
        except SendFailed as e:
            failure = e
        else:
            self.fail("the sender connected to an unreachable endpoint")
        elapsed = time.monotonic() - started
        self.assertEqual(failure.status, 502)
        self.assertIn("Endpoint unreachable", failure.reason)
        self.assertLess(elapsed, 2.0)
        status = yield defer.ensureDeferred(self.worker.status("hc2"))
        self.assertEqual(status["rejected"], 1)
        self.assertEqual(status["endpoint_reachable"], False)
        self.assertEqual(status["state"], "connected")
        print(f"\nendpoint down: sender failed after {elapsed:.3f} s")

    @defer.inlineCallbacks
    def test_http_requests_answered_501(self) -> Any:
        """HTTP-mode requests get 501, inline (small) and via a rendezvous (large body)."""
        token = mint(self.relay, "hc1", "defaultSender")
        url = f"https://localhost:{self.relay.port}/hc1/some/path?x=1"
        context = ssl.create_default_context(cafile=str(self.relay.ca_path))

        def request(body: bytes | None) -> tuple[int, str]:
            req = urllib.request.Request(url, data=body, method="POST" if body else "GET",
                                         headers={"ServiceBusAuthorization": token})
            try:
                with urllib.request.urlopen(req, context=context, timeout=10) as response:
                    return response.status, response.reason
            except urllib.error.HTTPError as e:
                return e.code, e.reason

        small = yield threads.deferToThread(request, None)
        large = yield threads.deferToThread(request, b"x" * 200_000)
        self.assertEqual(small, (501, "Not Implemented"))
        self.assertEqual(large, (501, "Not Implemented"))

    @defer.inlineCallbacks
    def test_master_gone_worker_exits(self) -> Any:
        """Closing the AMP pipe makes the worker exit within 2 s."""
        started = time.monotonic()
        self.worker.transport.closeChildFD(3)
        yield self.wait_for(lambda: not self.worker.running, 5)
        self.assertLess(time.monotonic() - started, 2.0)

    def wait_for(self, predicate: Any, timeout: float) -> defer.Deferred[None]:
        async def wait() -> None:
            deadline = time.monotonic() + timeout
            while not predicate():
                if time.monotonic() > deadline:
                    raise AssertionError(f"condition not met within {timeout} s")
                await sleep(0.05)

        return defer.ensureDeferred(wait())

    def wait_status(self, hc: str, predicate: Any, timeout: float) -> defer.Deferred[Any]:
        async def wait() -> Any:
            deadline = time.monotonic() + timeout
            while True:
                status = await self.worker.status(hc)
                if predicate(status):
                    return status
                if time.monotonic() > deadline:
                    raise AssertionError(f"status not reached within {timeout} s: {status}")
                await sleep(0.1)

        return defer.ensureDeferred(wait())
