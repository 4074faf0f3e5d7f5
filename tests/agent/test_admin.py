"""Tests for :mod:`hcm_twisted.agent.admin`: the admin resources and the blocking client."""

from __future__ import annotations

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from hcm_twisted.agent import admin
from hcm_twisted.core.errors import MalformedInput


class FakeSupervisor:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = [
            {"name": "hc1", "connected": True, "endpoint": "h:1", "workers": []},
            {"name": "a/b", "connected": False, "endpoint": None, "workers": []},
        ]
        self.reloads = 0
        self.reload_error: Exception | None = None
        self.pending: Deferred[list[dict[str, Any]]] | None = None

    def status(self) -> Deferred[list[dict[str, Any]]]:
        if self.pending is not None:
            return self.pending
        return succeed(self.items)

    def reload(self) -> Any:
        self.reloads += 1
        if self.reload_error is not None:
            raise self.reload_error

        class _Config:
            hybrid_connections = [type("HC", (), {"name": "hc1"})()]

        return _Config()


def render(site: Any, method: bytes, path: bytes) -> tuple[int, Any]:
    parts = [p for p in path.split(b"/") if p]
    request = DummyRequest(parts)
    request.method = method
    resource = site.resource
    while request.postpath and not getattr(resource, "isLeaf", False):
        resource = resource.getChildWithDefault(request.postpath.pop(0), request)
        request.prepath.append(b"")
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    body = b"".join(request.written)
    return (request.responseCode or 200), (json.loads(body) if body else None)


class ResourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sup = FakeSupervisor()
        self.site = admin.make_site(self.sup)

    def test_status(self) -> None:
        code, body = render(self.site, b"GET", b"/status")
        self.assertEqual(code, 200)
        self.assertEqual(body, self.sup.items)

    def test_status_one(self) -> None:
        self.assertEqual(render(self.site, b"GET", b"/status/hc1"), (200, self.sup.items[0]))
        self.assertEqual(render(self.site, b"GET", b"/status/a/b")[1]["name"], "a/b")
        code, body = render(self.site, b"GET", b"/status/nope")
        self.assertEqual(code, 404)
        self.assertIn("nope", body["error"])

    def test_status_later(self) -> None:
        """The answer waits for the workers' answers."""
        self.sup.pending = Deferred()
        request = DummyRequest([b"status"])
        resource = self.site.resource.getChildWithDefault(b"status", request)
        request.postpath = []
        self.assertIs(resource.render(request), NOT_DONE_YET)
        self.assertEqual(request.written, [])
        self.sup.pending.callback([])
        self.assertEqual(json.loads(b"".join(request.written)), [])
        self.assertEqual(request.finished, 1)

    def test_status_failure(self) -> None:
        self.sup.pending = fail(RuntimeError("boom"))
        code, body = render(self.site, b"GET", b"/status")
        self.assertEqual(code, 500)
        self.assertNotIn("boom", json.dumps(body))
        self.flushLoggedErrors(RuntimeError)

    def test_metrics_and_page(self) -> None:
        """/metrics renders the status for Prometheus; / is the HTML page."""
        for path in (b"metrics", b""):
            request = DummyRequest([path] if path else [b""])
            resource = self.site.resource.getChildWithDefault(path, request)
            request.postpath = []
            self.assertIs(resource.render(request), NOT_DONE_YET)
            body = b"".join(request.written)
            self.assertEqual(request.responseCode or 200, 200)
            if path:
                self.assertIn(b'hcm_hybrid_connection_connected{hc="hc1"} 1.0', body)
            else:
                self.assertIn(b"<html", body.lower())

    def test_reload(self) -> None:
        code, body = render(self.site, b"POST", b"/reload")
        self.assertEqual((code, body), (200, {"ok": True, "hybrid_connections": ["hc1"]}))
        self.assertEqual(self.sup.reloads, 1)

    def test_reload_refused(self) -> None:
        """A bad config is a 400 naming the problem."""
        self.sup.reload_error = MalformedInput("hcm.toml: [agent]: unknown key 'x'")
        code, body = render(self.site, b"POST", b"/reload")
        self.assertEqual(code, 400)
        self.assertEqual(body, {"ok": False, "error": "hcm.toml: [agent]: unknown key 'x'"})

    def test_reload_needs_post(self) -> None:
        code, _ = render(self.site, b"GET", b"/reload")
        self.assertEqual(code, 405)
        self.assertEqual(self.sup.reloads, 0)


class ClientAddressTests(SynchronousTestCase):
    def test_unix(self) -> None:
        self.assertEqual(admin.client_address("unix:/run/hcm/admin.sock:mode=600"),
                         ("unix", "/run/hcm/admin.sock"))
        self.assertEqual(admin.client_address("unix:address=/a\\:b.sock:lockfile=1"),
                         ("unix", "/a:b.sock"))

    def test_tcp(self) -> None:
        self.assertEqual(admin.client_address("tcp:7070:interface=127.0.0.2"), ("tcp", ("127.0.0.2", 7070)))
        self.assertEqual(admin.client_address("tcp:port=7070"), ("tcp", ("127.0.0.1", 7070)))
        self.assertEqual(admin.client_address("tcp6:7070:interface=\\:\\:"), ("tcp", ("::1", 7070)))

    def test_unsupported(self) -> None:
        for bad in ["ssl:443", "unix:", "tcp:x", "systemd:domain=INET:index=0"]:
            self.assertRaises(admin.AdminError, admin.client_address, bad)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps([{"name": "hc1", "path": self.path}]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        self.send_response(400)
        body = b"not json"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _UnixHTTPServer(HTTPServer):
    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        self.socket.bind(self.server_address)
        self.server_name = "localhost"
        self.server_port = 0


class ClientTests(SynchronousTestCase):
    """The blocking client against a real unix socket (the one place it lives)."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = str(self.dir.resolve() / "a.sock")
        if len(self.path) > 100:  # unix socket paths are short
            import tempfile

            self.path = os.path.join(tempfile.mkdtemp(dir="/tmp"), "a.sock")  # noqa: S108
        self.server = _UnixHTTPServer(self.path, _Handler)  # type: ignore[arg-type]
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)

    def test_get(self) -> None:
        status, body = admin.request(f"unix:{self.path}:mode=600", "GET", "/status")
        self.assertEqual((status, body), (200, [{"name": "hc1", "path": "/status"}]))

    def test_not_json(self) -> None:
        self.assertRaises(admin.AdminError, admin.request, f"unix:{self.path}", "POST", "/reload")

    def test_not_running(self) -> None:
        """No socket file, or nobody listening on it: AgentNotRunning."""
        missing = os.path.join(os.path.dirname(self.path), "missing.sock")
        self.assertRaises(admin.AgentNotRunning, admin.request, f"unix:{missing}", "GET", "/status")
        stale = os.path.join(os.path.dirname(self.path), "stale.sock")
        s = socket.socket(socket.AF_UNIX)
        s.bind(stale)
        s.close()
        self.assertRaises(admin.AgentNotRunning, admin.request, f"unix:{stale}", "GET", "/status")
