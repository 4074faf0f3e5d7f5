# -*- test-case-name: tests.relay.test_tap -*-
"""``twistd hcm-relay --config PATH``: the local Azure Relay Hybrid Connections stand-in.

SIGHUP re-reads the config file (hybrid connections, rules, keys, metadata; listeners
of deleted HCs are closed with 1001).  SIGUSR1 recycles every listener control channel
(close 1011, like Azure's periodic listener recycle); the config key
``listener-recycle`` does it per channel on a timer.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage

from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.relay.namespace import DEFAULT_ENDPOINT, Namespace, RelayConfig, load_config

_log = Logger(namespace="hcm_twisted.relay")


class Options(usage.Options):
    optParameters = [["config", "c", None, "Path of the relay's TOML configuration file."]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config PATH is required")
        try:
            self["relay-config"] = load_config(self["config"])
        except MalformedInput as e:
            raise usage.UsageError(str(e)) from None


def _has_cert(endpoint: str) -> bool:
    return "certkey=" in endpoint.lower()


def endpoint_description(config: RelayConfig) -> tuple[str, str | None]:
    """The server endpoint string to listen on and the CA file made for it (if any).

    Without TLS material (no ``endpoint``, or an ``ssl:`` one without
    ``certKey``) a private CA and server certificate are created beside the
    state file and used.
    """
    from hcm_twisted.core.tls import ensure_private_ca

    desc = config.endpoint or DEFAULT_ENDPOINT
    if desc.lower().startswith("ssl:") and not _has_cert(desc):
        ca, cert, key = ensure_private_ca(config.state_dir, list(config.hosts))
        desc = f"{desc}:privateKey={_escape(str(key))}:certKey={_escape(str(cert))}"
        return desc, str(ca)
    return desc, None


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


class RelayService(service.MultiService):
    """Opens the namespace and listens; logs ``hcm-relay listening on ...`` when ready."""

    def __init__(
        self, config: RelayConfig, reactor: Any = None, config_path: str | None = None
    ) -> None:
        super().__init__()
        self.config_path = config_path
        self._old_hup: Any = None
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self._old_usr1: Any = None
        from hcm_twisted.relay.server import build

        self.hub, self.factory = build(Namespace.open(config), reactor)
        desc, self.ca_path = endpoint_description(config)
        self._endpoint = endpoints.serverFromString(reactor, desc)
        # TLS session tickets (keys in memory, per process): returning clients resume
        # instead of a full handshake per rendezvous/sender connection.
        from hcm_twisted.core.tls import enable_session_tickets

        enable_session_tickets(self._endpoint)
        self.port_service = StreamServerEndpointService(self._endpoint, self.factory)
        self.port_service._raiseSynchronously = True
        self.port_service.setServiceParent(self)
        if config.metrics:
            from twisted.web.server import Site

            from hcm_twisted.core.metrics import MetricsResource, registry_from_dict

            site = Site(MetricsResource(self.hub.counters, registry_from_dict))
            site.noisy = False
            metrics = StreamServerEndpointService(
                endpoints.serverFromString(reactor, config.metrics), site
            )
            metrics.setServiceParent(self)

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> bool:
        """Re-read the config file: hybrid connections, rules, keys, metadata, timeouts.

        ``endpoint`` and ``metrics`` changes need a restart.  A bad file is
        logged and the running configuration kept.  Returns whether it applied.
        """
        if self.config_path is None:
            _log.warn("reload: no config file to re-read")
            return False
        try:
            config = load_config(self.config_path)
            namespace = Namespace.open(config)
        except (MalformedInput, OSError) as e:
            _log.error("reload of {path} failed, keeping the running config: {error}",
                       path=self.config_path, error=str(e))
            return False
        old = self.hub.config
        if (config.endpoint, config.metrics) != (old.endpoint, old.metrics):
            _log.warn("reload: 'endpoint' and 'metrics' changes take effect after a restart")
        changes = self.hub.apply_namespace(namespace)
        _log.info(
            "reloaded {path}: {n} hybrid connection(s) (added: {added}; removed: {removed})",
            path=self.config_path, n=len(config.hybrid_connections),
            added=", ".join(changes["added"]) or "-", removed=", ".join(changes["removed"]) or "-",
        )
        return True

    def _on_sigusr1(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._recycle_all)

    def _recycle_all(self) -> None:
        n = self.hub.recycle_listeners()
        _log.info("SIGUSR1: recycled {n} listener control channels (1011)", n=n)

    def startService(self) -> None:
        try:
            self._old_usr1 = signal.signal(signal.SIGUSR1, self._on_sigusr1)
            self._old_hup = signal.signal(signal.SIGHUP, self._on_sighup)
        except ValueError:  # not the main thread (tests)
            self._old_usr1 = self._old_hup = None
        if self.ca_path:
            _log.info("hcm-relay private CA: {path}", path=self.ca_path)
        super().startService()
        d = self.port_service._waitingForPort
        if d is not None:
            d.addCallback(self._listening)

    def stopService(self) -> defer.Deferred[None]:
        """Stop listening, then close every WebSocket with 1001 (bounded wait)."""
        if self._old_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._old_usr1)
            self._old_usr1 = None
        if self._old_hup is not None:
            signal.signal(signal.SIGHUP, self._old_hup)
            self._old_hup = None
        d = defer.maybeDeferred(super().stopService)
        d.addBoth(lambda _: self.hub.shutdown(self.hub.config.close_timeout))
        return d

    def _listening(self, port: IListeningPort) -> IListeningPort:
        host = port.getHost()
        _log.info(
            "hcm-relay listening on {host}:{port} (namespace {ns}, {n} hybrid connections)",
            host=getattr(host, "host", "?"), port=getattr(host, "port", "?"),
            ns=self.hub.config.namespace, n=len(self.hub.config.hybrid_connections),
        )
        return port


def makeService(options: usage.Options) -> service.IService:
    from hcm_twisted.core import logging as hcm_logging

    config = options["relay-config"] if "relay-config" in options else None
    if config is None:
        config = load_config(options["config"])
    relay = RelayService(config, config_path=options["config"])
    return hcm_logging.configure(options, relay, config.log_format, config.log_level)
