# -*- test-case-name: tests.agent.test_diagnose -*-
"""``hcm test NAME``: check, step by step, that a hybrid connection can work from this host.

Steps (each gives a verdict, ``ok``/``warn``/``FAIL``/``skip``, and what to do next):

1. ``config``       the HC is in the agent's config file;
2. ``proxy``        whether relay connections go through an HTTP proxy (only shown when they do);
3. ``relay DNS``    the namespace host resolves (skipped through a proxy: the proxy resolves);
4. ``relay TCP``    a TCP connection to the relay (through the proxy, if any) opens;
5. ``relay TLS``    the TLS handshake verifies the relay's certificate; warns when it expires soon;
6. ``listen``       the relay accepts a listen channel with a token from this HC's key (the
                    channel is opened and closed at once);
7. ``endpoint``     where connections go: the config's ``endpoint``, else the HC's user metadata;
8. ``endpoint DNS`` and ``endpoint TCP``: this host can reach that endpoint;
9. ``end to end``   with a Send key (``--send-connection-string`` or ``--send-key-name`` and
                    ``--send-key``), a sender connection through the relay is accepted by a
                    running agent (which connected to the endpoint); skipped without one.

A step whose prerequisite failed is skipped.  Exit status: 0 when nothing failed, 1 when a
step failed, 2 for a bad command line.  ``--json`` prints the steps as a JSON object.

While the listen check's channel is open (a few milliseconds) the relay may hand it a
connection meant for the running agent; that one connection then fails and its sender retries.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TextIO

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, error, threads
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from hcm_twisted.agent import config as agent_config
from hcm_twisted.agent.tokens import sign
from hcm_twisted.core import connstr, proxy, tls, urls
from hcm_twisted.core.bridge import refused_status
from hcm_twisted.core.configfile import parse_host_port
from hcm_twisted.core.connstr import ConnectionString
from hcm_twisted.core.errors import MalformedInput

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
DEFAULT_TIMEOUT = 10.0
CERT_WARN_DAYS = 14
TOKEN_LIFETIME = 300


@attrs.frozen
class Step:
    """One check's outcome; ``advice`` says what to do next (empty when nothing is to be done)."""

    name: str
    verdict: str
    detail: str
    advice: str = ""
    seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class Target:
    """What to check: one HC from the config, and optionally a Send connection string."""

    name: str
    hc: ConnectionString | None
    endpoint: str | None
    ca_certificates: tuple[str, ...] = ()
    proxy: str | None = None
    no_proxy: str | None = None
    send: ConnectionString | None = None


def _describe(reason: BaseException | Failure) -> str:
    e = reason.value if isinstance(reason, Failure) else reason
    reasons = getattr(e, "reasons", None)
    if reasons:  # OpenSSL's error list or a web client's
        parts = []
        for r in reasons:
            v = getattr(r, "value", r)
            parts.append(_describe(v) if isinstance(v, BaseException) else str(v))
        return "; ".join(parts)[:400]
    text = str(e).strip() or type(e).__name__
    if isinstance(e, error.ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(e, error.TimeoutError | defer.TimeoutError):
        text = "timed out"
    return text[:400]


async def _timed(d: defer.Deferred[Any], timeout: float, reactor: Any) -> Any:
    d.addTimeout(timeout, reactor)
    return await d


# -- the individual probes --------------------------------------------------------------------


async def resolve(reactor: Any, host: str, port: int, timeout: float) -> list[str]:
    """The addresses ``host`` resolves to (the system resolver, in a thread)."""
    infos = await _timed(
        threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), socket.getaddrinfo, host, port, 0,
            socket.SOCK_STREAM,
        ),
        timeout, reactor,
    )
    out: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in out:
            out.append(address)
    return out


class _Nothing(Protocol):
    def __init__(self) -> None:
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        if not self.closed.called:
            self.closed.callback(None)


async def _close(proto: Any, closed: defer.Deferred[None], reactor: Any) -> None:
    """Close ``proto``'s connection and wait (briefly) until it is gone; abort if it lingers."""
    if closed.called or proto.transport is None:
        return
    proto.transport.loseConnection()
    try:
        await _timed(closed, 2.0, reactor)
    except defer.TimeoutError:
        proto.transport.abortConnection()


async def tcp_connect(endpoint: Any, timeout: float, reactor: Any) -> None:
    """Open and close one connection through ``endpoint``."""
    proto = _Nothing()
    await _timed(endpoint.connect(Factory.forProtocol(lambda: proto)), timeout, reactor)
    await _close(proto, proto.closed, reactor)


@implementer(IHandshakeListener)
class _Handshake(Protocol):
    def __init__(self) -> None:
        self.done: defer.Deferred[Any] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def handshakeCompleted(self) -> None:
        assert self.transport is not None
        cert = self.transport.getPeerCertificate()  # type: ignore[attr-defined]
        if not self.done.called:
            self.done.callback(cert.to_cryptography() if cert is not None else None)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.errback(reason)
        if not self.closed.called:
            self.closed.callback(None)


async def tls_handshake(endpoint: Any, timeout: float, reactor: Any) -> Any:
    """Connect through ``endpoint`` (a TLS one) and return the relay's certificate."""
    proto = _Handshake()
    await _timed(endpoint.connect(Factory.forProtocol(lambda: proto)), timeout, reactor)
    try:
        return await _timed(proto.done, timeout, reactor)
    finally:
        await _close(proto, proto.closed, reactor)


class _Upgrade(WebSocketClientProtocol):
    factory: _UpgradeFactory

    def onOpen(self) -> None:
        f = self.factory
        if not f.result.called:
            f.result.callback((101, "Switching Protocols"))
        self.sendClose(1000, "hcm test")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        pass  # e.g. an accept routed to us in our few milliseconds: ignored

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        f = self.factory
        if not f.result.called:
            refused = refused_status(getattr(self, "http_status_line", None))
            if refused is not None:
                f.result.callback(refused)
            else:
                f.result.errback(ConnectionError(reason or "closed before the WebSocket upgrade"))
        if not f.closed.called:
            f.closed.callback(None)


class _UpgradeFactory(WebSocketClientFactory):
    protocol = _Upgrade  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.result: defer.Deferred[tuple[int, str]] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()


async def websocket_upgrade(
    reactor: Any, endpoint: Any, url: str, token: str | None, timeout: float
) -> tuple[int, str]:
    """Try a WebSocket upgrade to ``url``; ``(101, ...)`` when it opened, else the HTTP status."""
    headers = {"ServiceBusAuthorization": token} if token else {}
    factory = _UpgradeFactory(url, headers=headers, useragent="hcm-twisted (hcm test)",
                              reactor=reactor)
    factory.setProtocolOptions(openHandshakeTimeout=timeout, closeHandshakeTimeout=2.0,
                               perMessageCompressionOffers=[])
    proto = await _timed(endpoint.connect(factory), timeout, reactor)
    try:
        return await _timed(factory.result, timeout + 1, reactor)  # type: ignore[no-any-return]
    finally:
        try:
            await _timed(factory.closed, 5.0, reactor)
        except Exception:
            if proto.transport is not None:
                proto.transport.abortConnection()


# -- the checks -------------------------------------------------------------------------------

_LISTEN_ADVICE = {
    401: "the relay refused the key: check SharedAccessKeyName/SharedAccessKey (was the key "
         "rotated? then 'hcm add' the new connection string)",
    403: "the rule lacks the Listen right, or the HC has its maximum of listeners: use a rule "
         "with Listen (e.g. defaultListener)",
    404: "the namespace has no hybrid connection named by EntityPath: check the name (Azure "
         "portal or 'hcm relay list') and the connection string",
}

_SEND_ADVICE = {
    401: "the relay refused the Send key: check its SharedAccessKeyName/SharedAccessKey",
    403: "the Send key's rule lacks the Send right",
    404: "no agent is listening on this HC: is the agent running and Connected? ('hcm list')",
    502: "the agent could not open the connection: is the endpoint up? ('hcm show NAME')",
    503: "the agent refused the connection (draining or overloaded); try again",
    504: "no agent accepted in time: check the agent's log and 'hcm show NAME'",
}


class Checker:
    """Runs the steps in order; ``steps`` holds the outcomes."""

    def __init__(self, reactor: Any, target: Target, timeout: float = DEFAULT_TIMEOUT,
                 now: Callable[[], float] = time.time) -> None:
        self.reactor = reactor
        self.target = target
        self.timeout = timeout
        self.now = now
        self.steps: list[Step] = []

    def _add(self, name: str, verdict: str, detail: str, advice: str = "",
             started: float | None = None) -> Step:
        seconds = None if started is None else round(time.monotonic() - started, 3)
        step = Step(name, verdict, detail, advice, seconds)
        self.steps.append(step)
        return step

    def _tls_options(self, host: str) -> Any:
        return tls.client_options(
            host, tls.load_ca_certificates(list(self.target.ca_certificates)) or None
        )

    async def run(self) -> list[Step]:
        t = self.target
        if t.hc is None:
            self._add("config", FAIL, f"no hybrid connection named {t.name!r} in the config",
                      "see 'hcm list'; add it with 'hcm add CONNECTION-STRING'")
            return self.steps
        cs = t.hc
        self._add("config", OK, f"{t.name}: {cs.masked()}")
        host, port = cs.host, cs.port
        try:
            via = proxy.resolve_proxy(host, port, t.proxy, t.no_proxy)
            if via is not None:
                shown = proxy.parse_proxy_url(via).masked()
                self._add("proxy", OK, f"relay connections go through {shown}")
        except MalformedInput as e:
            self._add("proxy", FAIL, str(e), "fix the proxy setting (config or https_proxy)")
            return self.steps

        relay_ok = await self._relay_dns(host, port, via)
        if relay_ok:
            relay_ok = await self._relay_tcp(host, port, via)
        if relay_ok:
            relay_ok = await self._relay_tls(host, port, via)
        if relay_ok:
            await self._listen(cs, via)
        else:
            self._add("listen", SKIP, "the relay cannot be reached")
        endpoint_ok = await self._endpoint(cs, host, port, via, relay_ok)
        await self._end_to_end(via, relay_ok and endpoint_ok)
        return self.steps

    async def _relay_dns(self, host: str, port: int, via: str | None) -> bool:
        if via is not None:
            self._add("relay DNS", SKIP, f"{host}: the proxy resolves it")
            return True
        return await self._dns(
            "relay DNS", host, port,
            "check the namespace in the connection string and this host's DNS "
            "(resolv.conf); behind a proxy, set https_proxy or the config's proxy")

    async def _dns(self, step: str, host: str, port: int, hint: str) -> bool:
        """The DNS step for ``host``: OK for an address or a name that resolves."""
        if _is_address(host):
            self._add(step, OK, f"{host} is an address")
            return True
        started = time.monotonic()
        try:
            addresses = await resolve(self.reactor, host, port, self.timeout)
        except Exception as e:
            self._add(step, FAIL, f"cannot resolve {host}: {_describe(e)}", hint, started)
            return False
        self._add(step, OK, f"{host} -> {', '.join(addresses[:6])}", "", started)
        return True

    async def _relay_tcp(self, host: str, port: int, via: str | None) -> bool:
        started = time.monotonic()
        endpoint = proxy.endpoint_for(self.reactor, host, port, via, self.timeout)
        where = f"{host}:{port}" + (" through the proxy" if via else "")
        try:
            await tcp_connect(endpoint, self.timeout, self.reactor)
        except proxy.ProxyError as e:
            self._add("relay TCP", FAIL, str(e),
                      "check the proxy URL and that the proxy allows CONNECT to this host and "
                      "port", started)
            return False
        except Exception as e:
            self._add("relay TCP", FAIL, f"cannot connect to {where}: {_describe(e)}",
                      f"outbound TCP {port} to {host} must be open (a firewall or proxy between "
                      "here and the relay?); for a local hcm-relay, is it running?", started)
            return False
        self._add("relay TCP", OK, f"connected to {where}", "", started)
        return True

    async def _relay_tls(self, host: str, port: int, via: str | None) -> bool:
        started = time.monotonic()
        try:
            options = self._tls_options(host)
        except MalformedInput as e:
            self._add("relay TLS", FAIL, str(e), "fix ca-certificates in the config", started)
            return False
        endpoint = wrapClientTLS(
            options, proxy.endpoint_for(self.reactor, host, port, via, self.timeout)
        )
        try:
            cert = await tls_handshake(endpoint, self.timeout, self.reactor)
        except Exception as e:
            private = "" if self.target.ca_certificates else (
                "; a private relay (hcm-relay) needs its CA in the config: "
                "ca-certificates = \"relay-ca.pem\"")
            self._add("relay TLS", FAIL, f"TLS with {host} failed: {_describe(e)}",
                      "the relay's certificate must be valid for the namespace host and "
                      "trusted here (a TLS-inspecting proxy needs its CA in ca-certificates)"
                      + private, started)
            return False
        if cert is None:
            self._add("relay TLS", OK, f"verified {host}", "", started)
            return True
        expires = cert.not_valid_after_utc.timestamp()
        days = (expires - self.now()) / 86400
        issuer = cert.issuer.rfc4514_string()[:120]
        detail = f"verified {host}; certificate by {issuer}, expires in {days:.0f} days"
        if days < CERT_WARN_DAYS:
            self._add("relay TLS", WARN, detail,
                      "the relay's certificate expires soon: renew it", started)
        else:
            self._add("relay TLS", OK, detail, "", started)
        return True

    def _relay_endpoint(self, host: str, port: int, via: str | None) -> Any:
        return wrapClientTLS(
            self._tls_options(host), proxy.endpoint_for(self.reactor, host, port, via, self.timeout)
        )

    async def _listen(self, cs: ConnectionString, via: str | None) -> bool:
        started = time.monotonic()
        try:
            token = sign(cs, TOKEN_LIFETIME, self.now())
        except MalformedInput as e:
            self._add("listen", FAIL, str(e), "give the HC a connection string with a key")
            return False
        url = urls.listen_url(cs, id=str(uuid.uuid4()))
        try:
            status, phrase = await websocket_upgrade(
                self.reactor, self._relay_endpoint(cs.host, cs.port, via), url, token,
                self.timeout)
        except Exception as e:
            self._add("listen", FAIL, f"the listen upgrade failed: {_describe(e)}",
                      "check the relay's log; is the namespace a Relay namespace?", started)
            return False
        if status == 101:
            self._add("listen", OK,
                      f"the relay accepted a listen channel on {cs.entity_path} "
                      f"with rule {cs.key_name or '(signature)'}", "", started)
            return True
        self._add("listen", FAIL, f"the relay refused to listen: HTTP {status} {phrase}".rstrip(),
                  _LISTEN_ADVICE.get(status, "check the connection string and the relay's log"),
                  started)
        return False

    async def _endpoint(self, cs: ConnectionString, host: str, port: int, via: str | None,
                        relay_ok: bool) -> bool:
        endpoint = self.target.endpoint
        source = "config"
        if endpoint is None:
            if not relay_ok:
                self._add("endpoint", SKIP, "not in the config, and the relay cannot be reached "
                          "to read the HC's user metadata")
                self._add("endpoint DNS", SKIP, "no endpoint")
                self._add("endpoint TCP", SKIP, "no endpoint")
                return False
            started = time.monotonic()
            try:
                endpoint = await self._metadata_endpoint(cs)
            except Exception as e:
                self._add("endpoint", FAIL, f"not in the config, and {_describe(e)}",
                          "set it: 'hcm add CONNECTION-STRING --endpoint HOST:PORT', or add "
                          "user metadata [{\"key\":\"endpoint\",\"value\":\"host:port\"}] to the HC",
                          started)
                self._add("endpoint DNS", SKIP, "no endpoint")
                self._add("endpoint TCP", SKIP, "no endpoint")
                return False
            source = "the HC's user metadata"
        try:
            ehost, eport = parse_host_port(endpoint)
        except MalformedInput as e:
            self._add("endpoint", FAIL, str(e), "fix the endpoint (host:port)")
            return False
        self._add("endpoint", OK, f"{endpoint} (from {source})")
        if not await self._dns(
            "endpoint DNS", ehost, eport,
            "the agent resolves endpoint names with this host's DNS: fix the name or DNS",
        ):
            self._add("endpoint TCP", SKIP, "the name does not resolve")
            return False
        started = time.monotonic()
        try:
            await tcp_connect(HostnameEndpoint(self.reactor, ehost, eport, timeout=self.timeout),
                              self.timeout, self.reactor)
        except Exception as e:
            self._add("endpoint TCP", FAIL, f"cannot connect to {endpoint}: {_describe(e)}",
                      "is the service running and listening there? is a firewall between this "
                      "host and the endpoint?", started)
            return False
        self._add("endpoint TCP", OK, f"connected to {endpoint}", "", started)
        return True

    async def _metadata_endpoint(self, cs: ConnectionString) -> str:
        from twisted.web.client import Agent, HTTPConnectionPool

        from hcm_twisted.agent import metadata

        factory = proxy.AgentEndpointFactory(
            self.reactor, self._tls_options, self.target.proxy, self.target.no_proxy, self.timeout)
        # A persistent pool, closed (and waited for) at the end: no connection outlives us.
        pool = HTTPConnectionPool(self.reactor, persistent=True)
        agent = Agent.usingEndpointFactory(self.reactor, factory, pool=pool)
        try:
            return await metadata.fetch_endpoint(agent, cs, self.now(), self.reactor)
        finally:
            await pool.closeCachedConnections()

    async def _end_to_end(self, via: str | None, ready: bool) -> None:
        send = self.target.send
        if send is None:
            self._add("end to end", SKIP, "no Send key given",
                      "to test through a running agent: hcm test NAME --send-connection-string -"
                      " (reads a Send rule's connection string from stdin)")
            return
        if not ready:
            self._add("end to end", SKIP, "an earlier step failed")
            return
        started = time.monotonic()
        try:
            token = sign(send, TOKEN_LIFETIME, self.now())
        except MalformedInput as e:
            self._add("end to end", FAIL, str(e), "give a Send connection string with a key")
            return
        url = urls.connect_url(send, id=str(uuid.uuid4()))
        try:
            status, phrase = await websocket_upgrade(
                self.reactor, self._relay_endpoint(send.host, send.port, via), url, token,
                self.timeout + 30)
        except Exception as e:
            self._add("end to end", FAIL, f"the sender connection failed: {_describe(e)}",
                      "check the relay's and the agent's logs", started)
            return
        if status == 101:
            self._add("end to end", OK,
                      "a sender connection went through the relay to a listening agent, "
                      "which connected to the endpoint", "", started)
            return
        self._add("end to end", FAIL, f"the relay answered HTTP {status} {phrase}".rstrip(),
                  _SEND_ADVICE.get(status, "check the agent's log ('hcm show NAME')"), started)


def _is_address(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return True
    except (OSError, ValueError):
        return False


# -- command line -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hcm test",
        description="Check step by step that a hybrid connection can work from this host.",
    )
    p.add_argument("name", metavar="NAME", help="the hybrid connection (as in 'hcm list')")
    p.add_argument("--config", "-c", help="the agent config (default: $HCM_CONFIG or "
                   f"{agent_config.DEFAULT_CONFIG_PATH})")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="seconds per step (default %(default)s)")
    p.add_argument("--send-connection-string", metavar="CS",
                   help="a Send rule's connection string for the end-to-end check ('-': read "
                   "it from stdin; or set HCM_SEND_CONNECTION_STRING)")
    p.add_argument("--send-key-name", metavar="RULE", help="a Send rule of the same HC")
    p.add_argument("--send-key", metavar="KEY", help="its key ('-': read it from stdin)")
    return p


def target_from_config(path: str, name: str, send: ConnectionString | None = None) -> Target:
    """The :class:`Target` for HC ``name`` of the agent config at ``path``."""
    cfg = agent_config.load(path)
    hc = cfg.get(name)
    return Target(
        name=name,
        hc=hc.connection_string.with_entity(hc.entity) if hc is not None else None,
        endpoint=hc.endpoint if hc is not None else None,
        ca_certificates=tuple(cfg.ca_certificates),
        proxy=getattr(cfg, "proxy", None),
        no_proxy=getattr(cfg, "no_proxy", None),
        send=send,
    )


def _send_from_args(args: argparse.Namespace, stdin: TextIO) -> ConnectionString | None:
    text = args.send_connection_string or os.environ.get("HCM_SEND_CONNECTION_STRING")
    if text == "-":
        text = stdin.readline().strip()
    if text:
        return connstr.parse(text)
    return None


def render_text(name: str, steps: Sequence[Step]) -> str:
    marks = {OK: " ok ", WARN: "warn", FAIL: "FAIL", SKIP: "skip"}
    lines = [f"hcm test {name}"]
    for s in steps:
        took = f"  ({s.seconds * 1000:.0f} ms)" if s.seconds is not None else ""
        lines.append(f"  [{marks.get(s.verdict, s.verdict)}] {s.name:<13} {s.detail}{took}")
        if s.advice and s.verdict != OK:
            label = "next" if s.verdict != SKIP else "hint"
            lines.append(f"         {'':<13} {label}: {s.advice}")
    failed = [s.name for s in steps if s.verdict == FAIL]
    lines.append(f"result: {'FAILED at ' + failed[0] if failed else 'all checks passed'}")
    return "\n".join(lines) + "\n"


def exit_status(steps: Sequence[Step]) -> int:
    return 1 if any(s.verdict == FAIL for s in steps) else 0


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None,
         stdin: TextIO | None = None) -> int:
    """``hcm test``; returns the exit status."""
    out = stdout or sys.stdout
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    path = args.config or os.environ.get("HCM_CONFIG") or agent_config.DEFAULT_CONFIG_PATH
    try:
        send = _send_from_args(args, stdin or sys.stdin)
        target = target_from_config(path, args.name, None)
        if send is None and args.send_key_name and args.send_key and target.hc is not None:
            key = args.send_key
            if key == "-":
                key = (stdin or sys.stdin).readline().strip()
            send = attrs.evolve(target.hc, key_name=args.send_key_name, key=key, sas=None)
        target.send = send
    except MalformedInput as e:
        sys.stderr.write(f"hcm test: {e}\n")
        return 1
    except OSError as e:
        sys.stderr.write(f"hcm test: {path}: {e.strerror or e}\n")
        return 1

    from twisted.internet.task import react

    result: list[list[Step]] = []

    def run(reactor: Any) -> defer.Deferred[None]:
        checker = Checker(reactor, target, args.timeout)
        d = defer.ensureDeferred(_collect(checker, result))
        return d

    try:
        react(run, [])
    except SystemExit:
        pass
    steps = result[0] if result else [Step("run", FAIL, "the checks did not complete")]
    if args.json:
        out.write(json.dumps({"name": args.name, "ok": exit_status(steps) == 0,
                              "steps": [s.to_json() for s in steps]}, indent=2) + "\n")
    else:
        out.write(render_text(args.name, steps))
    return exit_status(steps)


async def _collect(checker: Checker, result: list[list[Step]]) -> None:
    result.append(await checker.run())


def run_checks(reactor: Any, target: Target, timeout: float = DEFAULT_TIMEOUT
               ) -> defer.Deferred[list[Step]]:
    """All steps for ``target`` (for tests and callers inside a running reactor)."""
    coro: Coroutine[Any, Any, list[Step]] = Checker(reactor, target, timeout).run()
    return defer.ensureDeferred(coro)


if __name__ == "__main__":
    sys.exit(main())
