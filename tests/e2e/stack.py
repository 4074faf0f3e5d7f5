"""The whole path as real processes, for fault, security and soak tests.

    stack = Stack(directory, {"hc1": "127.0.0.1:7001"}, workers=2, agent={"ping-interval": 1})
    stack.start()                     # relay, agent (master + workers), sender: blocking, bounded
    port = stack.sender_ports["hc1"]  # apps connect here
    client = await run_pattern(port, 1 << 20)   # app -> sender -> relay -> agent -> endpoint
    stack.stop()

Endpoints (echo servers and the like) run in the test's process; the helpers that start
processes block (call them before the reactor work of a test or between awaits, keeping in
mind that in-process endpoints do not run while they block).  :class:`PatternClient` sends a
deterministic byte stream and checks every byte it gets back against the stream at that offset,
so a lost, duplicated or reordered byte is caught where it happens, not only in the final hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import tomli_w
from twisted.internet import defer, endpoints, protocol
from twisted.internet import reactor as _reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer

from hcm_twisted.agent.admin import UnixHTTPConnection
from tests.e2e import harness
from tests.e2e.relayfixture import Relay, start_relay

reactor: Any = _reactor

# -- a deterministic stream --------------------------------------------------------------------

_PATTERN_SIZE = 1 << 20
_PATTERN = hashlib.shake_256(b"hcm-twisted fault tests").digest(_PATTERN_SIZE)
_PATTERN2 = memoryview(_PATTERN * 2)
CHUNK = 64 * 1024


def pattern(offset: int, n: int) -> bytes:
    """``n`` (at most 1 MiB) bytes of the test stream starting at ``offset``."""
    start = offset % _PATTERN_SIZE
    return bytes(_PATTERN2[start:start + n])


def matches(offset: int, data: bytes) -> bool:
    """Whether ``data`` is the test stream at ``offset``."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        n = min(_PATTERN_SIZE, len(view) - pos)
        start = (offset + pos) % _PATTERN_SIZE
        if _PATTERN2[start:start + n] != view[pos:pos + n]:
            return False
        pos += n
    return True


@implementer(IHalfCloseableProtocol)
class PatternClient(protocol.Protocol):
    """Send ``size`` bytes of the stream (flow controlled), half-close, check the echo.

    ``in_order`` stays True while every byte received is the stream's byte at that offset
    (exactly once, in order).  ``clean`` says whether the connection ended with a FIN
    (ConnectionDone) rather than a reset or error.  ``rate`` (bytes/s, 0: as fast as possible)
    paces the writes so that a transfer is in flight when a fault is injected.
    """

    def __init__(self, size: int, rate: float = 0.0) -> None:
        self.size = size
        self.rate = rate
        self.written = 0
        self.count = 0
        self.in_order = True
        self.sent = hashlib.sha256()
        self.received = hashlib.sha256()
        self.clean: bool | None = None
        self.reason: Failure | None = None
        self.started = time.monotonic()
        self.ended: float | None = None
        self.closed: defer.Deferred[PatternClient] = defer.Deferred()
        self._paused = False
        self._timer: Any = None
        self._half_closed = False

    @property
    def complete(self) -> bool:
        return (self.in_order and self.count == self.size
                and self.received.digest() == self.sent.digest())

    @property
    def truncated(self) -> bool:
        return self.ended is not None and not self.complete

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._write_some()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._write_some()

    def stopProducing(self) -> None:
        self._paused = True

    def _write_some(self) -> None:
        self._timer = None
        if self.ended is not None or self._half_closed:
            return
        while self.written < self.size and not self._paused:
            n = min(CHUNK, self.size - self.written)
            if self.rate:
                due = self.started + (self.written + n) / self.rate
                wait = due - time.monotonic()
                if wait > 0:
                    if self._timer is None:
                        self._timer = reactor.callLater(wait, self._write_some)
                    return
            data = pattern(self.written, n)
            self.sent.update(data)
            self.written += n
            self.transport.write(data)  # type: ignore[union-attr]
        if self.written >= self.size and not self._half_closed:
            self._half_closed = True
            self.transport.unregisterProducer()  # type: ignore[union-attr]
            self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.in_order and not matches(self.count, data):
            self.in_order = False
        if self.count + len(data) > self.written:
            self.in_order = False  # more came back than was sent
        self.received.update(data)
        self.count += len(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.ended = time.monotonic()
        self.reason = reason
        self.clean = reason.check(ConnectionDone) is not None
        if not self.closed.called:
            self.closed.callback(self)

    def describe(self) -> str:
        why = "" if self.reason is None else f" ({getattr(self.reason.type, '__name__', '?')})"
        return (f"<{self.size} B: wrote {self.written}, got {self.count}, in order "
                f"{self.in_order}, clean {self.clean}{why}>")


def run_pattern(port: int, size: int, rate: float = 0.0, host: str = "127.0.0.1",
                timeout: float = 60.0,
                client: PatternClient | None = None) -> defer.Deferred[PatternClient]:
    """Connect, run a :class:`PatternClient` (``client``, or a new one); fires when the
    connection is closed.

    A connection still open after ``timeout`` is aborted (and reported as such: its
    ``reason`` is then a ``TimeoutError`` failure).
    """
    if client is None:
        client = PatternClient(size, rate)
    ep = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=10)

    def connected(_: Any) -> defer.Deferred[PatternClient]:
        def too_long() -> None:
            if client.transport is not None:
                client.transport.abortConnection()  # type: ignore[attr-defined]
            client.timed_out = True  # type: ignore[attr-defined]

        timer = reactor.callLater(timeout, too_long)

        def done(c: PatternClient) -> PatternClient:
            if timer.active():
                timer.cancel()
            return c

        return client.closed.addCallback(done)

    def refused(f: Failure) -> PatternClient:
        client.connectionLost(f)
        return client

    d = endpoints.connectProtocol(ep, client)
    d.addCallbacks(connected, refused)
    return d


# -- endpoints in this process -----------------------------------------------------------------


@implementer(IHalfCloseableProtocol)
class Echo(protocol.Protocol):
    """Echo with flow control; close after the peer's EOF."""

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]
        self.factory.connections += 1  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.transport.unregisterProducer()  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


def listen(proto: type[protocol.Protocol], **attrs: Any) -> Any:
    """Listen on 127.0.0.1 with ``proto``; the factory has ``connections`` and ``attrs``."""
    factory = protocol.Factory.forProtocol(proto)
    factory.connections = 0  # type: ignore[attr-defined]
    factory.noisy = False
    for k, v in attrs.items():
        setattr(factory, k, v)
    return reactor.listenTCP(0, factory, interface="127.0.0.1")


def sleep(seconds: float) -> defer.Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1,
                     what: str = "condition") -> Any:
    """Poll ``predicate`` (without blocking the reactor) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not true after {timeout} s")
        await sleep(interval)


# -- processes ---------------------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out.extend(int(c) for c in (task / "children").read_text().split())
    except OSError:
        pass
    return out


def alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rsplit(")", 1)[1].split()[0] != "Z"


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


SIG_RX = re.compile(r"sig=[A-Za-z0-9%+/=_-]{16,}")


def secret_findings(texts: Iterable[tuple[str, str]], keys: Iterable[str]) -> list[str]:
    """Where a key (or its URL-quoted form) or a token signature appears in ``texts``."""
    from urllib.parse import quote

    found: list[str] = []
    keys = [k for k in keys if k]
    for name, text in texts:
        for key in keys:
            for form in {key, quote(key, safe=""), key.rstrip("=")}:
                if form in text:
                    found.append(f"{name}: key {key[:6]}...")
        for m in SIG_RX.finditer(text):
            found.append(f"{name}: token signature {m.group(0)[:12]}...")
    return found


class Stack:
    """relay + agent (master and workers) + sender, on loopback.  See the module docstring."""

    def __init__(self, directory: Path, hcs: dict[str, str | None], workers: int = 2,
                 agent: dict[str, Any] | None = None, sender: dict[str, Any] | None = None,
                 relay_toml: str = "", relay_hcs: Iterable[str | dict[str, Any]] | None = None,
                 with_sender: bool = True) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hcs = dict(hcs)
        self.workers = workers
        self.agent_extra = dict(agent or {})
        self.sender_extra = dict(sender or {})
        self.relay_toml = relay_toml
        self.relay_hcs = list(relay_hcs) if relay_hcs is not None else list(self.hcs)
        self.with_sender = with_sender
        self.relay: Relay | None = None
        self.agent: harness.Proc | None = None
        self.sender: harness.Proc | None = None
        self.sender_ports: dict[str, int] = {}
        self.sock_dir = Path(tempfile.mkdtemp(prefix="hcmf-"))  # unix socket paths are short
        self.admin_sock = self.sock_dir / "admin.sock"
        self.agent_config = self.directory / "hcm.toml"
        self.sender_config = self.directory / "hcm-sender.toml"
        self._old_procs: list[harness.Proc] = []
        self._sender_starts = 0

    # starting and stopping

    def start(self) -> Stack:
        try:
            self.relay = start_relay(self.directory / "relay", hcs=self.relay_hcs,
                                     extra_toml=self.relay_toml)
            self.write_agent_config()
            self.start_agent()
            if self.with_sender:
                self.start_sender()
        except BaseException:
            self.stop()
            raise
        return self

    def agent_document(self) -> dict[str, Any]:
        assert self.relay is not None
        agent = {
            "workers": self.workers,
            "admin": f"unix:{self.admin_sock}:mode=600",
            "ca-certificates": str(self.relay.ca_path),
        }
        agent.update(self.agent_extra)
        items = []
        for hc, endpoint in self.hcs.items():
            item = {"name": hc, "connection-string": self.relay.connection_string(hc)}
            if endpoint is not None:
                item["endpoint"] = endpoint
            items.append(item)
        return {"agent": agent, "hybrid-connection": items}

    def write_agent_config(self, doc: dict[str, Any] | None = None) -> None:
        self.agent_config.write_text(tomli_w.dumps(doc or self.agent_document()))
        self.agent_config.chmod(0o600)

    def start_agent(self, timeout: float = 40.0) -> harness.Proc:
        if self.agent is not None:
            self._old_procs.append(self.agent)
        n = len(self._old_procs)
        self.agent = harness.twist("hcm", self.agent_config, cwd=self.directory,
                                   name="hcm-agent" if n == 0 else f"hcm-agent-{n}")
        self.agent.wait_log(r"hcm agent ready", timeout=timeout)
        for hc in self.hcs:
            self.agent.wait_log(rf"control channel connected: {re.escape(hc)}", timeout=timeout)
        return self.agent

    def start_sender(self, timeout: float = 30.0) -> harness.Proc:
        assert self.relay is not None
        items = []
        for hc in self.hcs:
            port = self.sender_ports.get(hc) or 0
            while not port or port in {p for h, p in self.sender_ports.items() if h != hc}:
                port = harness.free_port()  # free a moment ago, and not given to another HC
            self.sender_ports[hc] = port
            items.append({
                "name": hc,
                "connection-string": self.relay.connection_string(hc, "defaultSender"),
                "listen": f"tcp:{port}:interface=127.0.0.1",
            })
        doc: dict[str, Any] = {"ca-certificates": str(self.relay.ca_path)}
        doc.update(self.sender_extra)
        doc["hybrid-connection"] = items
        self.sender_config.write_text(tomli_w.dumps(doc))
        self.sender_config.chmod(0o600)
        self._sender_starts += 1
        name = "hcm-sender" if self._sender_starts == 1 else f"hcm-sender-{self._sender_starts}"
        self.sender = harness.twist("hcm-sender", self.sender_config, cwd=self.directory,
                                    name=name)
        for hc, port in self.sender_ports.items():
            self.sender.wait_log(rf"hcm-sender listening on 127\.0\.0\.1:{port} for "
                                 rf"{re.escape(hc)}", timeout=timeout)
        return self.sender

    def stop(self) -> None:
        for proc in (self.sender, self.agent):
            if proc is not None:
                proc.stop()
        if self.relay is not None:
            self.relay.stop()
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    # looking at it

    def worker_pids(self) -> list[int]:
        assert self.agent is not None
        return [p for p in child_pids(self.agent.pid) if alive(p)]

    def pids(self) -> dict[str, int]:
        """Every process of the stack by role (relay, master, worker-N, sender)."""
        out: dict[str, int] = {}
        if self.relay is not None and self.relay.proc is not None:
            out["relay"] = self.relay.proc.pid
        if self.agent is not None:
            out["master"] = self.agent.pid
            for i, pid in enumerate(sorted(self.worker_pids())):
                out[f"worker-{i}"] = pid
        if self.sender is not None:
            out["sender"] = self.sender.pid
        return out

    def admin(self, method: str, path: str, body: bytes | None = None,
              timeout: float = 10.0) -> tuple[int, bytes]:
        """One blocking HTTP request to the agent's admin socket."""
        conn = UnixHTTPConnection(str(self.admin_sock), timeout)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def status(self) -> list[dict[str, Any]]:
        code, body = self.admin("GET", "/status")
        if code != 200:
            raise AssertionError(f"/status: {code} {body[:200]!r}")
        return json.loads(body)  # type: ignore[no-any-return]

    def log_files(self) -> list[Path]:
        """Every log file the stack's processes wrote (relay, agent and workers, sender)."""
        return sorted(self.directory.rglob("*.log"))

    def logs(self) -> list[tuple[str, str]]:
        return [(p.name, p.read_text(errors="replace")) for p in self.log_files()]

    def hcm(self, *args: str, timeout: float = 30.0) -> Any:
        return harness.hcm_cli(["--config", str(self.agent_config), *args], cwd=self.directory,
                               timeout=timeout)

