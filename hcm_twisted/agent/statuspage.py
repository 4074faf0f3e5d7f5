# -*- test-case-name: tests.agent.test_statuspage -*-
"""A small self-refreshing HTML status page for the agent's admin API.

``GET /`` renders every hybrid connection from the agent's status list
(DESIGN "Status"): Connected or not and why, its endpoint and whether that is
reachable, traffic, and a row per worker.  The page is complete as served
(no JavaScript needed to read it); a few lines of inline JavaScript
(``static/status.js``) then fetch ``/status`` every 2 s and redraw it.  No
external assets; a Content-Security-Policy allows only the page's own inline
script and style (by hash) and fetches to the same origin.

Mount it on the admin site (the master's ``make_site``)::

    root.putChild(b"", StatusPage(supervisor.status))
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.iweb import IRequest

_log = Logger()

REFRESH_SECONDS = 2


def _static(name: str) -> str:
    return resources.files("hcm_twisted.agent").joinpath("static", name).read_text("utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


_CSS = _static("status.css")
_JS = _static("status.js")
CSP = (
    "default-src 'none'; "
    f"script-src {_csp_hash(_JS)}; style-src {_csp_hash(_CSS)}; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return 0


def human_bytes(n: Any) -> str:
    """``1536`` -> ``"1.5 KiB"`` (as status.js writes it)."""
    value = float(_num(n))
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    while value >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    return f"{int(value)} B" if i == 0 else f"{value:.1f} {units[i]}"


def expires_in(expiry: Any, now: float) -> str:
    """Time until a Unix ``expiry``, briefly (as status.js writes it)."""
    if not isinstance(expiry, int | float) or isinstance(expiry, bool):
        return "-"
    s = round(expiry - now)
    if s < 0:
        return f"expired {-s} s ago"
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{round(s / 60)} min"
    return f"{s / 3600:.1f} h"


def _reach(value: Any) -> tuple[str, str]:
    if value is True:
        return "yes", "yes"
    if value is False:
        return "no", "no"
    return "unknown", "empty"


# Azure's error texts carry per-request noise; left out of the one-line reason so that the
# same error from every worker reads once (the table keeps the full text).
_NOISE = re.compile(r"\s*(?:TrackingId|SystemTracker):[^,\s]*,?|\s*Timestamp:[^()]*?(?=\s*\(|$)")


def _essence(error: str) -> str:
    return _NOISE.sub("", error).strip()


def why_not_connected(hc: Mapping[str, Any]) -> str:
    """Why an HC is not Connected ("" when it is): its error, else each worker's state/error."""
    if hc.get("connected"):
        return ""
    if hc.get("error"):
        return str(hc["error"])
    seen: list[str] = []
    for w in hc.get("workers") or []:
        if not isinstance(w, Mapping):
            continue
        state = str(w.get("state") or "?")
        reason = f"{state}: {_essence(str(w['last_error']))}" if w.get("last_error") else state
        if reason not in seen:
            seen.append(reason)
    return "; ".join(seen) if seen else "no worker is running"


def _hc_html(hc: Mapping[str, Any], now: float) -> str:
    workers = [w for w in hc.get("workers") or [] if isinstance(w, Mapping)]
    connected = bool(hc.get("connected"))
    name = str(hc.get("name", "?"))
    out = [f'<section class="hc" data-hc="{_e(name)}">']
    badge = '<span class="badge ok">Connected</span>' if connected else (
        '<span class="badge bad">Not connected</span>'
    )
    out.append(f"<h2>{_e(name)}{badge}</h2>")
    reason = why_not_connected(hc)
    if reason:
        out.append(f'<p class="why">{_e(reason)}</p>')
    totals = {k: sum(_num(w.get(k)) for w in workers)
              for k in ("open", "accepted", "rejected", "bytes_in", "bytes_out")}
    if any(w.get("endpoint_reachable") is True for w in workers):
        reach = _reach(True)
    elif any(w.get("endpoint_reachable") is False for w in workers):
        reach = _reach(False)
    else:
        reach = _reach(None)
    relay = str(hc.get("namespace") or "-") + (f" / {hc['entity']}" if hc.get("entity") else "")
    rows = [
        ("Endpoint", str(hc.get("endpoint") or "(none)"), None),
        ("Endpoint reachable", reach[0], reach[1]),
        ("Relay", relay, None),
        ("Connections", f"{totals['open']:g} open, {totals['accepted']:g} accepted, "
                        f"{totals['rejected']:g} rejected", None),
        ("Traffic", f"{human_bytes(totals['bytes_in'])} in, {human_bytes(totals['bytes_out'])} out",
         None),
    ]
    out.append("<dl>")
    for key, value, cls in rows:
        attr = f' class="{cls}"' if cls else ""
        out.append(f"<dt>{_e(key)}</dt><dd{attr}>{_e(value)}</dd>")
    out.append("</dl>")
    if workers:
        heads = ["Worker", "PID", "State", "Open", "Accepted", "Rejected", "In", "Out",
                 "Reconnects", "Token expires in", "Endpoint", "Last error"]
        out.append("<table><tr>")
        for i, head in enumerate(heads):
            cls = ' class="text"' if i < 3 or i > 9 else ""
            out.append(f"<th{cls}>{_e(head)}</th>")
        out.append("</tr>")
        for w in workers:
            state = str(w.get("state") or "?")
            rr = _reach(w.get("endpoint_reachable"))
            expiry = w.get("token_expiry")
            if not isinstance(expiry, int | float):
                expiry = hc.get("token_expiry")
            cells = [
                ("text", w.get("worker", "-")),
                ("text", w.get("pid") if w.get("pid") is not None else "-"),
                ("text " + ("yes" if state == "connected" else "no"), state),
                ("", f"{_num(w.get('open')):g}"),
                ("", f"{_num(w.get('accepted')):g}"),
                ("", f"{_num(w.get('rejected')):g}"),
                ("", human_bytes(w.get("bytes_in"))),
                ("", human_bytes(w.get("bytes_out"))),
                ("", f"{_num(w.get('reconnects')):g}"),
                ("", expires_in(expiry, now)),
                ("text " + rr[1], rr[0]),
                ("err", w.get("last_error") or ""),
            ]
            out.append("<tr>")
            for cls, value in cells:
                attr = f' class="{cls}"' if cls else ""
                out.append(f"<td{attr}>{_e(value)}</td>")
            out.append("</tr>")
        out.append("</table>")
    out.append("</section>")
    return "".join(out)


def render_page(
    status: Sequence[Mapping[str, Any]], now: float | None = None, status_url: str = "/status"
) -> str:
    """The whole page for ``status`` (a list of HC status objects)."""
    now = time.time() if now is None else now
    items = [hc for hc in status if isinstance(hc, Mapping)]
    up = sum(1 for hc in items if hc.get("connected"))
    summary = f"{len(items)} hybrid connection{'' if len(items) == 1 else 's'}, {up} connected"
    if items:
        body = "".join(_hc_html(hc, now) for hc in items)
    else:
        body = ('<p class="empty">No hybrid connection is configured. '
                "Add one with: hcm add CONNECTION-STRING</p>")
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>hcm status</title>"
        f"<style>{_CSS}</style></head><body>"
        f'<header><h1>hcm status</h1><span id="summary">{_e(summary)}</span>'
        f'<span id="updated">updated {_e(stamp)}</span></header>'
        f'<main id="hcs" data-status-url="{_e(status_url)}">{body}</main>'
        f'<footer>JSON: <a href="{_e(status_url)}">{_e(status_url)}</a> · '
        'Prometheus: <a href="/metrics">/metrics</a> · refreshes every '
        f"{REFRESH_SECONDS} s</footer>"
        f"<script>{_JS}</script>"
        "</body></html>\n"
    )


def _error_page(message: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>hcm status</title>'
        f"<style>{_CSS}</style></head><body><header><h1>hcm status</h1></header>"
        f'<p class="why">{_e(message)}</p></body></html>\n'
    )


class StatusPage(resource.Resource):
    """``GET /``: the status page rendered from ``source()`` (a list, or a Deferred of one)."""

    isLeaf = True

    def __init__(self, source: Callable[[], Any], status_url: str = "/status") -> None:
        super().__init__()
        self._source = source
        self._status_url = status_url

    def render_GET(self, request: IRequest) -> int | bytes:
        if request.postpath and any(request.postpath):  # type: ignore[attr-defined]
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found\n"
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))  # type: ignore[attr-defined]

        def send(code: int, page: str) -> None:
            if gone:
                return
            request.setResponseCode(code)
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            request.setHeader(b"content-security-policy", CSP.encode("ascii"))
            request.setHeader(b"x-content-type-options", b"nosniff")
            request.setHeader(b"referrer-policy", b"no-referrer")
            request.write(page.encode("utf-8"))
            request.finish()

        def failed(reason: Failure) -> None:
            _log.failure("status page: cannot get the status", reason)
            send(500, _error_page("The agent could not report its status; see its log."))

        d = defer.maybeDeferred(self._source)
        d.addCallback(lambda status: send(200, render_page(status, status_url=self._status_url)))
        d.addErrback(failed)
        return server.NOT_DONE_YET  # type: ignore[no-any-return]
