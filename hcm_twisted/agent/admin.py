# -*- test-case-name: tests.agent.test_admin -*-
"""The agent's local admin API (HTTP + JSON) and a small blocking client for ``hcm``.

- ``GET /status``: a list of HC status objects (DESIGN "Status").
- ``GET /status/NAME``: one of them (404 if there is no such HC).
- ``POST /reload``: re-read the config file and apply it; other HCs are untouched.
- ``GET /``: a self-refreshing HTML status page; ``GET /metrics``: Prometheus metrics.

By default it listens on a unix socket next to the config file with mode 0600,
so only the agent's user (and root) can use it.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import unquote

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.server import Request

from hcm_twisted.core.errors import MalformedInput

JSON_TYPE = b"application/json"
CLIENT_TIMEOUT = 10.0


def _write_json(request: Request, code: int, body: Any) -> None:
    request.setResponseCode(code)
    request.setHeader(b"content-type", JSON_TYPE)
    request.setHeader(b"cache-control", b"no-store")
    request.write(json.dumps(body, indent=1, sort_keys=True).encode("utf-8") + b"\n")
    request.finish()


class _Resource(resource.Resource):
    isLeaf = True

    def __init__(self, supervisor: Any) -> None:
        super().__init__()
        self.supervisor = supervisor


class StatusResource(_Resource):
    """``GET /status`` and ``GET /status/NAME``."""

    _log = Logger()

    def render_GET(self, request: Request) -> Any:  # noqa: N802 (twisted.web API)
        path = [unquote(p.decode("utf-8", "replace")) for p in (request.postpath or []) if p]
        name = "/".join(path) or None
        d: Deferred[list[dict[str, Any]]] = self.supervisor.status()
        finished: list[bool] = []
        request.notifyFinish().addErrback(lambda _: finished.append(True))

        def answer(items: list[dict[str, Any]]) -> None:
            if finished:
                return
            if name is None:
                _write_json(request, 200, items)
                return
            match = [i for i in items if i.get("name") == name]
            if not match:
                _write_json(request, 404, {"error": f"no hybrid connection named {name!r}"})
            else:
                _write_json(request, 200, match[0])

        def failed(f: Failure) -> None:
            self._log.failure("status failed", f)
            if not finished:
                _write_json(request, 500, {"error": "status failed; see the agent log"})

        d.addCallbacks(answer, failed)
        return server.NOT_DONE_YET


class ReloadResource(_Resource):
    """``POST /reload``."""

    _log = Logger()

    def render_POST(self, request: Request) -> bytes:  # noqa: N802 (twisted.web API)
        request.setHeader(b"content-type", JSON_TYPE)
        try:
            config = self.supervisor.reload()
        except MalformedInput as e:
            self._log.error("reload refused: {error}", error=str(e))
            request.setResponseCode(400)
            return json.dumps({"ok": False, "error": str(e)}).encode("utf-8") + b"\n"
        except Exception:
            self._log.failure("reload failed")
            request.setResponseCode(500)
            return json.dumps({"ok": False, "error": "reload failed; see the agent log"}).encode() + b"\n"
        names = [hc.name for hc in config.hybrid_connections]
        return json.dumps({"ok": True, "hybrid_connections": names}).encode("utf-8") + b"\n"

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 (twisted.web API)
        request.setResponseCode(405)
        request.setHeader(b"allow", b"POST")
        request.setHeader(b"content-type", JSON_TYPE)
        return b'{"error": "use POST"}\n'


class _Quiet(server.Site):
    """No access log: the CLI polls and the log would fill with it."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def make_site(supervisor: Any) -> server.Site:
    from hcm_twisted.agent.statuspage import StatusPage
    from hcm_twisted.core.metrics import MetricsResource

    root = resource.Resource()
    root.putChild(b"", StatusPage(supervisor.status))
    root.putChild(b"metrics", MetricsResource(supervisor.status))
    root.putChild(b"status", StatusResource(supervisor))
    root.putChild(b"reload", ReloadResource(supervisor))
    site = _Quiet(root)
    site.displayTracebacks = False
    return site


# ---- the blocking client used by ``hcm`` ---------------------------------


class AgentNotRunning(Exception):
    """Nothing answers on the admin endpoint."""


class AdminError(Exception):
    """The admin endpoint answered with an error, or could not be used."""


def split_endpoint(description: str) -> list[str]:
    """Split a Twisted endpoint string on unescaped ``:`` (``\\`` escapes)."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return parts


def client_address(description: str) -> tuple[str, Any]:
    """Where to connect for a server endpoint string: ``("unix", path)`` or ``("tcp", (host, port))``."""
    parts = split_endpoint(description.strip())
    kind = parts[0].lower()
    positional = [p for p in parts[1:] if "=" not in p]
    named = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    if kind == "unix":
        path = named.get("address") or (positional[0] if positional else "")
        if not path:
            raise AdminError(f"admin endpoint {description!r} names no socket path")
        return "unix", path
    if kind in ("tcp", "tcp6"):
        port_text = named.get("port") or (positional[0] if positional else "")
        if not port_text.isdigit():
            raise AdminError(f"admin endpoint {description!r} names no port")
        host = named.get("interface", "")
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1" if kind == "tcp" else "::1"
        elif host == "::":
            host = "::1"
        return "tcp", (host, int(port_text))
    raise AdminError(f"admin endpoint {description!r}: hcm can only reach unix: and tcp: endpoints")


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over the agent's unix admin socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def request(description: str, method: str, path: str,
            timeout: float = CLIENT_TIMEOUT) -> tuple[int, Any]:
    """One admin API call; ``(status, decoded JSON body)``.

    :class:`AgentNotRunning` when nothing listens; :class:`AdminError` for
    anything else that goes wrong.
    """
    kind, address = client_address(description)
    conn: http.client.HTTPConnection
    if kind == "unix":
        conn = UnixHTTPConnection(address, timeout)
    else:
        conn = http.client.HTTPConnection(address[0], address[1], timeout=timeout)
    where = address if kind == "unix" else f"{address[0]}:{address[1]}"
    try:
        try:
            conn.connect()
        except (FileNotFoundError, ConnectionRefusedError):
            raise AgentNotRunning(f"no agent answers at {where}") from None
        except PermissionError:
            raise AdminError(f"permission denied on the admin socket {where}") from None
        except OSError as e:
            raise AgentNotRunning(f"no agent answers at {where} ({e.strerror or e})") from None
        try:
            conn.request(method, path, body=b"" if method == "POST" else None,
                         headers={"Accept": "application/json"})
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise AdminError(f"the agent at {where} did not answer properly ({e})") from None
    finally:
        conn.close()
    try:
        body = json.loads(data.decode("utf-8")) if data.strip() else None
    except ValueError:
        raise AdminError(f"the agent at {where} answered with something that is not JSON") from None
    return response.status, body
