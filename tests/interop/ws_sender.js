'use strict';
// hyco-ws sender (relayedConnect, ws 1.1.5) against our relay: byte-exact round trips.
//
//   HCM_INTEROP_KEY=<send key> node ws_sender.js '{"url": "wss://localhost:PORT/$hc/hc1?sb-hc-action=connect",
//       "keyName": "defaultSender", "mode": "echo"|"reply", "size": N, "replySize": M, "timeout": 60,
//       "protocols": ["chat", "superchat"], "headers": {...}, "tokenIn": "header"|"query",
//       "tokenUrl": URL to sign, "listenerCloses": true, "closeEarly": true,
//       "firstMessage": bytes (default 300 KiB), "bigText": length of the echoed text message,
//       "parallel": number of connections opened at once (default 1)}'   (all but url optional)
//
// Each connection sends a text hello (see ws_listener.js), then N random bytes (binary messages
// of 1 B .. 64 KiB after a first one of 300 KiB), receives the echo (mode "echo") or the
// listener's own M bytes (mode "reply") and the listener's text stats message, then closes with
// 1000.  Prints one line:
//   {"event": "result", "protocol": ..., "sent": N, "sent_sha256": ..., "received": ...,
//    "received_sha256": ..., "boundaries_kept": bool, "listener": {...stats the listener sent...},
//    "close_code": ..., "close_reason": ..., "ms": ...}
// with "parallel" > 1: {"event": "results", "results": [one object like the above per connection]}
// or {"event": "error", ...} and exit status 2.

const crypto = require('crypto');
const WebSocket = require('hyco-ws');
const { config, emit, fail, Digest, deadline } = require('./common');

const cfg = config();
const mode = cfg.mode || 'echo';
const size = cfg.size || 0;
const replySize = cfg.replySize || 0;
const parallel = cfg.parallel || 1;
const progress = [];

deadline(cfg.timeout || 60, () => JSON.stringify(progress));

// "tokenIn": "header" (default: ServiceBusAuthorization, as relayedConnect does) or "query"
// (sb-hc-token appended the way createRelaySendUri() does).  The token signs "tokenUrl"
// (default: "url"); createRelayToken() keeps any suffix path, which the relay accepts for
// that suffix.
const tokenInQuery = cfg.tokenIn === 'query';
const signed = WebSocket.createRelayToken(cfg.tokenUrl || cfg.url, cfg.keyName, cfg.key);
const url = tokenInQuery ? cfg.url + '&sb-hc-token=' + encodeURIComponent(signed) : cfg.url;
const token = tokenInQuery ? null : signed;
const headers = token ? { ServiceBusAuthorization: token } : {};
if (cfg.headers) Object.assign(headers, cfg.headers);

function roundTrip(index) {
  return new Promise((resolve, reject) => {
    const state = { index: index, opened: false, sent: 0, received: 0, stats: false };
    progress.push(state);
    const sent = new Digest();
    const received = new Digest();
    const sentSizes = [];
    const receivedSizes = [];
    let listenerStats = null;
    let echoedText = null;
    let done = false;
    const started = Date.now();

    // relayedConnect() offers no subprotocols and no extra headers; with "protocols" or
    // "headers" we use hyco-ws's ws 1.1.5 directly, as relayedConnect() does, with those added.
    const ws = cfg.protocols || cfg.headers
      ? new WebSocket(url, cfg.protocols || null, { headers: headers })
      : WebSocket.relayedConnect(url, token);

    ws.on('open', () => {
      state.opened = true;
      const hello = {
        mode: mode, expect: size, size: replySize, closeAfter: Boolean(cfg.listenerCloses),
      };
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
        state.sent = sent.bytes;
        sentSizes.push(len);
        ws.send(chunk, { binary: true });
        left -= len;
      }
    });

    const wanted = mode === 'echo' ? size : replySize;
    const maybeFinish = () => {
      if (done || listenerStats === null || received.bytes < wanted) return;
      done = true;
      // With "listenerCloses" the listener closes first and we only answer its Close.
      if (!cfg.listenerCloses) ws.close(1000, 'done');
    };

    ws.on('message', (data, flags) => {
      if (flags && flags.binary) {
        received.update(data);
        state.received = received.bytes;
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
          state.stats = true;
        } else {
          echoedText = text.length > 100
            ? { length: text.length, sha256: crypto.createHash('sha256').update(text).digest('hex') }
            : text;
        }
      }
      maybeFinish();
    });

    ws.on('error', (err) => {
      reject(Object.assign(new Error('sender WebSocket error: ' + (err && err.message ? err.message : err)), {
        extra: { index: index, opened: state.opened, sent: sent.bytes, received: received.bytes },
      }));
    });

    ws.on('close', (code, reason) => {
      if (!done) {
        reject(Object.assign(new Error('closed before the round trip finished'), {
          extra: {
            index: index, code: code, reason: reason || '', sent: sent.bytes, received: received.bytes,
          },
        }));
        return;
      }
      resolve({
        index: index,
        mode: mode,
        protocol: ws.protocol || null,
        sent: sent.bytes,
        sent_sha256: sent.hex(),
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
    });
  });
}

// ws 1.1.5 derives Sec-WebSocket-Key from Date.now(), so connections opened within one
// millisecond share it.  With "parallel" > 1 the clock is held still while the WebSockets are
// constructed, so that they all do (the relay must not use the key as an id).
const realNow = Date.now;
const frozen = realNow();
Date.now = () => frozen;
const trips = Array.from({ length: parallel }, (_, i) => roundTrip(i));
Date.now = realNow;
Promise.all(trips)
  .then((results) => {
    if (parallel === 1) emit(Object.assign({ event: 'result' }, results[0]));
    else emit({ event: 'results', results: results });
    process.exit(0);
  })
  .catch((err) => fail(err.message, err.extra));
