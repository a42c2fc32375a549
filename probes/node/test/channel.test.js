'use strict';
// The Node probe's channel as a unit, over a real connected pair of Unix sockets: this
// test plays the agent on one end and hands the other to the probe's `Channel`. Hostile
// input (frames split anywhere, bad JSON, another version, a length over the cap, a
// handler that throws) is reported and never thrown; sends past the queue cap are dropped
// and counted; the push timer follows the reported interval on an injected clock.
const test = require('node:test');
const assert = require('node:assert');

const probe = require('../heapwarden-probe.cjs');
const { socketPair } = require('../test-support/socket-pair.js');
const { Channel } = probe[Symbol.for('heapwarden.probe.units')];
const { encode, decode } = probe._frames;

const MAX_FRAME = 4 * 1024 * 1024;


// A channel on the worker end that records what it received, warned and whether it closed.
async function open(options = {}) {
  const { agent, worker } = await socketPair('hw-channel-');
  const seen = { messages: [], warnings: [], closed: false };
  let wake = () => {};
  const changed = () => wake();
  const channel = new Channel(worker, {
    onMessage: options.onMessage || ((msg) => { seen.messages.push(msg); changed(); }),
    onClose: () => { seen.closed = true; changed(); },
    warn: (msg, fields) => { seen.warnings.push({ msg, ...fields }); changed(); },
    clock: options.clock,
  });
  // Resolves once `ready()` holds; each event re-checks, nothing polls on a timer.
  const until = (ready) => new Promise((resolve) => {
    const check = () => { if (ready()) { wake = () => {}; resolve(); } };
    wake = check;
    check();
  });
  return { agent, worker, channel, seen, until };
}

function rawFrame(version, bodyText) {
  const body = Buffer.from(bodyText);
  const frame = Buffer.alloc(5 + body.length);
  frame.writeUInt32BE(body.length + 1, 0);
  frame[4] = version;
  body.copy(frame, 5);
  return frame;
}

test('frames written a byte at a time arrive whole and in order', { timeout: 10000 }, async () => {
  const { agent, worker, seen, until } = await open();
  const sent = [{ type: 'ping', seq: 1 }, { type: 'sample', seq: 2, metrics: true }, { type: 'drain', deadline_ms: 5 }];
  const bytes = Buffer.concat(sent.map(encode));
  for (let i = 0; i < bytes.length; i += 1) {
    agent.write(bytes.subarray(i, i + 1));
    // Let each byte reach the channel as its own read before the next one is written.
    await new Promise((resolve) => setImmediate(resolve));
  }
  await until(() => seen.messages.length === sent.length);
  assert.deepStrictEqual(seen.messages, sent);
  assert.deepStrictEqual(seen.warnings, []);
  agent.destroy();
  worker.destroy();
});

test('bad JSON and other versions are reported and skipped, the channel stays open', { timeout: 10000 }, async () => {
  const { agent, worker, channel, seen, until } = await open();
  agent.write(Buffer.concat([
    rawFrame(1, '{"type": "ping", '),
    rawFrame(2, '{"type":"ping","seq":1}'),
    Buffer.from([0, 0, 0, 0]),
    rawFrame(1, '\u00ff\u0000not json'),
    encode({ type: 'ping', seq: 7 }),
  ]));
  await until(() => seen.messages.length === 1);
  assert.deepStrictEqual(seen.messages, [{ type: 'ping', seq: 7 }]);
  const texts = seen.warnings.map((w) => w.msg);
  assert.strictEqual(texts.filter((t) => /malformed frame/.test(t)).length, 2, JSON.stringify(seen.warnings));
  assert.strictEqual(texts.filter((t) => /another protocol version/.test(t)).length, 2, JSON.stringify(seen.warnings));
  assert.strictEqual(channel.open, true);
  assert.strictEqual(seen.closed, false);
  agent.destroy();
  worker.destroy();
});

test('a length over the cap closes the channel with a report, never a throw', { timeout: 10000 }, async () => {
  const { agent, channel, seen, until } = await open();
  const head = Buffer.alloc(4);
  head.writeUInt32BE(MAX_FRAME + 1, 0);
  // A good frame first, then the undelimitable length split across two writes.
  agent.write(Buffer.concat([encode({ type: 'ping', seq: 1 }), head.subarray(0, 2)]));
  await until(() => seen.messages.length === 1);
  agent.write(Buffer.concat([head.subarray(2), Buffer.from('garbage')]));
  await until(() => seen.closed);
  assert.strictEqual(channel.open, false);
  assert.ok(seen.warnings.some((w) => /cannot be delimited/.test(w.msg) && /exceeds/.test(w.error)), JSON.stringify(seen.warnings));
  assert.strictEqual(channel.send({ type: 'pong', seq: 1 }), false, 'a closed channel sends nothing');
  agent.destroy();
});

test('a handler that throws is reported and the next message still arrives', { timeout: 10000 }, async () => {
  const got = [];
  const { agent, worker, seen, until } = await open({
    onMessage: (msg) => {
      got.push(msg.seq);
      if (msg.seq === 1) throw new Error('the app broke');
    },
  });
  agent.write(Buffer.concat([encode({ type: 'ping', seq: 1 }), encode({ type: 'ping', seq: 2 })]));
  // The second message is handled synchronously after the first in the same read.
  await until(() => seen.warnings.length === 1);
  assert.deepStrictEqual(got, [1, 2]);
  assert.strictEqual(seen.warnings[0].while, 'message');
  assert.strictEqual(seen.warnings[0].error, 'the app broke');
  agent.destroy();
  worker.destroy();
});

test('sends reach the agent; past the queue cap they are dropped and counted', { timeout: 20000 }, async () => {
  const { agent, worker, channel } = await open();
  let buf = Buffer.alloc(0);
  const received = [];
  agent.on('data', (chunk) => {
    const out = decode(Buffer.concat([buf, chunk]));
    buf = Buffer.from(out.rest);
    received.push(...out.messages);
  });
  assert.strictEqual(channel.send({ type: 'hello', pid: 1 }), true);
  assert.strictEqual(channel.send({ type: 'stats', metrics: 'x'.repeat(MAX_FRAME) }), false, 'too big to frame');
  assert.strictEqual(channel.dropped, 1);

  // The agent stops reading: the kernel's buffer fills, then the probe's queue, then drops.
  agent.pause();
  const big = { type: 'stats', metrics: 'y'.repeat(256 * 1024) };
  let sent = 0;
  for (let i = 0; i < 64 && channel.dropped === 1; i += 1) if (channel.send(big)) sent += 1;
  assert.ok(channel.dropped > 1, 'a stalled agent makes the probe drop');
  assert.ok(worker.writableLength <= 1024 * 1024 + 300 * 1024, `queue bounded: ${worker.writableLength} bytes`);

  agent.resume();
  await new Promise((resolve) => {
    const check = () => (received.length === 1 + sent ? resolve() : agent.once('data', () => setImmediate(check)));
    check();
  });
  assert.deepStrictEqual(received[0], { type: 'hello', pid: 1 });
  assert.ok(received.slice(1).every((m) => m.metrics.length === 256 * 1024));
  agent.destroy();
  worker.destroy();
});

// A clock the test advances by hand: timers fire in order of their due time.
function fakeClock() {
  let now = 1000;
  let timers = [];
  return {
    now: () => now,
    // CLOCK_MONOTONIC in µs: the same clock, 5 s ahead of `now`'s origin.
    monotonicUs: () => (now + 5000) * 1000,
    setTimeout: (fn, ms) => { const t = { at: now + ms, fn }; timers.push(t); return t; },
    clearTimeout: (t) => { timers = timers.filter((x) => x !== t); },
    pending: () => timers.length,
    advance(ms) {
      const end = now + ms;
      for (;;) {
        timers.sort((a, b) => a.at - b.at);
        const due = timers[0];
        if (!due || due.at > end) break;
        timers.shift();
        now = Math.max(now, due.at);
        due.fn();
      }
      now = end;
    },
    // The event loop was blocked: time passes, no timer runs.
    stall(ms) { now += ms; },
  };
}

test('a report\'s clock time sets the first push, unless it is off this clock', { timeout: 10000 }, async () => {
  const clock = fakeClock();
  const { agent, channel, seen, until } = await open({ clock });
  const pushes = [];
  const push = () => pushes.push(clock.now() - 1000);
  const nowUs = clock.monotonicUs();

  // The named instant (30 ms on), not first_ms (50), then on its grid.
  channel.schedulePushes(100, 50, push, nowUs + 30000);
  clock.advance(240);
  assert.deepStrictEqual(pushes, [30, 130, 230]);

  // Named 20 ms ago (told late): the next point of that grid, 80 ms from now.
  pushes.length = 0;
  channel.schedulePushes(100, 50, push, clock.monotonicUs() - 20000);
  clock.advance(100);
  assert.deepStrictEqual(pushes, [320]);

  // Further than an interval either way, or not a number: first_ms from now.
  for (const atUs of [clock.monotonicUs() + 100001, clock.monotonicUs() - 100001, 'soon', undefined]) {
    pushes.length = 0;
    const from = clock.now() - 1000;
    channel.schedulePushes(100, 50, push, atUs);
    clock.advance(60);
    assert.deepStrictEqual(pushes, [from + 50], `at_us ${atUs}`);
  }

  agent.destroy();
  await until(() => seen.closed);
});

test('pushes follow the reported interval, skip what fell behind, stop on 0 and on close', { timeout: 10000 }, async () => {
  const clock = fakeClock();
  const { agent, channel, seen, until } = await open({ clock });
  const pushes = [];
  const push = () => pushes.push(clock.now() - 1000);

  channel.schedulePushes(100, 50, push);
  clock.advance(360);
  assert.deepStrictEqual(pushes, [50, 150, 250, 350]);

  // Blocked for 330 ms: one late push, then back on the 100 ms grid (no catch-up burst).
  clock.stall(330);
  clock.advance(200);
  assert.deepStrictEqual(pushes.slice(4), [690, 750, 850]);

  // Hostile intervals: below the floor runs at 10 ms; nonsense and 0 stop.
  pushes.length = 0;
  channel.schedulePushes(1, 0, push);
  clock.advance(100);
  assert.ok(pushes.length >= 10 && pushes.length <= 11, `${pushes.length} pushes in 100 ms at the floor`);
  for (const every of [0, -5, 'soon', Number.NaN]) {
    channel.schedulePushes(every, 0, push);
    assert.strictEqual(clock.pending(), 0, `no timer for every_ms ${every}`);
  }
  channel.schedulePushes(1e15, 1e15, push);
  pushes.length = 0;
  clock.advance(10 * 24 * 3600 * 1000);
  assert.ok(pushes.length <= 5, 'a huge interval is clamped to the timer ceiling, not spun');

  // A push that throws is reported and the chain goes on.
  let calls = 0;
  channel.schedulePushes(100, 0, () => { calls += 1; if (calls === 1) throw new Error('stats failed'); });
  clock.advance(250);
  assert.strictEqual(calls, 3);
  assert.ok(seen.warnings.some((w) => w.while === 'push' && w.error === 'stats failed'));

  agent.destroy();
  await until(() => seen.closed);
  assert.strictEqual(clock.pending(), 0, 'closing the channel stops the pushes');
});

test('the units are a hidden property: an app sees no new key on the API', () => {
  const descriptor = Object.getOwnPropertyDescriptor(probe, Symbol.for('heapwarden.probe.units'));
  assert.strictEqual(descriptor.enumerable, false);
  assert.ok(!Object.keys(probe).includes('Channel') && !Object.keys(probe).includes('Drain'));
  assert.strictEqual(JSON.stringify(Object.keys({ ...probe }).filter((k) => /units/i.test(k))), '[]');
});
