"use strict";
// Re-renders the page from GET /status every 2 s.  Mirrors statuspage.py's HTML.
(function () {
  var root = document.getElementById("hcs");
  var url = root.getAttribute("data-status-url") || "/status";
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function num(v) { return typeof v === "number" && isFinite(v) ? v : 0; }
  function bytes(n) {
    n = num(n);
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(1)) + " " + units[i];
  }
  function expiresIn(t) {
    if (typeof t !== "number") { return "-"; }
    var s = Math.round(t - Date.now() / 1000);
    if (s < 0) { return "expired " + (-s) + " s ago"; }
    if (s < 120) { return s + " s"; }
    if (s < 7200) { return Math.round(s / 60) + " min"; }
    return (s / 3600).toFixed(1) + " h";
  }
  function reach(v) {
    if (v === true) { return ["yes", "yes"]; }
    if (v === false) { return ["no", "no"]; }
    return ["unknown", "empty"];
  }
  var noise = /\s*(?:TrackingId|SystemTracker):[^,\s]*,?|\s*Timestamp:[^()]*?(?=\s*\(|$)/g;
  function essence(e) { return String(e).replace(noise, "").trim(); }
  function why(hc) {
    if (hc.connected) { return ""; }
    if (hc.error) { return String(hc.error); }
    var ws = hc.workers || [], seen = [];
    ws.forEach(function (w) {
      var r = w.last_error ? String(w.state || "?") + ": " + essence(w.last_error) : String(w.state || "?");
      if (seen.indexOf(r) < 0) { seen.push(r); }
    });
    return seen.length ? seen.join("; ") : "no worker is running";
  }
  function totals(ws) {
    var t = {open: 0, accepted: 0, rejected: 0, bytes_in: 0, bytes_out: 0};
    ws.forEach(function (w) { for (var k in t) { t[k] += num(w[k]); } });
    return t;
  }
  function row(dl, k, v, cls) { dl.appendChild(el("dt", null, k)); dl.appendChild(el("dd", cls || null, v)); }
  function render(items) {
    var frag = document.createDocumentFragment();
    var up = 0;
    if (!items.length) { frag.appendChild(el("p", "empty", "No hybrid connection is configured. Add one with: hcm add CONNECTION-STRING")); }
    items.forEach(function (hc) {
      if (hc.connected) { up++; }
      var ws = hc.workers || [];
      var s = el("section", "hc"); s.setAttribute("data-hc", hc.name);
      var h = el("h2", null, hc.name);
      h.appendChild(el("span", "badge " + (hc.connected ? "ok" : "bad"), hc.connected ? "Connected" : "Not connected"));
      s.appendChild(h);
      var reason = why(hc);
      if (reason) { s.appendChild(el("p", "why", reason)); }
      var dl = el("dl"), t = totals(ws);
      row(dl, "Endpoint", hc.endpoint || "(none)");
      var r = reach(ws.some(function (w) { return w.endpoint_reachable === true; }) ? true :
                    ws.some(function (w) { return w.endpoint_reachable === false; }) ? false : null);
      row(dl, "Endpoint reachable", r[0], r[1]);
      row(dl, "Relay", (hc.namespace || "-") + (hc.entity ? " / " + hc.entity : ""));
      row(dl, "Connections", t.open + " open, " + t.accepted + " accepted, " + t.rejected + " rejected");
      row(dl, "Traffic", bytes(t.bytes_in) + " in, " + bytes(t.bytes_out) + " out");
      s.appendChild(dl);
      if (ws.length) {
        var tb = el("table"), head = el("tr");
        ["Worker", "PID", "State", "Open", "Accepted", "Rejected", "In", "Out", "Reconnects",
         "Token expires in", "Endpoint", "Last error"].forEach(function (c, i) {
          head.appendChild(el("th", i < 3 || i > 9 ? "text" : null, c));
        });
        tb.appendChild(head);
        ws.forEach(function (w) {
          var tr = el("tr"), rr = reach(w.endpoint_reachable);
          tr.appendChild(el("td", "text", w.worker !== undefined ? w.worker : "-"));
          tr.appendChild(el("td", "text", w.pid !== undefined && w.pid !== null ? w.pid : "-"));
          tr.appendChild(el("td", "text " + (w.state === "connected" ? "yes" : "no"), w.state || "?"));
          tr.appendChild(el("td", null, num(w.open)));
          tr.appendChild(el("td", null, num(w.accepted)));
          tr.appendChild(el("td", null, num(w.rejected)));
          tr.appendChild(el("td", null, bytes(w.bytes_in)));
          tr.appendChild(el("td", null, bytes(w.bytes_out)));
          tr.appendChild(el("td", null, num(w.reconnects)));
          tr.appendChild(el("td", null, expiresIn(typeof w.token_expiry === "number" ? w.token_expiry : hc.token_expiry)));
          tr.appendChild(el("td", "text " + rr[1], rr[0]));
          tr.appendChild(el("td", "err", w.last_error || ""));
          tb.appendChild(tr);
        });
        s.appendChild(tb);
      }
      frag.appendChild(s);
    });
    root.replaceChildren(frag);
    document.getElementById("summary").textContent =
      items.length + " hybrid connection" + (items.length === 1 ? "" : "s") + ", " + up + " connected";
  }
  var updated = document.getElementById("updated");
  function refresh() {
    fetch(url, {cache: "no-store", headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (items) {
        render(items);
        updated.className = "";
        updated.textContent = "updated " + new Date().toLocaleTimeString();
      })
      .catch(function (e) {
        updated.className = "stale";
        updated.textContent = "cannot reach the agent (" + e.message + "); showing older data";
      })
      .finally(function () { setTimeout(refresh, 2000); });
  }
  setTimeout(refresh, 2000);
})();
