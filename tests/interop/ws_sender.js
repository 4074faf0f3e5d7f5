'use strict';
// hyco-ws sender (relayedConnect, ws 1.1.5) against our relay: a byte-exact round trip.
//
//   HCM_INTEROP_KEY=<send key> node ws_sender.js '{"url": "wss://localhost:PORT/$hc/hc1?sb-hc-action=connect",
//       "keyName": "defaultSender", "mode": "echo"|"reply", "size": N, "replySize": M, "timeout": 60,
//       "protocols": ["chat", "superchat"], "headers": {...}, "tokenIn": "header"|"query",
//       "listenerCloses": true, "closeEarly": true, "firstMessage": bytes (default 300 KiB),
//       "bigText": length of the echoed text message (optional)}'
//
// Sends N random bytes (binary messages of 1 B .. 64 KiB plus one of 300 KiB) after a text hello
// (see ws_listener.js), receives the echo (mode "echo") or the listener's own M bytes (mode
// "reply") and the listener's text stats message, then closes with 1000.  Prints one line:
//   {"event": "result", "protocol": ..., "sent": N, "sent_sha256": ..., "received": ..., "received_sha256": ...,
//    "boundaries_kept": bool, "listener": {...stats the listener sent...}, "close_code": ..., "ms": ...}
// or {"event": "error", ...} and exit status 2.

const crypto = require('crypto');
const WebSocket = require('hyco-ws');
const { config, emit, fail, Digest, deadline } = require('./common');

const cfg = config();
const mode = cfg.mode || 'echo';
const size = cfg.size || 0;
const replySize = cfg.replySize || 0;
const sent = new Digest();
const received = new Digest();
const sentSizes = [];
const receivedSizes = [];
let listenerStats = null;
let echoedText = null;
let opened = false;
let done = false;
const started = Date.now();

deadline(cfg.timeout || 60, () =>
  `opened=${opened} sent=${sent.bytes} received=${received.bytes} stats=${listenerStats !== null}`);

// "tokenIn": "header" (default: ServiceBusAuthorization, as relayedConnect does) or "query"
// (sb-hc-token appended the way createRelaySendUri() does).  The token signs "tokenUrl"
// (default: "url"); createRelayToken() keeps any suffix path, and a token for a path *below* the
// HC does not authorize the HC, so tests with a suffix pass the HC's own URL there.
const tokenInQuery = cfg.tokenIn === 'query';
const signed = WebSocket.createRelayToken(cfg.tokenUrl || cfg.url, cfg.keyName, cfg.key);
const url = tokenInQuery ? cfg.url + '&sb-hc-token=' + encodeURIComponent(signed) : cfg.url;
const token = tokenInQuery ? null : signed;
const headers = token ? { ServiceBusAuthorization: token } : {};
if (cfg.headers) Object.assign(headers, cfg.headers);
const onOpen = () => {
  opened = true;
  const expect = size;
  const hello = { mode: mode, expect: expect, size: replySize, closeAfter: Boolean(cfg.listenerCloses) };
  ws.send(JSON.stringify(hello));
  if (mode === 'echo') ws.send(cfg.bigText ? 'x'.repeat(cfg.bigText) : 'text passes as text');
  let left = size;
  let big = true;
  while (left > 0) {
    let len = big ? (cfg.firstMessage || 300 * 1024) : 1 + crypto.randomInt(64 * 1024);
    big = false;
    len = Math.min(len, left);
    const chunk = crypto.randomBytes(len);
    sent.update(chunk);
    sentSizes.push(len);
    ws.send(chunk, { binary: true });
    left -= len;
  }
};
// relayedConnect() offers no subprotocols and no extra headers; with "protocols" or "headers" we
// use hyco-ws's ws 1.1.5 directly, exactly as relayedConnect() does but with those added.
const ws = cfg.protocols || cfg.headers
  ? new WebSocket(url, cfg.protocols || null, { headers: headers })
  : WebSocket.relayedConnect(url, token);
ws.on('open', onOpen);

const wanted = () => (mode === 'echo' ? size : replySize);

const maybeFinish = () => {
  if (done || listenerStats === null || received.bytes < wanted()) return;
  done = true;
  // With "listenerCloses" the listener closes first and we only answer its Close.
  if (!cfg.listenerCloses) ws.close(1000, 'done');
};

ws.on('message', (data, flags) => {
  if (flags && flags.binary) {
    received.update(data);
    receivedSizes.push(data.length);
    if (cfg.closeEarly && !done) {
      // Leave in the middle of the listener's data: the listener must see the close.
      done = true;
      ws.close(1000, 'sender leaves early');
      return;
    }
  } else {
    const text = String(data);
    if (text.startsWith('{"stats"')) {
      listenerStats = JSON.parse(text).stats;
    } else {
      echoedText = text.length > 100 ? { length: text.length, sha256: crypto.createHash('sha256').update(text).digest('hex') } : text;
    }
  }
  maybeFinish();
});

ws.on('error', (err) => {
  fail('sender WebSocket error: ' + (err && err.message ? err.message : err), {
    opened: opened,
    sent: sent.bytes,
    received: received.bytes,
  });
});

ws.on('close', (code, reason) => {
  if (!done) {
    fail('closed before the round trip finished', {
      code: code, reason: reason || '', sent: sent.bytes, received: received.bytes,
    });
  }
  const sentHex = sent.hex();
  emit({
    event: 'result',
    mode: mode,
    protocol: ws.protocol || null,
    sent: sent.bytes,
    sent_sha256: sentHex,
    received: received.bytes,
    received_sha256: received.hex(),
    messages_sent: sentSizes.length,
    messages_received: receivedSizes.length,
    boundaries_kept: mode === 'echo' ? JSON.stringify(sentSizes) === JSON.stringify(receivedSizes) : null,
    echoed_text: echoedText,
    listener: listenerStats,
    close_code: code,
    close_reason: reason || '',
    ms: Date.now() - started,
  });
  process.exit(0);
});
