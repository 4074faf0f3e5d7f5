# -*- test-case-name: tests.agent.test_supervisor -*-
"""The agent's master: it owns the keys and supervises the workers.

The master spawns ``python -m hcm_twisted.agent.worker`` N times.  Each child
gets AMP on file descriptors 3 (the child reads, we write) and 4 (the child
writes, we read); the :class:`WorkerProcess` protocol is AMP's transport, in
the shape of ``twisted.trial._dist`` (``LocalWorker``/``LocalWorkerTransport``).
A worker's stdout and stderr are relayed line by line into the master's log.

Once a worker is spawned it is sent the whole desired set of hybrid
connections (``SetHybridConnections``): listen URL, endpoint, a listen token
minted here (:mod:`hcm_twisted.agent.tokens`), trust anchors, timers.  Keys
never leave this process: not in argv, not in the environment, not over AMP.
Renewed tokens go out with ``UpdateToken``.

A worker that exits unexpectedly is restarted after 1 s, doubling up to 30 s
while it keeps failing within ``STABLE_AFTER`` seconds of its start (a crash
loop, shown in the status and the log).  ``stopService`` drains every worker
(``Drain(timeout)``), then closes the AMP pipe and sends SIGTERM (SIGKILL if
it lingers).  Workers also exit by themselves when the AMP pipe closes, so
they do not outlive a master that dies.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.protocols import amp
from twisted.python.failure import Failure

import hcm_twisted
from hcm_twisted.agent import commands
from hcm_twisted.agent import config as configmod
from hcm_twisted.agent.config import AgentConfig, HybridConnectionConfig
from hcm_twisted.agent.metadata import EndpointResolver, fetch_endpoint, make_agent
from hcm_twisted.agent.tokens import TokenManager
from hcm_twisted.core import urls
from hcm_twisted.core.connstr import ConnectionString
from hcm_twisted.core.timers import cancel

AMP_TO_CHILD = 3  # the worker reads AMP from its fd 3
AMP_FROM_CHILD = 4  # the worker writes AMP to its fd 4

MIN_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 10.0  # a worker that ran this long before exiting is not crash-looping
CRASH_LOOP_AFTER = 3  # quick exits in a row before we call it a crash loop
STATUS_TIMEOUT = 3.0
AMP_TIMEOUT = 10.0
TERM_GRACE = 5.0  # SIGTERM -> SIGKILL
DRAIN_SLACK = 5.0  # extra time given to a Drain answer
MAX_LINE = 16 * 1024

WORKER_MODULE = "hcm_twisted.agent.worker"

# Slot states, as shown in the status.
STARTING = "starting"
RUNNING = "running"
BACKOFF = "restarting"
CRASH_LOOP = "crash-loop"
STOPPING = "stopping"
STOPPED = "stopped"


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns ``(soft, hard)`` after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text().strip())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def worker_environment(log_format: str = "text", log_level: str = "info") -> dict[str, str]:
    """The environment for a worker: ours, with this package importable."""
    env = dict(os.environ)
    root = str(Path(hcm_twisted.__file__).resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        paths.insert(0, root)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["HCM_LOG_FORMAT"] = log_format
    env["HCM_LOG_LEVEL"] = log_level
    return env


_TEXT_LINE = re.compile(r"^\S+ \[([^\]#]*)#(\w+)\] (.*)$", re.S)


def _parse_worker_line(text: str) -> tuple[LogLevel, str, str]:
    """``(level, namespace, message)`` of a worker's text or JSON log line."""
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("message"), str):
            return (_level(record.get("level")), str(record.get("namespace") or "-"),
                    record["message"])
    m = _TEXT_LINE.match(text)
    if m:
        return _level(m.group(2)), m.group(1), m.group(3)
    return LogLevel.info, "-", text


def _level(name: Any) -> LogLevel:
    try:
        return LogLevel.levelWithName(str(name).lower().replace("warning", "warn"))
    except Exception:
        return LogLevel.info


def _describe_exit(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, error.ProcessDone):
        return "exit status 0"
    if isinstance(value, error.ProcessTerminated):
        if value.signal is not None:
            return f"killed by signal {value.signal}"
        return f"exit status {value.exitCode}"
    return str(value)


class _WorkerAddress:
    """The address of the AMP pipe (there is none to speak of)."""

    def __repr__(self) -> str:
        return "<worker pipe>"


class _PipeTransport:
    """AMP's transport: writes go to the child's fd 3 (``LocalWorkerTransport``)."""

    disconnecting = False

    def __init__(self, process: Any) -> None:
        self._process = process

    def write(self, data: bytes) -> None:
        self._process.writeToChild(AMP_TO_CHILD, data)

    def writeSequence(self, seq: Sequence[bytes]) -> None:  # noqa: N802 (Twisted API)
        for data in seq:
            self._process.writeToChild(AMP_TO_CHILD, data)

    def loseConnection(self) -> None:  # noqa: N802 (Twisted API)
        self.disconnecting = True
        try:
            self._process.closeChildFD(AMP_TO_CHILD)
        except Exception:
            pass

    def abortConnection(self) -> None:  # noqa: N802 (Twisted API)
        self.loseConnection()

    def getPeer(self) -> _WorkerAddress:  # noqa: N802 (Twisted API)
        return _WorkerAddress()

    def getHost(self) -> _WorkerAddress:  # noqa: N802 (Twisted API)
        return _WorkerAddress()


class MasterAMP(amp.AMP):
    """The master's end of one worker's AMP pipe."""

    _log = Logger()

    def __init__(self, worker: WorkerProcess) -> None:
        super().__init__()
        self.worker = worker
        self.connected = False

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        super().connectionMade()
        self.connected = True

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:  # noqa: N802, B008
        self.connected = False
        super().connectionLost(reason)


class WorkerProcess(ProcessProtocol):
    """One worker child: AMP on fds 3/4, its output relayed to our log."""

    _log = Logger()

    def __init__(self, index: int, on_ended: Callable[[WorkerProcess, Failure], object]) -> None:
        self.index = index
        self.pid: int | None = None
        self.amp = MasterAMP(self)
        self.ended: Deferred[None] = Deferred()
        self._on_ended = on_ended
        self._buffers: dict[int, bytes] = {1: b"", 2: b""}
        self.exited = False

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        self.pid = getattr(self.transport, "pid", None)
        self.amp.makeConnection(_PipeTransport(self.transport))  # type: ignore[arg-type]

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N802, N803
        if childFD == AMP_FROM_CHILD:
            self.amp.dataReceived(data)
        elif childFD in self._buffers:
            buffered = self._buffers[childFD] + data
            *lines, rest = buffered.split(b"\n")
            if len(rest) > MAX_LINE:
                lines.append(rest)
                rest = b""
            self._buffers[childFD] = rest
            for line in lines:
                self._relay(line)

    def childConnectionLost(self, childFD: int) -> None:  # noqa: N802, N803
        if childFD == AMP_FROM_CHILD and self.amp.connected:
            self.amp.connectionLost(Failure(error.ConnectionDone("worker closed its AMP pipe")))

    def _relay(self, line: bytes) -> None:
        """Re-log one output line of the worker at its own level."""
        text = line.decode("utf-8", "replace").rstrip("\r")
        if not text.strip():
            return
        level, namespace, message = _parse_worker_line(text)
        self._log.emit(
            level, "worker {pid}: [{worker_namespace}] {line}",
            pid=self.pid, worker_namespace=namespace, line=message,
        )

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 (Twisted API)
        for fd, rest in self._buffers.items():
            if rest:
                self._relay(rest)
            self._buffers[fd] = b""
        self.exited = True
        if self.amp.connected:
            self.amp.connectionLost(reason)
        try:
            self._on_ended(self, reason)
        finally:
            self.ended.callback(None)

    def signal(self, name: str) -> None:
        if self.exited or self.transport is None:
            return
        try:
            self.transport.signalProcess(name)
        except (error.ProcessExitedAlready, OSError):
            pass


@attrs.define(eq=False)
class _Slot:
    """A place for one worker; it survives the worker's restarts."""

    index: int
    process: WorkerProcess | None = None
    state: str = STARTING
    started_at: float = 0.0
    failures: int = 0
    restarts: int = 0
    last_exit: str | None = None
    restart_call: IDelayedCall | None = None
    retired: bool = False
    stopping: Deferred[None] | None = None

    def cancel_restart(self) -> None:
        cancel(self.restart_call)
        self.restart_call = None


def chunk_items(items: list[dict[str, Any]], limit: int = commands.AMP_VALUE_LIMIT) -> list[list[dict[str, Any]]]:
    """Split ``items`` into lists whose JSON fits in one AMP value (at least one list)."""
    chunks: list[list[dict[str, Any]]] = [[]]
    size = 2
    for item in items:
        item_size = commands.json_size(item) + 1
        if chunks[-1] and size + item_size > limit:
            chunks.append([])
            size = 2
        chunks[-1].append(item)
        size += item_size
    return chunks


@attrs.frozen
class _NoAnswer:
    """A worker did not answer ``GetStatus``."""

    why: str


def restart_delay(failures: int) -> float:
    """Seconds before restarting a worker after ``failures`` quick exits in a row."""
    if failures <= 1:
        return MIN_RESTART_DELAY
    return min(MAX_RESTART_DELAY, MIN_RESTART_DELAY * 2 ** (failures - 1))


class Supervisor(service.Service):
    """The master: config, tokens, endpoints, workers; status and reload for the admin API."""

    _log = Logger()

    def __init__(
        self,
        config: AgentConfig,
        reactor: Any = None,
        worker_argv: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        fetch: Callable[[ConnectionString], Deferred[str]] | None = None,
        load: Callable[[Path], AgentConfig] = configmod.load,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.config = config
        self._argv = list(worker_argv or [sys.executable, "-m", WORKER_MODULE])
        self._env = env
        self._load = load
        self._fetch = fetch
        self.slots: list[_Slot] = []
        self._stopping = False
        self.tokens = TokenManager(reactor, self._push_token, lifetime=config.token_lifetime)
        self.resolver = EndpointResolver(reactor, self._fetch_endpoint, self._endpoint_changed)
        self._http_agent: Any = None

    # ---- lifecycle ------------------------------------------------------

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()
        self._stopping = False
        soft, hard = raise_nofile_limit()
        self._log.info("open file limit {soft} (hard {hard})", soft=soft, hard=hard)
        self._apply_hcs(self.config)
        self.resolver.start()
        self.slots = [s for s in self.slots if s.process is not None and not s.process.exited]
        count = self.config.worker_count()
        for index in range(count):
            slot = _Slot(index)
            self.slots.append(slot)
            self._spawn(slot)
        self._log.info("started {count} worker(s)", count=count)

    def stopService(self) -> Deferred[None]:  # noqa: N802 (Twisted API)
        super().stopService()
        self._stopping = True
        self.resolver.stop()
        self.tokens.stop()
        timeout = self.config.drain_timeout
        stops = [self._stop_slot(slot, timeout) for slot in self.slots]
        d: Deferred[Any] = defer.DeferredList(stops, consumeErrors=True)
        return d.addCallback(lambda _: None)

    # ---- workers --------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        slot.restart_call = None
        proto = WorkerProcess(slot.index, self._ended)
        slot.process = proto
        slot.state = STARTING
        slot.started_at = self.reactor.seconds()
        env = self._env if self._env is not None else worker_environment(
            self.config.log_format, self.config.log_level
        )
        try:
            self.reactor.spawnProcess(
                proto,
                self._argv[0],
                self._argv,
                env=env,
                childFDs={0: "w", 1: "r", 2: "r", AMP_TO_CHILD: "w", AMP_FROM_CHILD: "r"},
            )
        except Exception:
            self._log.failure("could not start worker {index}", index=slot.index)
            slot.process = None
            self._schedule_restart(slot, "could not start")
            return
        self._log.info("worker {index} started (pid {pid})", index=slot.index, pid=proto.pid)
        slot.state = RUNNING
        self._send_set(proto)

    def _ended(self, proto: WorkerProcess, reason: Failure) -> None:
        slot = next((s for s in self.slots if s.process is proto), None)
        how = _describe_exit(reason)
        if slot is None:
            return
        slot.process = None
        slot.last_exit = how
        if self._stopping or slot.retired:
            slot.state = STOPPED
            self._log.info("worker {index} (pid {pid}) stopped: {how}",
                           index=slot.index, pid=proto.pid, how=how)
            if slot.retired and slot in self.slots:
                self.slots.remove(slot)
            return
        self._schedule_restart(slot, how, pid=proto.pid)

    def _schedule_restart(self, slot: _Slot, how: str, pid: int | None = None) -> None:
        ran = self.reactor.seconds() - slot.started_at
        if ran >= STABLE_AFTER:
            slot.failures = 1
        else:
            slot.failures += 1
        delay = restart_delay(slot.failures)
        slot.restarts += 1
        if slot.failures >= CRASH_LOOP_AFTER:
            slot.state = CRASH_LOOP
            self._log.error(
                "worker {index} is crash-looping ({failures} exits in a row within {stable} s of"
                " starting; last: {how}); restarting in {delay} s",
                index=slot.index, failures=slot.failures, stable=STABLE_AFTER, how=how,
                delay=delay,
            )
        else:
            slot.state = BACKOFF
            self._log.warn(
                "worker {index} (pid {pid}) exited ({how}); restarting in {delay} s",
                index=slot.index, pid=pid, how=how, delay=delay,
            )
        slot.restart_call = self.reactor.callLater(delay, self._spawn, slot)

    def _stop_slot(self, slot: _Slot, timeout: float) -> Deferred[None]:
        """Drain one worker, then close its pipe and terminate it."""
        slot.cancel_restart()
        proto = slot.process
        if proto is None or proto.exited:
            slot.state = STOPPED
            return defer.succeed(None)
        if slot.stopping is not None:  # already on its way out (retired)
            waiter: Deferred[None] = Deferred()
            slot.stopping.addBoth(lambda _: waiter.callback(None))
            return waiter
        slot.state = STOPPING
        slot.stopping = self._drain_and_terminate(proto, timeout)
        return slot.stopping

    def _drain_and_terminate(self, proto: WorkerProcess, timeout: float) -> Deferred[None]:

        def terminate(_: object) -> Deferred[None]:
            if proto.exited:
                return defer.succeed(None)
            proto.amp.transport.loseConnection()  # type: ignore[union-attr]
            proto.signal("TERM")
            kill = self.reactor.callLater(TERM_GRACE, proto.signal, "KILL")

            def ended(_: object) -> None:
                if kill.active():
                    kill.cancel()

            return proto.ended.addBoth(ended)

        if proto.amp.connected and timeout > 0:
            drained = proto.amp.callRemote(commands.Drain, timeout=timeout)
            drained.addTimeout(timeout + DRAIN_SLACK, self.reactor)
            drained.addErrback(lambda f: self._log.debug(
                "worker {pid}: drain did not finish cleanly: {why}", pid=proto.pid,
                why=f.getErrorMessage()))
            return drained.addBoth(terminate)
        return terminate(None)

    def _resize(self, count: int) -> None:
        live = [s for s in self.slots if not s.retired]
        if count > len(live):
            used = {s.index for s in self.slots}
            index = 0
            for _ in range(count - len(live)):
                while index in used:
                    index += 1
                used.add(index)
                slot = _Slot(index)
                self.slots.append(slot)
                self._spawn(slot)
        elif count < len(live):
            for slot in live[count:]:
                slot.retired = True
                self._log.info("retiring worker {index}", index=slot.index)
                d = self._stop_slot(slot, self.config.drain_timeout)
                d.addBoth(self._forget_slot, slot)

    def _forget_slot(self, _: object, slot: _Slot) -> None:
        if slot in self.slots:
            self.slots.remove(slot)

    def running_workers(self) -> list[WorkerProcess]:
        return [s.process for s in self.slots
                if s.process is not None and not s.process.exited and s.process.amp.connected]

    # ---- what workers get -----------------------------------------------

    def endpoint_of(self, hc: HybridConnectionConfig) -> str | None:
        return hc.endpoint if hc.endpoint is not None else self.resolver.endpoint(hc.name)

    def desired(self) -> list[dict[str, Any]]:
        """The ``SetHybridConnections`` items: every HC that has an endpoint."""
        out = []
        for hc in self.config.hybrid_connections:
            endpoint = self.endpoint_of(hc)
            token = self.tokens.token(hc.name)
            if endpoint is None or token is None:
                continue
            out.append({
                "name": hc.name,
                "url": urls.listen_url(hc.connection_string),
                "endpoint": endpoint,
                "token": token,
                "ca_certificates": list(self.config.ca_certificates),
                "ping_interval": self.config.ping_interval,
                "connect_timeout": configmod.DEFAULT_CONNECT_TIMEOUT,
                "proxy": self.config.proxy,
                "no_proxy": self.config.no_proxy,
            })
        return out

    def _send_set(self, proto: WorkerProcess) -> None:
        """Send the whole desired set; in parts when it is too big for one AMP value."""
        *staged, last = chunk_items(self.desired())
        for part in staged:
            d = proto.amp.callRemote(commands.StageHybridConnections, hcs=part)
            d.addTimeout(AMP_TIMEOUT, self.reactor)
            d.addErrback(self._amp_failed, proto, "StageHybridConnections")
        d = proto.amp.callRemote(commands.SetHybridConnections, hcs=last)
        d.addTimeout(AMP_TIMEOUT, self.reactor)
        d.addErrback(self._amp_failed, proto, "SetHybridConnections")

    def _push_all(self) -> None:
        for proto in self.running_workers():
            self._send_set(proto)

    def _push_token(self, name: str, token: str) -> None:
        for proto in self.running_workers():
            d = proto.amp.callRemote(commands.UpdateToken, name=name, token=token)
            d.addTimeout(AMP_TIMEOUT, self.reactor)
            d.addErrback(self._token_failed, proto)

    def _token_failed(self, f: Failure, proto: WorkerProcess) -> None:
        """A renewed token did not arrive: send the whole set (it holds the token) once more."""
        self._amp_failed(f, proto, "UpdateToken")
        if not proto.exited and proto.amp.connected:
            self._send_set(proto)

    def _amp_failed(self, f: Failure, proto: WorkerProcess, what: str) -> None:
        if proto.exited or not proto.amp.connected:
            return  # it is being restarted; the new one gets the whole set
        self._log.warn("worker {pid}: {what} failed: {why}",
                       pid=proto.pid, what=what, why=f.getErrorMessage())

    # ---- endpoints from metadata ----------------------------------------

    def _fetch_endpoint(self, cs: ConnectionString) -> Deferred[str]:
        if self._fetch is not None:
            return self._fetch(cs)
        if self._http_agent is None:
            self._http_agent = make_agent(self.reactor, self.config.ca_certificates,
                                          self.config.proxy, self.config.no_proxy)
        return Deferred.fromCoroutine(
            fetch_endpoint(self._http_agent, cs, self.reactor.seconds(), self.reactor)
        )

    def _endpoint_changed(self, name: str) -> None:
        if self.running:
            self._push_all()

    # ---- config ---------------------------------------------------------

    def _apply_hcs(self, config: AgentConfig) -> None:
        self.tokens.lifetime = config.token_lifetime
        for hc in config.hybrid_connections:
            self.tokens.set(hc.name, hc.connection_string)
        self.tokens.retain(hc.name for hc in config.hybrid_connections)
        self.resolver.set(
            (hc.name, hc.connection_string)
            for hc in config.hybrid_connections if hc.endpoint is None
        )
        for hc in config.hybrid_connections:
            if hc.endpoint is None and self.resolver.endpoint(hc.name) is None:
                self._log.info("hybrid connection {name}: no endpoint yet (reading user metadata)",
                               name=hc.name)

    def reload(self) -> AgentConfig:
        """Re-read the config file and apply it; :class:`MalformedInput` leaves all as it was."""
        new = self._load(self.config.path)
        old = self.config
        if new.admin != old.admin:
            self._log.warn("the admin endpoint changed; it takes effect when the agent restarts")
        if (new.ca_certificates, new.proxy, new.no_proxy) != (
            old.ca_certificates, old.proxy, old.no_proxy
        ):
            self._http_agent = None
        self.config = new
        self._apply_hcs(new)
        before = {hc.name for hc in old.hybrid_connections}
        after = {hc.name for hc in new.hybrid_connections}
        self._log.info(
            "reloaded {path}: {count} hybrid connection(s) (added: {added}; removed: {removed})",
            path=str(new.path), count=len(after),
            added=", ".join(sorted(after - before)) or "none",
            removed=", ".join(sorted(before - after)) or "none",
        )
        if self.running:
            self._push_all()
            self._resize(new.worker_count())
        return new

    # ---- status ---------------------------------------------------------

    def status(self) -> Deferred[list[dict[str, Any]]]:
        """Per HC: ``name``, ``connected``, ``endpoint``, ``workers`` (see DESIGN "Status")."""
        slots = list(self.slots)

        def ask(slot: _Slot) -> Deferred[Any]:
            proto = slot.process
            if proto is None or proto.exited or not proto.amp.connected:
                return defer.succeed(None)
            d = proto.amp.callRemote(commands.GetStatus)
            d.addTimeout(STATUS_TIMEOUT, self.reactor)
            d.addCallback(lambda answer: answer["status"])
            d.addErrback(lambda f: _NoAnswer(f.getErrorMessage()))
            return d

        gathered: Deferred[Any] = defer.gatherResults([ask(s) for s in slots])
        return gathered.addCallback(lambda answers: self._compose(slots, answers))

    def _compose(self, slots: list[_Slot], answers: list[Any]) -> list[dict[str, Any]]:
        out = []
        for hc in self.config.hybrid_connections:
            endpoint = self.endpoint_of(hc)
            obj: dict[str, Any] = {
                "name": hc.name,
                "connected": False,
                "endpoint": endpoint,
                "endpoint_source": "config" if hc.endpoint is not None else "metadata",
                "namespace": hc.connection_string.namespace,
                "entity": hc.entity,
                "connection_string": hc.connection_string.masked(),
                "token_expiry": self.tokens.expiry(hc.name),
                "state": "active",
                "error": None,
                "workers": [],
            }
            if endpoint is None:
                obj["state"] = "no endpoint"
                obj["error"] = f"no endpoint: {self.resolver.error(hc.name) or 'not configured'}"
                out.append(obj)
                continue
            for slot, answer in zip(slots, answers, strict=True):
                obj["workers"].append(self._worker_entry(slot, answer, hc.name))
            obj["connected"] = any(w["connected"] for w in obj["workers"])
            out.append(obj)
        return out

    def _worker_entry(self, slot: _Slot, answer: Any, name: str) -> dict[str, Any]:
        proto = slot.process
        entry: dict[str, Any] = {
            "worker": slot.index,
            "pid": proto.pid if proto is not None else None,
            "state": slot.state,
            "open": 0,
            "accepted": 0,
            "restarts": slot.restarts,
            "quick_exits": slot.failures if slot.state in (BACKOFF, CRASH_LOOP) else 0,
            "last_exit": slot.last_exit,
        }
        if isinstance(answer, _NoAnswer):
            entry["state"] = "unresponsive"
            entry["last_error"] = answer.why
        elif isinstance(answer, dict):
            hcs = answer.get("hcs")
            item = hcs.get(name) if isinstance(hcs, dict) else None
            if isinstance(item, dict):
                for key, value in item.items():
                    if "token" in key.lower() and key.lower() != "token_expiry":
                        continue  # never show a token, even if a worker reports one
                    entry[key] = value
                entry["connected"] = item.get("state") == "connected"
            else:
                entry["state"] = "not listening"
            if isinstance(answer.get("pid"), int):
                entry["pid"] = answer["pid"]
        if slot.state in (BACKOFF, CRASH_LOOP, STOPPING) and not isinstance(answer, dict):
            entry["state"] = slot.state
        entry.setdefault("connected", False)
        return entry
