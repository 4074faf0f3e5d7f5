# -*- test-case-name: tests.agent.test_worker -*-
"""An agent worker: ``python -m hcm_twisted.agent.worker``.

The master starts one worker per core with AMP on file descriptors 3 (the
worker reads) and 4 (the worker writes); see :mod:`hcm_twisted.agent.commands`.
A worker holds one control channel per Hybrid Connection
(:class:`~hcm_twisted.agent.listener.Listener`) and bridges each accepted
rendezvous to the endpoint (:class:`~hcm_twisted.agent.rendezvous.Acceptor`).
It never sees a key: only short-lived tokens.  When the AMP pipe closes (the
master is gone) the worker exits within two seconds.  Logs go to stderr.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from hcm_twisted.agent.commands import (
    AMP_VALUE_LIMIT,
    Drain,
    GetStatus,
    SetHybridConnections,
    StageHybridConnections,
    UpdateToken,
    json_size,
)
from hcm_twisted.agent.listener import HcSpec, Listener
from hcm_twisted.agent.rendezvous import Acceptor, TcpEndpointMaker
from hcm_twisted.core import logging as hcm_logging
from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.core.fast import startup_done
from hcm_twisted.core.relayconn import EndpointMaker, TlsOptionsCache, default_endpoint_maker

EXIT_GRACE = 1.0  # seconds to close channels after the master went away


@attrs.define(eq=False)
class _Hc:
    listener: Listener
    acceptor: Acceptor


@attrs.define(eq=False)
class Worker:
    """The set of Hybrid Connections this worker listens on."""

    reactor: Any
    pid: int = attrs.field(factory=os.getpid)
    #: Extra Listener arguments (tests: ``rng``, ``wallclock``).
    listener_options: dict[str, Any] = attrs.field(factory=dict)
    #: Client endpoints to the relay and to endpoints (tests replace them).
    relay_endpoints: EndpointMaker | None = None
    tcp_endpoints: TcpEndpointMaker | None = None
    _hcs: dict[str, _Hc] = attrs.field(factory=dict)
    _draining: bool = False
    _log = Logger(namespace="hcm_twisted.agent.worker")

    def set_hybrid_connections(self, items: Any) -> None:
        """Reconcile: open new names, close removed ones, update changed ones."""
        if not isinstance(items, list):
            raise MalformedInput("hcs: must be a list of hybrid connections")
        wanted: dict[str, HcSpec] = {}
        for item in items:
            try:
                spec = HcSpec.from_json(item)
            except MalformedInput as e:
                self._log.error("ignoring a hybrid connection: {error}", error=str(e))
                continue
            wanted[spec.name] = spec
        for name in list(self._hcs):
            if name not in wanted:
                self._remove(name)
        for name, spec in wanted.items():
            hc = self._hcs.get(name)
            if hc is None:
                self._add(spec)
            elif hc.listener.spec != spec:
                hc.acceptor.spec = spec
                hc.listener.update(spec)

    def _add(self, spec: HcSpec) -> None:
        tls_cache = TlsOptionsCache(spec.ca_certificates)
        relay = self.relay_endpoints or default_endpoint_maker(self.reactor, tls_cache)
        acceptor = Acceptor(
            spec, self.reactor, relay_endpoints=relay, tcp_endpoints=self.tcp_endpoints
        )
        listener = Listener(
            spec,
            self.reactor,
            on_accept=acceptor.accept,
            on_request=acceptor.answer_request,
            endpoint_maker=relay,
            tls_cache=tls_cache,
            **self.listener_options,
        )
        self._hcs[spec.name] = _Hc(listener, acceptor)
        if not self._draining:
            listener.start()
        self._log.info("listening on hybrid connection {name}", name=spec.name)

    def _remove(self, name: str) -> Deferred[None]:
        hc = self._hcs.pop(name)
        self._log.info("closing hybrid connection {name}", name=name)
        d: Deferred[None] = maybeDeferred(hc.listener.stop)
        try:
            hc.acceptor.close_all()
        except Exception:
            self._log.failure("closing the connections of {name}", name=name)
        return d

    def update_token(self, name: str, token: str) -> None:
        hc = self._hcs.get(name)
        if hc is None:
            self._log.warn("a token for unknown hybrid connection {name}", name=name)
            return
        hc.listener.renew(token)

    def status(self, limit: int = AMP_VALUE_LIMIT) -> dict[str, Any]:
        """``{"pid", "hcs": {name: {...}}}``, kept under ``limit`` bytes of JSON.

        AMP values are capped at 64 kB.  With very many HCs, error texts are
        shortened first; if that is not enough, the HCs that do not fit are
        left out and ``"truncated": true`` says so.
        """
        hcs: dict[str, Any] = {}
        for name, hc in self._hcs.items():
            entry = hc.listener.status()
            entry.update(hc.acceptor.counters())
            hcs[name] = entry
        result: dict[str, Any] = {"pid": self.pid, "hcs": hcs}
        if json_size(result) <= limit:
            return result
        for entry in hcs.values():
            if entry.get("last_error") and len(entry["last_error"]) > 60:
                entry["last_error"] = entry["last_error"][:57] + "..."
        size = json_size(result)
        if size <= limit:
            return result
        kept: dict[str, Any] = {}
        size = json_size({"pid": self.pid, "hcs": {}, "truncated": True})
        for name, entry in hcs.items():
            item = json_size({name: entry}) - 1
            if size + item > limit:
                break
            kept[name] = entry
            size += item
        self._log.warn(
            "status of {total} hybrid connections does not fit one AMP value: sent {kept}",
            total=len(hcs), kept=len(kept),
        )
        return {"pid": self.pid, "hcs": kept, "truncated": True}

    def drain(self, timeout: float) -> Deferred[None]:
        """Stop accepting; let open connections finish for ``timeout`` s, then close them."""
        self._draining = True
        stops = [maybeDeferred(hc.listener.stop) for hc in self._hcs.values()]
        waits = [hc.acceptor.drain(timeout) for hc in self._hcs.values()]
        done: Deferred[Any] = DeferredList(stops + waits, consumeErrors=True)
        return done.addCallback(lambda _: None)

    def stop(self) -> Deferred[None]:
        """Close every channel and connection (the worker is exiting)."""
        stops = [self._remove(name) for name in list(self._hcs)]
        if not stops:
            return succeed(None)
        done: Deferred[Any] = DeferredList(stops, consumeErrors=True)
        return done.addCallback(lambda _: None)


class WorkerProtocol(amp.AMP):
    """The worker's end of the AMP pipe."""

    _log = Logger(namespace="hcm_twisted.agent.worker")

    def __init__(self, worker: Worker, on_lost: Any = None) -> None:
        super().__init__()
        self.worker = worker
        self._on_lost = on_lost
        self._staged: list[Any] = []

    @StageHybridConnections.responder
    def stage_hybrid_connections(self, hcs: Any) -> dict[str, Any]:
        if not isinstance(hcs, list):
            raise MalformedInput("hcs: must be a list of hybrid connections")
        self._staged.extend(hcs)
        return {}

    @SetHybridConnections.responder
    def set_hybrid_connections(self, hcs: Any) -> dict[str, Any]:
        staged, self._staged = self._staged, []
        if not isinstance(hcs, list):
            raise MalformedInput("hcs: must be a list of hybrid connections")
        self.worker.set_hybrid_connections(staged + hcs)
        return {}

    @UpdateToken.responder
    def update_token(self, name: str, token: str) -> dict[str, Any]:
        self.worker.update_token(name, token)
        return {}

    @GetStatus.responder
    def get_status(self) -> dict[str, Any]:
        return {"status": self.worker.status()}

    @Drain.responder
    def drain(self, timeout: float) -> Deferred[dict[str, Any]]:
        return self.worker.drain(timeout).addCallback(lambda _: {})

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        super().connectionLost(reason)
        if self._on_lost is not None:
            self._on_lost()


def _follow_master() -> None:
    """Leave shutdown to the master.

    Ctrl-C in a terminal reaches the whole process group; the master drains its
    workers, so a worker ignores SIGINT.  If the master dies without its pipe being
    noticed, Linux sends the worker SIGTERM (``PR_SET_PDEATHSIG``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def main() -> None:
    """Run a worker with AMP on fds 3 and 4 until the master goes away."""
    _follow_master()
    import txaio
    from twisted.internet import reactor as _reactor
    from twisted.internet import stdio

    reactor: Any = _reactor
    try:
        hcm_logging.start(
            os.environ.get("HCM_LOG_FORMAT", "text"),
            os.environ.get("HCM_LOG_LEVEL", "info"),
            stream=sys.stderr,
        )
    except MalformedInput:
        hcm_logging.start("text", "info", stream=sys.stderr)
    txaio.use_twisted()
    txaio.set_global_log_level("info")  # type: ignore[attr-defined]
    log = Logger(namespace="hcm_twisted.agent.worker")

    worker = Worker(reactor)
    exiting: list[bool] = []

    def stop_reactor() -> None:
        # SIGTERM from the master may have stopped the reactor already.
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass

    def master_gone() -> None:
        if exiting:
            return
        exiting.append(True)
        log.info("AMP pipe closed (master gone): exiting")
        timer = reactor.callLater(EXIT_GRACE, stop_reactor)  # whatever happens below
        d = maybeDeferred(worker.stop)

        def stopped(_: object) -> None:
            if timer.active():
                timer.cancel()
                reactor.callLater(0, stop_reactor)

        d.addBoth(stopped)

    protocol = WorkerProtocol(worker, on_lost=master_gone)
    stdio.StandardIO(protocol, stdin=3, stdout=4, reactor=reactor)  # type: ignore[call-arg]
    log.info("hcm worker ready (pid {pid})", pid=os.getpid())
    # Start-up is over: no per-connection pformat in autobahn, calmer cyclic GC.
    startup_done(log)
    # Twisted installs its own SIGINT handler when it starts: ignore SIGINT again after that.
    reactor.callWhenRunning(signal.signal, signal.SIGINT, signal.SIG_IGN)
    reactor.run()


if __name__ == "__main__":
    main()
