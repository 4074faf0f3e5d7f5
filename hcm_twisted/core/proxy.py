# -*- test-case-name: tests.core.test_proxy -*-
"""Egress through an HTTP CONNECT proxy.

Connections to the relay (the agent's control channels and rendezvous legs, the
sender's connect legs, the runtime GET) may have to leave the network through
a forward proxy.  :func:`endpoint_for` gives an ``IStreamClientEndpoint`` for
``host:port``: a plain :class:`~twisted.internet.endpoints.HostnameEndpoint`,
or one that connects to the proxy, asks it for a tunnel with
``CONNECT host:port HTTP/1.1`` and hands the tunnel to the caller's protocol
once the proxy answered 2xx.  TLS is wrapped *around* the tunnel, so the proxy
only ever sees ciphertext::

    endpoint = endpoint_for(reactor, "ns.servicebus.windows.net", 443, proxy_url, 20)
    endpoint = wrapClientTLS(client_options("ns.servicebus.windows.net"), endpoint)

Which proxy to use (:func:`resolve_proxy`):

* a proxy named in the configuration is used for every relay host except those
  matching that configuration's own ``no-proxy`` list.  Loopback is **not**
  implicitly exempt: an operator who configures a proxy explicitly gets it
  (this is also how the tests route loopback traffic through a real proxy);
  ``"none"`` (or ``""``) means "connect directly, ignore the environment";
* with nothing configured, the environment decides (:func:`proxy_from_environment`):
  ``https_proxy``/``HTTPS_PROXY``, then ``all_proxy``/``ALL_PROXY`` (the relay
  is always reached over TLS), minus ``no_proxy``/``NO_PROXY``.  Here loopback
  (``localhost``, 127.0.0.0/8, ::1) is always direct, as in Go's and most
  tools' behaviour: an ambient proxy setting is never meant for the local host.

Only ``http://`` proxies (optionally with ``user:password@`` for Basic
authentication) are supported; any other scheme is a :class:`MalformedInput`
naming the scheme.  Credentials never appear in logs, reprs or errors.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from hcm_twisted.core.errors import MalformedInput

_log = Logger()

MAX_RESPONSE_HEAD = 64 * 1024
DEFAULT_TIMEOUT = 20.0
_DIRECT = ("", "none", "direct")


class ProxyError(ConnectionError):
    """The proxy refused or failed the tunnel.

    ``status`` is the proxy's HTTP status code (``None`` when it gave none) and
    ``status_line`` its status line; the message names proxy and target, never
    credentials.
    """

    def __init__(self, message: str, status: int | None = None, status_line: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.status_line = status_line


@attrs.frozen(repr=False)
class ProxyURL:
    """A parsed ``http://[user:password@]host[:port]`` proxy address."""

    host: str
    port: int
    username: str | None = None
    password: str | None = attrs.field(default=None)

    def authorization(self) -> bytes | None:
        """The ``Proxy-Authorization`` header value, or ``None`` without credentials."""
        if self.username is None:
            return None
        raw = f"{self.username}:{self.password or ''}".encode()
        return b"Basic " + base64.b64encode(raw)

    def address(self) -> str:
        """``host:port`` (IPv6 in brackets), without credentials."""
        return _host_port(self.host, self.port)

    def masked(self) -> str:
        """The URL with the password replaced by ``***``."""
        auth = f"{self.username}:***@" if self.username is not None else ""
        return f"http://{auth}{self.address()}"

    def __repr__(self) -> str:
        return f"<ProxyURL {self.masked()}>"


def parse_proxy_url(url: str, what: str = "proxy") -> ProxyURL:
    """Parse a proxy URL; a bare ``host:port`` means ``http://host:port``.

    Without a port, 80 is assumed (the ``http`` scheme's port, as Go and
    urllib3 do).  Errors name ``what`` and never echo a password.
    """
    if not isinstance(url, str) or not url.strip():
        raise MalformedInput(f"{what}: must be a URL like 'http://proxy.example:3128'")
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme != "http":
        raise MalformedInput(
            f"{what}: scheme {scheme!r} is not supported (only http:// CONNECT proxies)"
        )
    try:
        host = parts.hostname
        port = parts.port
    except ValueError:
        raise MalformedInput(f"{what}: {_mask_url(text)!r} has a bad port") from None
    if not host:
        raise MalformedInput(f"{what}: {_mask_url(text)!r} names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise MalformedInput(f"{what}: {_mask_url(text)!r} must not have a path or query")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return ProxyURL(host=host, port=port or 80, username=username, password=password)


def _mask_url(text: str) -> str:
    scheme, sep, rest = text.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- choosing a proxy ------------------------------------------------------------------------


def _env_get(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value is not None and value.strip():
            return value.strip()
    return None


def _is_loopback(host: str) -> bool:
    h = host.strip("[]").lower().rstrip(".")
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _split_entry(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port``, ``v6``, CIDR -> (host, port)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            return host, int(rest[1:])
        return host, None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if port.isdigit():
            return host, int(port)
    return entry, None


def bypasses_proxy(host: str, no_proxy: str | None, port: int | None = None) -> bool:
    """Whether ``host`` (and ``port``) matches a ``NO_PROXY``-style list.

    Entries are separated by commas (or white space), compared without case:
    ``*`` matches everything; ``example.com`` and ``.example.com`` match that
    domain and every name under it; ``host:port`` only that port; an IP
    address matches that address and a CIDR (``10.0.0.0/8``, ``fd00::/8``)
    every address in it.  Only IP literals are compared with IPs and CIDRs:
    no name is resolved.
    """
    if not no_proxy:
        return False
    name = host.strip("[]").lower().rstrip(".")
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    for raw in no_proxy.replace(",", " ").split():
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:
            try:
                net = ipaddress.ip_network(entry.strip("[]"), strict=False)
            except ValueError:
                continue
            if ip is not None and ip.version == net.version and ip in net:
                return True
            continue
        ehost, eport = _split_entry(entry)
        if eport is not None and port is not None and eport != port:
            continue
        ehost = ehost.rstrip(".")
        try:
            eip = ipaddress.ip_address(ehost)
        except ValueError:
            eip = None
        if eip is not None:
            if ip is not None and ip == eip:
                return True
            continue
        domain = ehost[2:] if ehost.startswith("*.") else ehost.lstrip(".")
        if not domain:
            continue
        if name == domain or name.endswith("." + domain):
            return True
    return False


def proxy_from_environment(
    host: str, env: Mapping[str, str] | None = None, port: int | None = None
) -> str | None:
    """The proxy URL the environment names for a TLS connection to ``host``, or ``None``.

    ``https_proxy``/``HTTPS_PROXY`` win over ``all_proxy``/``ALL_PROXY`` (lower
    case first, as curl and urllib do); ``no_proxy``/``NO_PROXY`` exempts hosts
    (see :func:`bypasses_proxy`); loopback hosts are always direct.
    """
    if env is None:
        env = os.environ
    url = _env_get(env, "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
    if url is None or _is_loopback(host):
        return None
    if bypasses_proxy(host, _env_get(env, "no_proxy", "NO_PROXY"), port):
        return None
    return url


def resolve_proxy(
    host: str,
    port: int | None = None,
    configured: str | None = None,
    no_proxy: str | None = None,
    env: Mapping[str, str] | None = None,
) -> str | None:
    """The proxy for ``host:port`` given a configured proxy (or ``None``).

    ``configured`` ``None``: the environment decides.  ``"none"``/``""``/
    ``"direct"``: always direct.  A URL: that proxy unless ``no_proxy`` (the
    configuration's list, not the environment's) exempts the host; loopback
    is *not* implicitly exempt.
    """
    if configured is None:
        return proxy_from_environment(host, env, port)
    if configured.strip().lower() in _DIRECT:
        return None
    if bypasses_proxy(host, no_proxy, port):
        return None
    return configured


# -- the tunnel ------------------------------------------------------------------------------


class _Tunnel(Protocol):
    """Speaks CONNECT to the proxy, then gets out of the way."""

    def __init__(self, owner: _Attempt) -> None:
        self._owner = owner
        self._buffer = b""
        self._wrapped: IProtocol | None = None
        self._done = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        try:
            self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            pass
        try:
            target = self._owner.target_bytes()
        except ValueError as e:
            self._fail(ProxyError(str(e)))
            return
        lines = [
            b"CONNECT " + target + b" HTTP/1.1",
            b"Host: " + target,
            b"User-Agent: hcm-twisted",
        ]
        auth = self._owner.proxy.authorization()
        if auth is not None:
            lines.append(b"Proxy-Authorization: " + auth)
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        if self._wrapped is not None:
            self._wrapped.dataReceived(data)
            return
        if self._done:
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_RESPONSE_HEAD:
                self._fail(
                    ProxyError(
                        f"proxy {self._owner.proxy.address()} sent a response head over "
                        f"{MAX_RESPONSE_HEAD} bytes to CONNECT {self._owner.target()}"
                    )
                )
            return
        head, rest = self._buffer[:end], self._buffer[end + 4 :]
        self._buffer = b""
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        shown = "".join(c if c.isprintable() else "?" for c in status_line)[:200]
        parts = status_line.split(None, 2)
        status: int | None = None
        if len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit():
            status = int(parts[1])
        if status is None:
            self._fail(
                ProxyError(
                    f"proxy {self._owner.proxy.address()} answered CONNECT "
                    f"{self._owner.target()} with a bad status line {shown!r}",
                    None,
                    shown,
                )
            )
            return
        if not 200 <= status < 300:
            hint = ""
            if status in (401, 407):
                hint = (
                    " (the proxy requires authentication: put user:password@ in the proxy URL)"
                    if self._owner.proxy.username is None
                    else " (the proxy rejected the user and password in the proxy URL)"
                )
            elif status == 403:
                hint = " (the proxy forbids this destination or port)"
            self._fail(
                ProxyError(
                    f"proxy {self._owner.proxy.address()} refused CONNECT "
                    f"{self._owner.target()}: {shown}{hint}",
                    status,
                    shown,
                )
            )
            return
        self._done = True
        self._owner.tunnel_ready(self, rest)

    def hand_over(self, wrapped: IProtocol, rest: bytes) -> None:
        """Give the transport to ``wrapped``: swap it in where the transport allows."""
        transport = self.transport
        assert transport is not None
        if getattr(transport, "protocol", None) is self:
            transport.protocol = wrapped  # type: ignore[attr-defined]
        else:
            self._wrapped = wrapped
        wrapped.makeConnection(transport)
        if rest:
            wrapped.dataReceived(rest)

    def _fail(self, reason: Exception) -> None:
        self._done = True
        self._owner.failed(reason)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        if self._wrapped is not None:
            wrapped, self._wrapped = self._wrapped, None
            wrapped.connectionLost(reason)
            return
        if not self._done:
            self._done = True
            self._owner.failed(
                ProxyError(
                    f"proxy {self._owner.proxy.address()} closed the connection before "
                    f"answering CONNECT {self._owner.target()}"
                )
            )


class _TunnelFactory(Factory):
    def __init__(self, owner: _Attempt) -> None:
        self._owner = owner

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        self._owner.address = addr
        return _Tunnel(self._owner)

    def doStart(self) -> None:
        self._owner.factory.doStart()

    def doStop(self) -> None:
        self._owner.factory.doStop()


class _Attempt:
    """One ``connect()``: its timer, its result."""

    def __init__(
        self,
        endpoint: HTTPConnectProxyEndpoint,
        factory: IProtocolFactory,
    ) -> None:
        self.proxy = endpoint.proxy
        self.host = endpoint.host
        self.port = endpoint.port
        self.factory = factory
        self.address: IAddress | None = None
        self.result: defer.Deferred[IProtocol] = defer.Deferred(self._cancel)
        self._tunnel: _Tunnel | None = None
        self._cancelled = False
        self._timer = endpoint.reactor.callLater(endpoint.timeout, self._timed_out, endpoint.timeout)
        self._connecting: defer.Deferred[Any] = endpoint.proxy_endpoint.connect(
            _TunnelFactory(self)
        )
        self._connecting.addCallbacks(self._connected, self._not_connected)

    def target(self) -> str:
        return _host_port(self.host, self.port)

    def target_bytes(self) -> bytes:
        """``host:port`` for the request line; ``ValueError`` for a host no proxy could take."""
        host = self.host
        if not host or any(c.isspace() or ord(c) < 0x20 or c in "/?#@" for c in host):
            raise ValueError(f"cannot ask a proxy for a tunnel to host {host!r}")
        try:
            return _host_port(host, self.port).encode("idna")
        except UnicodeError:
            raise ValueError(f"cannot ask a proxy for a tunnel to host {host!r}") from None

    def _connected(self, tunnel: _Tunnel) -> None:
        self._tunnel = tunnel

    def _not_connected(self, reason: Failure) -> None:
        if self._cancelled or reason.check(defer.CancelledError):
            return  # we cancelled: the result is already decided
        exc = reason.value
        self.failed(
            ProxyError(
                f"cannot connect to proxy {self.proxy.address()} for {self.target()}: "
                f"{exc.__class__.__name__}: {exc}"
            )
        )

    def tunnel_ready(self, tunnel: _Tunnel, rest: bytes) -> None:
        if self.result.called:
            return
        self._stop_timer()
        assert self.address is not None
        wrapped = self.factory.buildProtocol(self.address)
        if wrapped is None:
            tunnel.transport.abortConnection()  # type: ignore[union-attr]
            self.result.errback(error.ConnectError(string="the protocol factory refused"))
            return
        try:
            tunnel.hand_over(wrapped, rest)
        except Exception:
            failure = Failure()
            if tunnel.transport is not None:
                tunnel.transport.abortConnection()  # type: ignore[attr-defined]
            self.result.errback(failure)
            return
        _log.debug(
            "tunnel to {target} through proxy {proxy} open", target=self.target(),
            proxy=self.proxy.address(),
        )
        self.result.callback(wrapped)

    def failed(self, reason: Exception) -> None:
        self._stop_timer()
        if not self.result.called:
            self.result.errback(Failure(reason))

    def _stop_timer(self) -> None:
        if self._timer.active():
            self._timer.cancel()

    def _abort(self) -> None:
        if self._tunnel is not None and self._tunnel.transport is not None:
            self._tunnel.transport.abortConnection()  # type: ignore[attr-defined]
        elif not self._connecting.called:
            self._connecting.cancel()

    def _timed_out(self, timeout: float) -> None:
        self.failed(
            error.TimeoutError(
                string=f"no tunnel to {self.target()} through proxy {self.proxy.address()}"
                f" within {timeout:g} s"
            )
        )
        self._abort()

    def _cancel(self, d: defer.Deferred[IProtocol]) -> None:
        # (HostnameEndpoint reports a cancel during name resolution as DNSLookupError.)
        self._cancelled = True
        self._stop_timer()
        self._abort()
        if not d.called:  # cancelling the proxy connection may have failed it already
            d.errback(
                Failure(error.ConnectingCancelledError(self.address))  # type: ignore[arg-type]
            )


@implementer(IStreamClientEndpoint)
class HTTPConnectProxyEndpoint:
    """Connect to ``host:port`` through an HTTP CONNECT proxy.

    ``proxy_endpoint`` reaches the proxy (normally a ``HostnameEndpoint`` for
    its host and port).  The Deferred from :meth:`connect` fires with the
    protocol built by the caller's factory once the tunnel is open, or fails
    with :class:`ProxyError` (refused, bad answer, proxy unreachable) or
    ``TimeoutError`` (no tunnel within ``timeout`` seconds).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        proxy: ProxyURL,
        host: str,
        port: int,
        timeout: float = DEFAULT_TIMEOUT,
        proxy_endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        self.reactor = reactor
        self.proxy = proxy
        self.host = host
        self.port = port
        self.timeout = timeout
        if proxy_endpoint is None:
            proxy_endpoint = HostnameEndpoint(reactor, proxy.host, proxy.port, timeout=timeout)
        self.proxy_endpoint = proxy_endpoint

    def __repr__(self) -> str:
        return f"<HTTPConnectProxyEndpoint {_host_port(self.host, self.port)} via {self.proxy.masked()}>"

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        return _Attempt(self, protocolFactory).result


@implementer(IAgentEndpointFactory)
class AgentEndpointFactory:
    """Endpoints for ``twisted.web.client.Agent`` that honour the proxy choice.

    ``Agent.usingEndpointFactory(reactor, AgentEndpointFactory(reactor, tls_options_for))``
    gives a web client whose ``https://`` requests (e.g. the runtime GET of an HC's user
    metadata) are tunnelled like the WebSocket connections: ``tls_options_for(host)``
    gives the TLS client options; ``configured``/``no_proxy`` as :func:`resolve_proxy`.
    """

    def __init__(
        self,
        reactor: Any,
        tls_options_for: Callable[[str], Any],
        configured: str | None = None,
        no_proxy: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.reactor = reactor
        self.tls_options_for = tls_options_for
        self.configured = configured
        self.no_proxy = no_proxy
        self.timeout = timeout
        self.env = env

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:  # noqa: N802 (Twisted API)
        host = uri.host.decode("idna") if isinstance(uri.host, bytes) else str(uri.host)
        host = host.strip("[]")
        port = int(uri.port)
        via = resolve_proxy(host, port, self.configured, self.no_proxy, self.env)
        endpoint = endpoint_for(self.reactor, host, port, via, self.timeout)
        if uri.scheme in (b"https", "https"):
            endpoint = wrapClientTLS(self.tls_options_for(host), endpoint)
        return endpoint


def endpoint_for(
    reactor: Any,
    host: str,
    port: int,
    proxy_url: str | None,
    timeout: float = DEFAULT_TIMEOUT,
) -> IStreamClientEndpoint:
    """A TCP client endpoint for ``host:port``, tunnelled through ``proxy_url`` when given.

    ``proxy_url`` is what :func:`resolve_proxy` chose (``None`` = direct).
    Wrap the result with ``wrapClientTLS(options, endpoint)`` for TLS to
    ``host``.  A bad proxy URL raises :class:`MalformedInput` at once.
    """
    if proxy_url is None:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    return HTTPConnectProxyEndpoint(reactor, parse_proxy_url(proxy_url), host, port, timeout)
