'use strict';
// hyco-ws listener (Microsoft's hyco-ws 1.0.5, ws 1.1.5) against our relay.
//
//   HCM_INTEROP_KEY=<listen key> node ws_listener.js '{"url": "wss://localhost:PORT/$hc/hc1?sb-hc-action=listen",
//                                                       "keyName": "defaultListener", "maxSeconds": 120,
//                                                       "tokenSeconds": 3600, "renewEveryMs": null}'
//
// The listen URL is built by the caller: hyco-ws's createRelayListenUri() always adds ":443".
// The token comes from hyco-ws's own createRelayToken() (signs http://localhost:PORT/hc1).
//
// Per accepted connection the sender first sends a text message (JSON), either
//   {"mode": "echo", "expect": N}              echo every message back as it arrives (same type,
//                                              same boundaries) until N binary bytes came in, or
//   {"mode": "reply", "expect": N, "size": M}  send M random bytes of our own (while receiving).
// When N bytes arrived (and our own bytes are sent) we send one text message with our counts and
// sha256 digests; the sender closes (or we close first when the hello says "closeAfter": true).  Printed (stdout, one JSON object per line):
//   {"event": "listening"}, {"event": "accept", ...the accept message...},
//   {"event": "connection", ...}, {"event": "closed", ...digests...}

const crypto = require('crypto');
const WebSocket = require('hyco-ws');
const {
  config, emit, Digest, exitWithParent, shortenRenewInterval, watchControlChannel,
} = require('./common');

const cfg = config();
const maxSeconds = cfg.maxSeconds || 120;
if (cfg.renewEveryMs) shortenRenewInterval(cfg.renewEveryMs);
let connections = 0;

const server = WebSocket.createRelayedServer(
  {
    server: cfg.url,
    token: () => WebSocket.createRelayToken(cfg.url, cfg.keyName, cfg.key, cfg.tokenSeconds),
  },
  (ws) => {
    const n = ++connections;
    const received = new Digest();
    const sent = new Digest();
    let mode = null;
    let closeAfter = false;
    let expect = 0;
    let textMessages = 0;
    let binaryMessages = 0;
    let reported = false;
    const started = Date.now();
    emit({ event: 'connection', n: n, url: ws.url });

    const report = () => {
      if (reported || mode === null || received.bytes < expect) return;
      reported = true;
      const stats = {
        received: received.bytes,
        received_sha256: received.hex(),
        sent: sent.bytes,
        sent_sha256: sent.hex(),
        binary_messages: binaryMessages,
        text_messages: textMessages,
      };
      ws.send(JSON.stringify({ stats: stats }));
      ws.stats = stats;
      if (closeAfter) ws.close(1000, 'listener done');
    };

    const sendOwn = (size) => {
      // Random bytes in messages of varying size (1 B .. 64 KiB, one of 300 KiB).
      let left = size;
      let big = true;
      while (left > 0) {
        let len = big ? 300 * 1024 : 1 + crypto.randomInt(64 * 1024);
        big = false;
        len = Math.min(len, left);
        const chunk = crypto.randomBytes(len);
        sent.update(chunk);
        ws.send(chunk, { binary: true });
        left -= len;
      }
    };

    ws.on('message', (data, flags) => {
      const binary = Boolean(flags && flags.binary);
      if (!binary) {
        textMessages += 1;
        if (mode === null) {
          const hello = JSON.parse(data);
          mode = hello.mode;
          expect = hello.expect || 0;
          closeAfter = Boolean(hello.closeAfter);
          if (mode === 'reply') sendOwn(hello.size || 0);
          report();
        } else if (mode === 'echo') {
          ws.send(data);
        }
        return;
      }
      binaryMessages += 1;
      received.update(data);
      if (mode === 'echo') {
        sent.update(data);
        ws.send(data, { binary: true });
      }
      report();
    });

    ws.on('error', (err) => {
      emit({ event: 'ws-error', n: n, message: String(err && err.message ? err.message : err) });
    });

    ws.on('close', (code, reason) => {
      const out = {
        event: 'closed', n: n, code: code, reason: reason || '', protocol: ws.protocol || null,
        ms: Date.now() - started,
      };
      if (ws.stats) Object.assign(out, ws.stats);
      else Object.assign(out, { received: received.bytes, sent: sent.bytes, incomplete: true });
      emit(out);
    });
  }
);

server.on('listening', () => {
  // Also show what the relay sent on the control channel (hyco-ws does not expose it).
  server.controlChannel.on('message', (data) => {
    let message;
    try {
      message = JSON.parse(String(data));
    } catch (e) {
      emit({ event: 'control-message', text: String(data).slice(0, 200) });
      return;
    }
    if (message.accept) {
      emit({
        event: 'accept', address: message.accept.address, id: message.accept.id,
        connectHeaders: message.accept.connectHeaders,
        remoteEndpoint: message.accept.remoteEndpoint || null,
      });
    }
  });
  watchControlChannel(server);
  emit({ event: 'listening' });
});
server.on('error', (err) => {
  emit({ event: 'control-error', message: String(err && err.message ? err.message : err) });
});

exitWithParent(maxSeconds, () => server.close());
