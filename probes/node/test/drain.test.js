'use strict';
// The Node probe's drain as a unit, with fake servers: every server stops accepting,
// in-flight responses and later requests lose keep-alive, idle connections are swept
// until the server closes, 'drain' carries the deadline, 'drained' follows the last close,
// and the process is sent SIGTERM only when the app hooked no 'drain'. A second drain
// request does nothing; what throws is reported, never thrown into the app.
const test = require('node:test');
const assert = require('node:assert');
const EventEmitter = require('node:events');

const probe = require('../heapwarden-probe.cjs');
const { Drain } = probe[Symbol.for('heapwarden.probe.units')];

// A server as the probe sees one: an emitter with tracked connections and
// closeIdleConnections (http.Server's), counting its calls.
function fakeServer(connections = []) {
  const server = new EventEmitter();
  server.heapwardenConnections = new Set(connections);
  server.idleSweeps = 0;
  server.closeIdleConnections = () => { server.idleSweeps += 1; };
  return server;
}

// A drain over `servers` whose close, terminate and timers the test drives by hand.
function drainOf(servers, extra = {}) {
  const log = { closing: [], terminated: 0, timers: [], cancelled: [], warnings: [], threads: 0 };
  const events = new EventEmitter();
  const drain = new Drain({
    servers: new Set(servers),
    events,
    close: (server, cb) => log.closing.push({ server, cb }),
    terminate: () => { log.terminated += 1; },
    every: (fn, ms) => { const t = { fn, ms }; log.timers.push(t); return t; },
    cancel: (t) => log.cancelled.push(t),
    toThreads: () => { log.threads += 1; },
    warn: (msg, fields) => log.warnings.push({ msg, ...fields }),
    ...extra,
  });
  return { drain, events, log };
}

test('servers stop accepting, lose keep-alive, and the app hears drain then drained', () => {
  const inFlight = { _httpMessage: { headersSent: false, shouldKeepAlive: true } };
  const answered = { _httpMessage: { headersSent: true, shouldKeepAlive: true } };
  const a = fakeServer([inFlight, answered]);
  const b = fakeServer();
  const { drain, events, log } = drainOf([a, b]);
  const heard = [];
  events.on('drain', (event) => heard.push(['drain', event.deadlineMs]));
  events.on('drained', () => heard.push(['drained']));

  drain.start(1234);
  assert.deepStrictEqual(log.closing.map((c) => c.server), [a, b]);
  assert.deepStrictEqual(heard, [['drain', 1234]]);
  assert.strictEqual(log.threads, 1, 'worker threads are told');
  assert.strictEqual(inFlight._httpMessage.shouldKeepAlive, false, 'the in-flight response closes its connection');
  assert.strictEqual(answered._httpMessage.shouldKeepAlive, true, 'a response already sent is left alone');

  // A request arriving after the drain is answered without keep-alive, before the app sees it.
  const res = { shouldKeepAlive: true };
  let appSaw = null;
  a.on('request', (req, r) => { appSaw = r.shouldKeepAlive; });
  a.emit('request', {}, res);
  assert.strictEqual(appSaw, false);

  // Idle connections are swept on a timer per server until that server closes.
  assert.strictEqual(log.timers.length, 2);
  log.timers[0].fn();
  log.timers[0].fn();
  assert.strictEqual(a.idleSweeps, 2);
  a.emit('close');
  assert.deepStrictEqual(log.cancelled, [log.timers[0]]);

  log.closing[0].cb();
  assert.deepStrictEqual(heard.length, 1, 'drained waits for the last server');
  log.closing[1].cb();
  assert.deepStrictEqual(heard, [['drain', 1234], ['drained']]);
  assert.strictEqual(log.terminated, 0, 'the app hooked drain: no SIGTERM');

  drain.start(1);
  assert.strictEqual(log.closing.length, 2, 'a second drain does nothing');
  assert.strictEqual(heard.length, 2);
});

test('without a drain listener the process is terminated once the servers closed', () => {
  const { drain, log } = drainOf([fakeServer()]);
  drain.start(0);
  assert.strictEqual(log.terminated, 0, 'not before the server closed');
  log.closing[0].cb();
  assert.strictEqual(log.terminated, 1);
});

test('with no servers and no listener the process is terminated at once', () => {
  const { drain, events, log } = drainOf([]);
  let drained = false;
  events.on('drained', () => { drained = true; });
  drain.start(0);
  assert.strictEqual(log.terminated, 1);
  assert.strictEqual(drained, false, 'drained is about servers; there were none');
});

test('a throwing listener, sweep or thread notice is reported, not thrown', () => {
  const server = fakeServer();
  server.closeIdleConnections = () => { throw new Error('sweep broke'); };
  const { drain, events, log } = drainOf([server], { toThreads: () => { throw new Error('threads gone'); } });
  events.on('drained', () => { throw new Error('app broke'); });
  assert.doesNotThrow(() => drain.start(10));
  assert.doesNotThrow(() => log.timers[0].fn());
  assert.doesNotThrow(() => log.closing[0].cb());
  assert.deepStrictEqual(log.warnings.map((w) => [w.while, w.error]), [
    ['drain-threads', 'threads gone'], ['drain-sweep', 'sweep broke'], ['drained', 'app broke'],
  ]);
  assert.strictEqual(log.terminated, 1, 'no drain listener: terminated after all');
});
