'use strict';
// hyco-https listener (Microsoft's hyco-https 1.4.5, ws 6.2.7) against our relay.
//
//   HCM_INTEROP_KEY=<listen key> node https_listener.js '{"url": "wss://localhost:PORT/$hc/hc1?sb-hc-action=listen",
//                                                          "keyName": "defaultListener", "maxSeconds": 120,
//                                                          "tokenSeconds": 3600, "renewEveryMs": null,
//                                                          "keepAliveMs": null}'
//
// hyco-https handles HTTP "request" messages only (its "accept" path references an undefined
// Extensions), so this listener is for the HTTP mode of the relay.  Answers (any method; the
// request body is read and hashed first; "delay=MS" in the query delays the answer):
//   .../blob?size=N&seed=S[&writes=K]  200, N bytes sha256(S:counter) written in K writes
//                                      (default 1); headers x-body-sha256, x-request-sha256
//   .../status?code=C[&reason=R]       C R, no body; header x-request-sha256
//   anything else                      200, JSON {method, url, received, sha256, headers}
// Prints {"event": "listening"} and one {"event": "request", ...} line per request.

const crypto = require('crypto');
const https = require('hyco-https');
const moment = require('moment');
const {
  config, emit, Digest, seededBytes, exitWithParent, shortenRenewInterval, watchControlChannel,
} = require('./common');

const cfg = config();
const maxSeconds = cfg.maxSeconds || 120;
if (cfg.renewEveryMs) shortenRenewInterval(cfg.renewEveryMs);

const server = https.createRelayedServer(
  {
    server: cfg.url,
    token: () => https.createRelayToken(cfg.url, cfg.keyName, cfg.key, cfg.tokenSeconds),
    // Unsolicited Pongs on the control channel every keepAliveMs (hyco-https's keep-alive).
    keepAliveTimeout: cfg.keepAliveMs ? moment.duration(cfg.keepAliveMs, 'milliseconds') : null,
  },
  (req, res) => {
    const body = new Digest();
    req.on('data', (chunk) => body.update(chunk));
    req.on('end', () => {
      const url = new URL(req.url, 'http://listener.invalid');
      const bodySha = body.hex();
      emit({
        event: 'request', method: req.method, url: req.url, received: body.bytes,
        sha256: bodySha, headers: req.headers,
      });
      const delay = Number(url.searchParams.get('delay') || '0');
      if (delay > 0) {
        setTimeout(() => answer(url, bodySha, body.bytes), delay);
      } else {
        answer(url, bodySha, body.bytes);
      }
    });

    const answer = (url, bodySha, bodyBytes) => {
      if (url.pathname.endsWith('/status')) {
        const code = Number(url.searchParams.get('code') || '200');
        res.writeHead(code, url.searchParams.get('reason') || undefined, {
          'X-Listener': 'hyco-https', 'X-Request-Sha256': bodySha,
        });
        res.end();
        return;
      }
      if (url.pathname.endsWith('/blob')) {
        const size = Number(url.searchParams.get('size') || '0');
        const writes = Math.max(1, Number(url.searchParams.get('writes') || '1'));
        const data = seededBytes(url.searchParams.get('seed') || '', size);
        res.setHeader('Content-Type', 'application/octet-stream');
        res.setHeader('X-Request-Sha256', bodySha);
        res.setHeader('X-Body-Sha256', crypto.createHash('sha256').update(data).digest('hex'));
        if (writes === 1) {
          res.end(data);
        } else {
          const step = Math.ceil(size / writes);
          for (let off = 0; off < size; off += step) res.write(data.subarray(off, off + step));
          res.end();
        }
        return;
      }
      const json = Buffer.from(JSON.stringify({
        method: req.method, url: req.url, received: bodyBytes, sha256: bodySha, headers: req.headers,
      }));
      res.writeHead(200, 'OK', { 'Content-Type': 'application/json', 'X-Listener': 'hyco-https' });
      res.end(json);
    };
  }
);

server.on('listening', () => {
  watchControlChannel(server);
  emit({ event: 'listening' });
});
server.on('error', (err) => {
  emit({ event: 'control-error', message: String(err && err.message ? err.message : err) });
});
server.listen();

exitWithParent(maxSeconds, () => server.close());
