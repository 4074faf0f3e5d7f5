'use strict';
// Shared helpers for the interop scripts.  Each script takes one JSON object as its only
// argument (see the script's header) and reads the SAS key from the environment variable
// HCM_INTEROP_KEY, so that keys never appear in process listings or logs.
//
// Output protocol: every line a script prints on stdout is one JSON object with an "event"
// field; the Python tests parse these lines.  Diagnostics go to stderr.

const crypto = require('crypto');

function config() {
  if (process.argv.length < 3) {
    fail('usage: node ' + process.argv[1] + " '<json config>'");
  }
  let cfg;
  try {
    cfg = JSON.parse(process.argv[2]);
  } catch (e) {
    fail('config is not JSON: ' + e.message);
  }
  const key = process.env.HCM_INTEROP_KEY;
  if (!key) {
    fail('HCM_INTEROP_KEY (the SAS key) is not set');
  }
  cfg.key = key;
  return cfg;
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function fail(message, extra) {
  emit(Object.assign({ event: 'error', message: String(message) }, extra || {}));
  process.exit(2);
}

// An incremental sha256 with a byte count.
class Digest {
  constructor() {
    this.hash = crypto.createHash('sha256');
    this.bytes = 0;
  }

  update(buf) {
    this.hash.update(buf);
    this.bytes += buf.length;
  }

  hex() {
    return this.hash.digest('hex');
  }
}

// Deterministic pseudo-random bytes (sha256 in counter mode) so that a peer can regenerate
// them from the seed: used for large HTTP response bodies.
function seededBytes(seed, length) {
  const out = Buffer.alloc(length);
  let offset = 0;
  let counter = 0;
  while (offset < length) {
    const block = crypto.createHash('sha256').update(seed + ':' + counter).digest();
    offset += block.copy(out, offset);
    counter += 1;
  }
  return out;
}

// Exit on SIGTERM/SIGINT, and in any case after maxSeconds (a listener left behind by a
// crashed test run must not live on).
function exitWithParent(maxSeconds, cleanup) {
  const stop = () => {
    try {
      if (cleanup) cleanup();
    } finally {
      process.exit(0);
    }
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  setTimeout(stop, maxSeconds * 1000).unref();
}

// A hard deadline for the whole script: no test waits forever on a Node process.
function deadline(seconds, what) {
  const timer = setTimeout(() => fail('timed out after ' + seconds + ' s: ' + what()), seconds * 1000);
  timer.unref();
  return timer;
}

// hyco-ws and hyco-https renew their token every `new moment.duration(1, 'hours')`; tests make
// that interval short so the clients' own renewToken code runs within seconds.  Both packages use
// the one hoisted copy of moment, so patching it here reaches them.
function shortenRenewInterval(ms) {
  const moment = require('moment');
  const duration = moment.duration;
  moment.duration = function patchedDuration(amount, unit) {
    if (amount === 1 && unit === 'hours') return duration(ms, 'milliseconds');
    return duration.apply(this, arguments);
  };
}

// Report the control channel's closes (the clients reconnect silently).
function watchControlChannel(server) {
  server.controlChannel.on('close', (code, reason) => {
    emit({ event: 'control-closed', code: code, reason: String(reason || '') });
  });
}

module.exports = {
  config, emit, fail, Digest, seededBytes, exitWithParent, deadline, shortenRenewInterval,
  watchControlChannel,
};
