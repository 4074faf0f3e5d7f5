# -*- test-case-name: tests.agent.test_listener -*-
"""Connections to the relay: verified TLS options per host, and endpoints that honour the
egress proxy (the agent's channels and rendezvous, the sender's connections)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint

from hcm_twisted.core import proxy, tls
from hcm_twisted.core.fast import AddressCache, cached_tcp_endpoint

#: ``(host, port, secure, timeout) -> endpoint``
EndpointMaker = Callable[[str, int, bool, float], IStreamClientEndpoint]


@attrs.define(eq=False)
class TlsOptionsCache:
    """TLS client options per host name (one OpenSSL context each), with the configured anchors.

    It also carries the egress proxy settings of its Hybrid Connection.
    """

    ca_paths: tuple[str, ...]
    proxy: str | None = None
    no_proxy: str | None = None
    _anchors: list[Any] | None = None
    _by_host: dict[tuple[str, int | None], Any] = attrs.field(factory=dict)

    def reset(self, ca_paths: tuple[str, ...]) -> None:
        """Use other trust anchors from now on."""
        self.ca_paths = ca_paths
        self._anchors = None
        self._by_host.clear()

    def options_for(self, host: str, port: int | None = None) -> Any:
        """Verifying TLS options for ``host`` that resume their last session (per host, port)."""
        key = (host, port)
        if key not in self._by_host:
            if self._anchors is None:
                self._anchors = tls.load_ca_certificates(list(self.ca_paths))
            self._by_host[key] = tls.client_options(host, self._anchors or None, resumable=True)
        return self._by_host[key]


def default_endpoint_maker(reactor: Any, tls_cache: TlsOptionsCache) -> EndpointMaker:
    """HostnameEndpoint (with a timeout; through a proxy if one applies), in verified TLS when ``secure``."""

    addresses = AddressCache()

    def make(host: str, port: int, secure: bool, timeout: float) -> IStreamClientEndpoint:
        via = proxy.resolve_proxy(host, port, tls_cache.proxy, tls_cache.no_proxy)
        if via is None:
            # The relay's address is remembered for a while: no thread-pool lookup and
            # no address race per rendezvous (TLS still checks the host name).
            endpoint = cached_tcp_endpoint(reactor, addresses, host, port, timeout)
        else:
            endpoint = proxy.endpoint_for(reactor, host, port, via, timeout)
        if secure:
            endpoint = wrapClientTLS(tls_cache.options_for(host, port), endpoint)
        return endpoint

    return make
