"""The HTML status page: server rendering, headers, and its JavaScript in a real browser."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, reactor, threads, utils
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from hcm_twisted.agent import statuspage

NOW = 1_800_000_000.0

STATUS: list[dict[str, Any]] = [
    {
        "name": "sql-prod",
        "connected": True,
        "endpoint": "db.internal:1433",
        "namespace": "contoso.servicebus.windows.net",
        "entity": "sql-prod",
        "token_expiry": int(NOW) + 3000,
        "workers": [
            {"worker": 0, "pid": 4101, "state": "connected", "open": 3, "accepted": 120,
             "rejected": 2, "bytes_in": 1536, "bytes_out": 5 * 1024 * 1024, "reconnects": 1,
             "token_expiry": int(NOW) + 2700, "last_error": None, "endpoint_reachable": True},
            {"worker": 1, "pid": 4102, "state": "backing-off", "open": 0, "accepted": 7,
             "rejected": 0, "bytes_in": 10, "bytes_out": 20, "reconnects": 4,
             "token_expiry": int(NOW) + 2700, "last_error": "relay closed the channel (1011)",
             "endpoint_reachable": True},
        ],
    },
    {
        "name": "web<script>alert(1)</script>",
        "connected": False,
        "endpoint": "10.0.0.5:80",
        "namespace": "localhost:9443",
        "workers": [
            {"worker": 0, "pid": 4101, "state": "failed", "open": 0, "accepted": 0,
             "last_error": "401 <b>Unauthorized</b>", "endpoint_reachable": False},
        ],
    },
    {
        "name": "nometa",
        "connected": False,
        "endpoint": None,
        "error": "no endpoint: the hybrid connection's user metadata names none",
        "workers": [],
    },
]


class RenderTests(SynchronousTestCase):
    def test_page(self) -> None:
        page = statuspage.render_page(STATUS, now=NOW)
        self.assertTrue(page.startswith("<!DOCTYPE html>"))
        self.assertIn('<span id="summary">3 hybrid connections, 1 connected</span>', page)
        self.assertIn('<h2>sql-prod<span class="badge ok">Connected</span></h2>', page)
        self.assertIn('<span class="badge bad">Not connected</span>', page)
        # Why not connected: the HC's error, else each worker's state and last error.
        self.assertIn(
            '<p class="why">no endpoint: the hybrid connection&#x27;s user metadata names none</p>',
            page)
        self.assertIn('<p class="why">failed: 401 &lt;b&gt;Unauthorized&lt;/b&gt;</p>', page)
        # Totals over the workers.
        self.assertIn("<dd>3 open, 127 accepted, 2 rejected</dd>", page)
        self.assertIn("<dd>1.5 KiB in, 5.0 MiB out</dd>", page)
        self.assertIn('<dt>Endpoint reachable</dt><dd class="yes">yes</dd>', page)
        self.assertIn('<dt>Endpoint reachable</dt><dd class="no">no</dd>', page)
        self.assertIn('<dt>Endpoint reachable</dt><dd class="empty">unknown</dd>', page)
        self.assertIn("<dd>contoso.servicebus.windows.net / sql-prod</dd>", page)
        # A worker row.
        self.assertIn(
            '<tr><td class="text">1</td><td class="text">4102</td><td class="text no">backing-off</td>'
            "<td>0</td><td>7</td><td>0</td><td>10 B</td><td>20 B</td><td>4</td><td>45 min</td>"
            '<td class="text yes">yes</td><td class="err">relay closed the channel (1011)</td></tr>',
            page)
        # Nothing from the status is markup.
        self.assertNotIn("<script>alert", page)
        self.assertIn("web&lt;script&gt;alert(1)&lt;/script&gt;", page)
        self.assertEqual(page.count("<script>"), 1)
        self.assertIn('data-status-url="/status"', page)
        self.assertIn('<a href="/status">/status</a>', page)
        self.assertIn('<a href="/metrics">/metrics</a>', page)

    def test_reason_without_azure_noise(self) -> None:
        err = ("HTTP 404 Endpoint does not exist. TrackingId:%s_G0, SystemTracker:sb://ns/crm, "
               "Timestamp:11/29/2026 05:34:07 AM (the Hybrid Connection does not exist)")
        hc = {"name": "crm", "connected": False, "workers": [
            {"worker": 0, "state": "failed", "last_error": err % "ac559b48"},
            {"worker": 1, "state": "failed", "last_error": err % "f218350f"},
        ]}
        self.assertEqual(
            statuspage.why_not_connected(hc),
            "failed: HTTP 404 Endpoint does not exist. (the Hybrid Connection does not exist)")
        page = statuspage.render_page([hc], now=NOW)
        self.assertIn("TrackingId:ac559b48_G0", page)  # the table keeps the whole error
        self.assertIn("TrackingId:f218350f_G0", page)

    def test_empty(self) -> None:
        page = statuspage.render_page([], now=NOW)
        self.assertIn("0 hybrid connections, 0 connected", page)
        self.assertIn("No hybrid connection is configured", page)

    def test_helpers(self) -> None:
        self.assertEqual(statuspage.human_bytes(0), "0 B")
        self.assertEqual(statuspage.human_bytes(1023), "1023 B")
        self.assertEqual(statuspage.human_bytes(3 * 1024**3), "3.0 GiB")
        self.assertEqual(statuspage.human_bytes(None), "0 B")
        self.assertEqual(statuspage.expires_in(None, NOW), "-")
        self.assertEqual(statuspage.expires_in(NOW + 30, NOW), "30 s")
        self.assertEqual(statuspage.expires_in(NOW + 3 * 3600, NOW), "3.0 h")
        self.assertEqual(statuspage.expires_in(NOW - 5, NOW), "expired 5 s ago")

    def test_csp_allows_exactly_the_inline_script_and_style(self) -> None:
        page = statuspage.render_page(STATUS, now=NOW)
        script = re.search(r"<script>(.*)</script>", page, re.S)
        style = re.search(r"<style>(.*)</style>", page, re.S)
        assert script is not None and style is not None

        def h(text: str) -> str:
            return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

        self.assertIn(f"script-src {h(script.group(1))};", statuspage.CSP)
        self.assertIn(f"style-src {h(style.group(1))};", statuspage.CSP)
        self.assertIn("default-src 'none'", statuspage.CSP)


class ResourceTests(SynchronousTestCase):
    def test_ok(self) -> None:
        request = DummyRequest([])
        res = statuspage.StatusPage(lambda: defer.succeed(STATUS))
        self.assertEqual(res.render(request), NOT_DONE_YET)
        self.assertEqual(request.finished, 1)
        self.assertEqual(request.responseCode, 200)
        headers = request.responseHeaders
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        self.assertEqual(headers.getRawHeaders(b"content-security-policy"),
                         [statuspage.CSP.encode()])
        self.assertIn(b"sql-prod", b"".join(request.written))

    def test_source_fails(self) -> None:
        request = DummyRequest([])
        res = statuspage.StatusPage(lambda: defer.fail(RuntimeError("no")))
        res.render(request)
        self.assertEqual(request.responseCode, 500)
        self.assertIn(b"could not report its status", b"".join(request.written))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_other_paths(self) -> None:
        request = DummyRequest([b"nope"])
        body = statuspage.StatusPage(lambda: STATUS).render(request)
        self.assertEqual(request.responseCode, 404)
        self.assertEqual(body, b"not found\n")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _Json(resource.Resource):
    isLeaf = True

    def __init__(self, data: Any) -> None:
        super().__init__()
        self.data = data
        self.hits = 0

    def render_GET(self, request: Any) -> bytes:
        self.hits += 1
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.data).encode()


class BrowserTests(TestCase):
    """The page's JavaScript in headless Chromium: it fetches /status and redraws."""

    timeout = 90

    @defer.inlineCallbacks
    def test_refresh_in_browser(self) -> Any:
        browser = _chromium()
        if browser is None:
            raise self.skipTest("chromium is not installed (apt-get install chromium)")
        # The page is first rendered from STATUS; /status then answers with a changed list.
        changed = json.loads(json.dumps(STATUS))
        changed[0]["workers"][0]["accepted"] = 999
        changed[2]["connected"] = True
        changed[2]["error"] = None
        changed[2]["name"] = "nometa-now-up"
        noisy = ("HTTP 404 Endpoint does not exist. TrackingId:%s_G0, SystemTracker:sb://ns/x, "
                 "Timestamp:11/29/2026 05:34:07 AM (the Hybrid Connection does not exist)")
        changed[1]["workers"] = [
            {"worker": 0, "state": "failed", "last_error": noisy % "aaaa"},
            {"worker": 1, "state": "failed", "last_error": noisy % "bbbb"},
        ]
        status = _Json(changed)
        root = resource.Resource()
        root.putChild(b"", statuspage.StatusPage(lambda: STATUS))
        root.putChild(b"status", status)
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            server.Site(root))
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/"
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        common = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}",
            "--virtual-time-budget=5000",
        ]
        out, err, code = yield utils.getProcessOutputAndValue(
            browser, [*common, "--dump-dom", url], env=dict(os.environ), path=str(tmp))
        dom = out.decode("utf-8", "replace")
        self.assertEqual(code, 0, err.decode("utf-8", "replace")[-2000:])
        self.assertGreaterEqual(status.hits, 1, "the page's script never fetched /status")
        # Redrawn by status.js from the changed /status answer.
        self.assertIn("nometa-now-up", dom)
        self.assertIn("3 hybrid connections, 2 connected", dom)
        self.assertIn("<td>999</td>", dom)
        # status.js shortens the reason like statuspage.py (one line for both workers).
        self.assertIn('<p class="why">failed: HTTP 404 Endpoint does not exist. (the Hybrid '
                      'Connection does not exist)</p>', dom)
        self.assertIn("<dd>3 open, 1006 accepted, 2 rejected</dd>", dom)
        self.assertIn('<span id="updated" class="">updated ', dom)
        self.assertNotIn('class="stale"', dom)
        # The script escapes what it shows.
        self.assertNotIn("<script>alert", dom)
        # A screenshot for a human (kept with the test's files).
        shot = tmp / "status-page.png"
        _, err, code = yield utils.getProcessOutputAndValue(
            browser, [*common, "--window-size=1200,900", f"--screenshot={shot}", url],
            env=dict(os.environ), path=str(tmp))
        self.assertEqual(code, 0, err.decode("utf-8", "replace")[-2000:])
        self.assertTrue(shot.read_bytes().startswith(b"\x89PNG"))
        if os.environ.get("HCM_KEEP_SCREENSHOT"):
            shutil.copy(shot, os.environ["HCM_KEEP_SCREENSHOT"])


class RealAgentBrowserTests(TestCase):
    """The page served by a real agent (relay + agent processes), read by headless Chromium.

    ``HCM_UPDATE_SCREENSHOT=1`` also writes ``docs/status-page.png`` from this run.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_agent_page(self) -> Any:
        from tests.e2e import harness
        from tests.e2e.relayfixture import start_relay

        browser = _chromium()
        if browser is None:
            raise self.skipTest("chromium is not installed (apt-get install chromium)")
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        echo = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            server.Site(resource.Resource()))
        self.addCleanup(echo.stopListening)
        relay = start_relay(tmp / "relay", hcs=("hc1", "hc2"))
        self.addCleanup(relay.stop)
        admin_port = harness.free_port()
        config = tmp / "hcm.toml"
        config.write_text(
            "[agent]\n"
            f'admin = "tcp:{admin_port}:interface=127.0.0.1"\nworkers = 2\n'
            f'ca-certificates = "{relay.ca_path}"\n\n'
            "[[hybrid-connection]]\n"
            f'connection-string = "{relay.connection_string("hc1")}"\n'
            f'endpoint = "127.0.0.1:{echo.getHost().port}"\n\n'
            "[[hybrid-connection]]\n"
            f'connection-string = "{relay.connection_string("hc2")}"\n'
        )
        config.chmod(0o600)
        agent = harness.twist("hcm", config, cwd=tmp, name="agent")
        self.addCleanup(agent.stop)
        # Both workers' control channels for hc1 (hc2 has no endpoint: not listened on).
        yield threads.deferToThread(
            agent.wait_log, r"(?s)channel connected: hc1.*channel connected: hc1", 30.0)
        common = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}",
            "--virtual-time-budget=3000",
        ]
        url = f"http://127.0.0.1:{admin_port}/"
        out, err, code = yield utils.getProcessOutputAndValue(
            browser, [*common, "--dump-dom", url], env=dict(os.environ), path=str(tmp))
        self.assertEqual(code, 0, err.decode("utf-8", "replace")[-2000:])
        dom = out.decode("utf-8", "replace")
        self.assertIn("2 hybrid connections, 1 connected", dom)
        self.assertIn('<h2>hc1<span class="badge ok">Connected</span></h2>', dom)
        self.assertIn('<h2>hc2<span class="badge bad">Not connected</span></h2>', dom)
        self.assertIn("no endpoint", dom)  # hc2's user metadata names none: that is the reason
        self.assertEqual(dom.count('<td class="text yes">connected</td>'), 2)
        self.assertIn('<span id="updated" class="">updated ', dom)  # redrawn from /status
        self.assertNotIn(harness.TEST_KEYS["defaultListener"], dom)
        shot = tmp / "status-page.png"
        _, err, code = yield utils.getProcessOutputAndValue(
            browser, [*common, "--window-size=1200,760", f"--screenshot={shot}", url],
            env=dict(os.environ), path=str(tmp))
        self.assertEqual(code, 0, err.decode("utf-8", "replace")[-2000:])
        self.assertTrue(shot.read_bytes().startswith(b"\x89PNG"))
        if os.environ.get("HCM_UPDATE_SCREENSHOT"):
            shutil.copy(shot, Path(__file__).resolve().parents[2] / "docs" / "status-page.png")
