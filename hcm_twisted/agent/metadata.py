# -*- test-case-name: tests.agent.test_metadata -*-
"""Where an HC's traffic goes when the config names no ``endpoint``.

App Service stores ``[{"key":"endpoint","value":"host:port"}]`` in the HC's
user metadata.  The master reads it with the runtime GET of spec section 9:
``GET https://{ns}/{hc}?api-version=2016-07`` with ``Authorization`` (a
10-minute token for ``http://{ns}/{hc}/``) over verified TLS, and takes the
first ``endpoint`` item of the Atom entry's ``UserMetadata``.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from hcm_twisted.core import tls, urls
from hcm_twisted.core.configfile import parse_host_port
from hcm_twisted.core.connstr import ConnectionString
from hcm_twisted.core.errors import MalformedInput
from hcm_twisted.core.timers import cancel

TOKEN_LIFETIME = 600.0
MAX_BODY = 1 << 20
REQUEST_TIMEOUT = 30.0
REFRESH_INTERVAL = 60.0

_SB = "{http://schemas.microsoft.com/netservices/2010/10/servicebus/connect}"
_ATOM = "{http://www.w3.org/2005/Atom}"


class MetadataError(Exception):
    """The endpoint could not be learned; the message says why (no secrets)."""


@implementer(IPolicyForHTTPS)
@attrs.frozen
class VerifyingPolicy:
    """Verified TLS for every host, trusting extra CA certificates if given."""

    ca_certificates: tuple[Any, ...] = ()

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:  # noqa: N802
        return tls.client_options(hostname.decode("idna"), list(self.ca_certificates) or None)


def make_agent(reactor: Any, ca_paths: Iterable[str] = (), proxy_url: str | None = None,
               no_proxy: str | None = None) -> IAgent:
    """A ``twisted.web`` agent that verifies the relay's certificate.

    Requests go through the configured HTTP CONNECT proxy (``None``: the
    environment's ``https_proxy``/``no_proxy`` decide), like the workers' channels.
    """
    from hcm_twisted.core.proxy import AgentEndpointFactory

    policy = VerifyingPolicy(tuple(tls.load_ca_certificates(list(ca_paths))))
    factory = AgentEndpointFactory(
        reactor, lambda host: policy.creatorForNetloc(host.encode("idna"), 443),
        configured=proxy_url, no_proxy=no_proxy, timeout=REQUEST_TIMEOUT,
    )
    return Agent.usingEndpointFactory(reactor, factory)


def parse_endpoint_metadata(user_metadata: str) -> str | None:
    """The first ``endpoint`` item of a user-metadata JSON array, as ``host:port``."""

    try:
        items = json.loads(user_metadata)
    except ValueError:
        raise MetadataError("the HC's user metadata is not JSON") from None
    if not isinstance(items, list):
        raise MetadataError("the HC's user metadata is not a JSON array")
    for item in items:
        if not isinstance(item, dict):
            continue
        key = item.get("key")
        if isinstance(key, str) and key.strip().lower() == "endpoint":
            value = item.get("value")
            if not isinstance(value, str):
                raise MetadataError("the endpoint item in the HC's user metadata is not text")
            try:
                host, port = parse_host_port(value, "user metadata endpoint")
            except MalformedInput as e:
                raise MetadataError(str(e)) from None
            host = f"[{host}]" if ":" in host else host
            return f"{host}:{port}"
    return None


def parse_runtime_info(body: bytes) -> str | None:
    """The endpoint from a runtime GET answer (an Atom entry); ``None`` if there is none."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise MetadataError("the runtime information is not XML") from None
    if root.tag == f"{_ATOM}feed":
        raise MetadataError("the hybrid connection does not exist")
    if root.tag != f"{_ATOM}entry":
        raise MetadataError(f"the runtime information is not an Atom entry ({root.tag})")
    description = root.find(f"{_ATOM}content/{_SB}HybridConnectionDescription")
    if description is None:
        raise MetadataError("the runtime information holds no HybridConnectionDescription")
    element = description.find(f"{_SB}UserMetadata")
    if element is None or not (element.text or "").strip():
        return None
    return parse_endpoint_metadata(element.text or "")


def runtime_headers(cs: ConnectionString, now: float) -> Headers:
    from hcm_twisted.agent.tokens import sign

    token = sign(cs, TOKEN_LIFETIME, now)
    return Headers(
        {
            b"Authorization": [token.encode("utf-8")],
            b"X-PROCESS-AT": [b"ServiceBus"],
            b"Accept": [b"application/atom+xml"],
            b"User-Agent": [b"hcm-twisted"],
        }
    )


class _BoundedBody(Protocol):
    def __init__(self, finished: Deferred[bytes], limit: int) -> None:
        self._finished = finished
        self._limit = limit
        self._data: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._finished.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._finished.errback(MetadataError("the runtime information is too large"))
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self._data.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: N802, B008
        if self._finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._data))
        else:
            self._finished.errback(MetadataError("the runtime information was cut short"))


def _read_body(response: IResponse, limit: int = MAX_BODY) -> Deferred[bytes]:
    d: Deferred[bytes] = Deferred()
    response.deliverBody(_BoundedBody(d, limit))
    return d


async def fetch_endpoint(agent: IAgent, cs: ConnectionString, now: float, reactor: Any = None) -> str:
    """Read the endpoint from the HC's user metadata; :class:`MetadataError` otherwise."""
    url = urls.runtime_url(cs)
    d = agent.request(b"GET", url.encode("ascii"), runtime_headers(cs, now))
    if reactor is not None:
        d.addTimeout(REQUEST_TIMEOUT, reactor)
    try:
        response = await d
    except defer.TimeoutError:
        raise MetadataError("the runtime GET timed out") from None
    except MetadataError:
        raise
    except Exception as e:
        raise MetadataError(f"the runtime GET failed: {_describe(e)}") from None
    if response.code in (204, 404):
        raise MetadataError("the hybrid connection does not exist (runtime GET: HTTP 404)")
    if response.code != 200:
        phrase = response.phrase.decode("latin-1", "replace")[:200] if response.phrase else ""
        await _discard(response)
        raise MetadataError(f"the runtime GET was refused: HTTP {response.code} {phrase}".rstrip())
    body = await _read_body(response)
    endpoint = parse_runtime_info(body)
    if endpoint is None:
        raise MetadataError("no endpoint in the HC's user metadata")
    return endpoint


async def _discard(response: IResponse) -> None:
    try:
        await _read_body(response, 64 * 1024)
    except Exception:
        pass


def _describe(e: BaseException) -> str:
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(_describe(r.value) for r in reasons)
    text = str(e) or type(e).__name__
    return text[:300]


Fetcher = Callable[[ConnectionString], "Deferred[str]"]


@attrs.define(eq=False)
class _Resolved:
    cs: ConnectionString
    endpoint: str | None = None
    error: str | None = "not read yet"
    pending: Deferred[str] | None = None


@attrs.define(eq=False)
class EndpointResolver:
    """Endpoints learned from user metadata, refreshed every ``interval`` seconds.

    ``fetch(cs)`` does the GET; ``on_change(name)`` is called whenever an HC's
    endpoint changes (including the first time one is found or lost).
    """

    _log = Logger()

    clock: Any
    fetch: Fetcher
    on_change: Callable[[str], object]
    interval: float = REFRESH_INTERVAL
    _entries: dict[str, _Resolved] = attrs.field(factory=dict)
    _call: IDelayedCall | None = None
    _running: bool = False

    def set(self, items: Iterable[tuple[str, ConnectionString]]) -> None:
        """Track exactly these HCs; (re)read every one of them now."""
        wanted = dict(items)
        for name in list(self._entries):
            if name not in wanted:
                gone = self._entries.pop(name)
                if gone.pending is not None:
                    gone.pending.cancel()
        for name, cs in wanted.items():
            old = self._entries.get(name)
            if old is None or old.cs != cs:
                if old is not None and old.pending is not None:
                    old.pending.cancel()
                self._entries[name] = _Resolved(cs=cs)
        self.refresh()

    def endpoint(self, name: str) -> str | None:
        entry = self._entries.get(name)
        return entry.endpoint if entry is not None else None

    def error(self, name: str) -> str | None:
        entry = self._entries.get(name)
        return entry.error if entry is not None else None

    def start(self) -> None:
        self._running = True
        self._schedule()

    def stop(self) -> None:
        self._running = False
        cancel(self._call)
        self._call = None
        for entry in self._entries.values():
            if entry.pending is not None:
                entry.pending.cancel()

    def _schedule(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        if self._running and self.interval > 0:
            self._call = self.clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        self._call = None
        self.refresh()
        self._schedule()

    def refresh(self) -> None:
        for name, entry in self._entries.items():
            if entry.pending is None:
                self._read(name, entry)

    def _read(self, name: str, entry: _Resolved) -> None:
        try:
            d = self.fetch(entry.cs)
        except Exception as e:
            self._done(name, entry, None, f"the runtime GET failed: {_describe(e)}")
            return
        entry.pending = d

        def ok(endpoint: str) -> None:
            entry.pending = None
            self._done(name, entry, endpoint, None)

        def failed(f: Failure) -> None:
            entry.pending = None
            if f.check(defer.CancelledError):
                return
            if f.check(MetadataError):
                message = str(f.value)
            else:
                message = f"the runtime GET failed: {_describe(f.value)}"  # type: ignore[arg-type]
            self._done(name, entry, None, message)

        d.addCallbacks(ok, failed)

    def _done(self, name: str, entry: _Resolved, endpoint: str | None, error: str | None) -> None:
        if self._entries.get(name) is not entry:
            return
        old = entry.endpoint
        if error is None:
            entry.endpoint = endpoint
        else:
            if error != entry.error:
                self._log.warn(
                    "hybrid connection {name}: no endpoint from user metadata: {error}",
                    name=name, error=error,
                )
            # A failed read keeps a known endpoint: the HC stays up on a relay hiccup.
            if old is None or "does not exist" in error:
                entry.endpoint = None
        entry.error = error
        if entry.endpoint != old:
            if entry.endpoint is not None:
                self._log.info(
                    "hybrid connection {name}: endpoint {endpoint} (from user metadata)",
                    name=name, endpoint=entry.endpoint,
                )
            try:
                self.on_change(name)
            except Exception:
                self._log.failure("applying the endpoint of {name} failed", name=name)
