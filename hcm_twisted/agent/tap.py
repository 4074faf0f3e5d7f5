# -*- test-case-name: tests.agent.test_supervisor -*-
"""``twistd -n hcm --config PATH``: the agent's master."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from hcm_twisted.agent import admin, config
from hcm_twisted.agent.supervisor import Supervisor
from hcm_twisted.core import tls
from hcm_twisted.core.errors import MalformedInput


def default_config_path() -> str:
    return os.environ.get("HCM_CONFIG") or config.DEFAULT_CONFIG_PATH


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = (
        "Run the Hybrid Connection Manager agent: a master holding the keys and a pool of "
        "workers listening on every configured hybrid connection."
    )
    optParameters = [
        ["config", "c", None, "the agent config file (default: $HCM_CONFIG or /etc/hcm/hcm.toml)"],
    ]

    def postOptions(self) -> None:  # noqa: N802 (Twisted API)
        path = Path(self["config"] or default_config_path())
        try:
            loaded = config.load(path)
            tls.load_ca_certificates(list(loaded.ca_certificates))
        except MalformedInput as e:
            raise usage.UsageError(str(e)) from None
        self["config"] = str(path)
        self["loaded"] = loaded


class AgentService(service.MultiService):
    """The supervisor plus the admin API; logs ``hcm agent ready`` once both are up."""

    _log = Logger()

    def __init__(self, supervisor: Supervisor, admin_endpoint: str, reactor: Any) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.admin_endpoint = admin_endpoint
        self.reactor = reactor
        self.port: IListeningPort | None = None
        supervisor.setServiceParent(self)

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        """Listen on the admin endpoint first: if that fails, no worker is started."""
        service.Service.startService(self)
        _prepare_unix_socket(self.admin_endpoint)
        try:
            endpoint = endpoints.serverFromString(self.reactor, self.admin_endpoint)
        except (ValueError, KeyError, TypeError) as e:
            self._abort(f"bad admin endpoint {self.admin_endpoint!r}: {e}")
            return
        outcome: list[Any] = []
        d = endpoint.listen(admin.make_site(self.supervisor))
        d.addBoth(outcome.append)
        if outcome and isinstance(outcome[0], Failure):
            self._abort(
                f"cannot listen on the admin endpoint {self.admin_endpoint}"
                f" (is another agent running?): {outcome[0].getErrorMessage()}"
            )
            return
        for child in self:
            child.startService()
        if outcome:
            self._listening(outcome[0])
        else:  # an endpoint that listens later
            d.addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        if not self.running:
            port.stopListening()
            return
        self._log.info(
            "hcm agent ready: admin API on {endpoint}, {workers} worker(s),"
            " {count} hybrid connection(s)",
            endpoint=self.admin_endpoint, workers=len(self.supervisor.slots),
            count=len(self.supervisor.config.hybrid_connections),
        )

    def _failed(self, f: Failure) -> None:
        self._log.critical(
            "cannot listen on the admin endpoint {endpoint} (is another agent running?): {error}",
            endpoint=self.admin_endpoint, error=f.getErrorMessage(),
        )
        self.reactor.callWhenRunning(self.reactor.stop)

    def _abort(self, message: str) -> None:
        self._log.critical("{message}", message=message)
        self.running = False
        if self.reactor.running:
            self.reactor.stop()
            return
        raise SystemExit(f"hcm: {message}")

    def stopService(self) -> Any:  # noqa: N802 (Twisted API)
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        if not self.supervisor.running:
            service.Service.stopService(self)
            return None
        return super().stopService()


def _prepare_unix_socket(description: str) -> None:
    """Create the socket's directory if needed (0700 when we create it)."""
    try:
        kind, path = admin.client_address(description)
    except admin.AdminError:
        return
    if kind == "unix":
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)


def makeService(options: Options, reactor: Any = None) -> service.IService:  # noqa: N802
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    loaded = options.get("loaded") or config.load(options["config"])
    supervisor = Supervisor(loaded, reactor)
    agent = AgentService(supervisor, loaded.admin, reactor)
    from hcm_twisted.core import logging as hcm_logging

    return hcm_logging.configure(options, agent, loaded.log_format, loaded.log_level)
