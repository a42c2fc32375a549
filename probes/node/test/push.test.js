'use strict';
// The Node probe pushing its stats on the agent's interval, over a real control socket:
// a child `node --require <probe>` gets one end of a connected Unix socket as fd 4 (the
// agent's convention), and this test plays the agent on the other. The probe's hello
// says `push`; after a `report` it pushes `stats` with seq 0 on the interval, still
// answers requests, stays within the interval floor for a hostile `report`, and stops
// on `every_ms` 0.
const test = require('node:test');
const assert = require('node:assert');
const childProcess = require('node:child_process');
const path = require('node:path');

const probe = require('../heapwarden-probe.cjs');
const { socketPair } = require('../test-support/socket-pair.js');
const { encode, decode } = probe._frames;
const PROBE = path.join(__dirname, '../heapwarden-probe.cjs');


// Every message the worker sends, with its arrival time (ms since `start`).
function listen(agent) {
  const got = [];
  const start = performance.now();
  let buf = Buffer.alloc(0);
  agent.on('data', (chunk) => {
    const { messages, rest } = decode(Buffer.concat([buf, chunk]));
    buf = Buffer.from(rest);
    for (const msg of messages) got.push({ at: performance.now() - start, msg });
  });
  return got;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// Waits until `done()` holds, or 10 s (the assertion after it then says what is missing).
async function until(done) {
  const deadline = performance.now() + 10000;
  while (!done() && performance.now() < deadline) await sleep(20);
}
const pushesIn = (got, from, to) => got.filter(({ at, msg }) => at >= from && at < to && msg.type === 'stats' && msg.seq === 0);

test('stats are pushed on the reported interval until told to stop', { timeout: 30000 }, async () => {
  const { agent, worker } = await socketPair('hw-push-');
  const child = childProcess.spawn(process.execPath, ['--require', PROBE, '-e', 'setInterval(() => {}, 1000)'], {
    env: { ...process.env, HEAPWARDEN_CONTROL_FD: '4' },
    stdio: ['ignore', 'ignore', 'inherit', 'ignore', worker],
  });
  worker.destroy();
  try {
    const got = listen(agent);
    await until(() => got.some(({ msg }) => msg.type === 'hello'));
    const hello = got.find(({ msg }) => msg.type === 'hello');
    assert.ok(hello, 'the probe said hello');
    assert.strictEqual(hello.msg.push, true);
    assert.strictEqual(hello.msg.runtime, 'node');

    await sleep(300);
    assert.strictEqual(pushesIn(got, 0, Infinity).length, 0, 'nothing is pushed before a report');

    const base = got.length ? got[got.length - 1].at : 0;
    agent.write(encode({ type: 'report', every_ms: 100, first_ms: 50 }));
    agent.write(encode({ type: 'sample', seq: 9, metrics: false }));
    await sleep(1000);
    const pushed = pushesIn(got, base, Infinity);
    assert.ok(pushed.length >= 4 && pushed.length <= 12, `${pushed.length} pushes in one second at every_ms 100`);
    for (const { msg } of pushed) {
      assert.strictEqual(msg.metrics, null);
      assert.ok(msg.heap && msg.heap.allocated > 0, JSON.stringify(msg));
    }
    assert.ok(got.some(({ msg }) => msg.type === 'stats' && msg.seq === 9), 'a request is still answered');

    // Hostile reports: below the floor is raised to it; a huge or nonsense one never spins.
    const fastFrom = got.length ? got[got.length - 1].at : 0;
    agent.write(encode({ type: 'report', every_ms: 1, first_ms: 0 }));
    await sleep(500);
    const fast = pushesIn(got, fastFrom, Infinity).length;
    assert.ok(fast >= 10 && fast <= 55, `${fast} pushes in 500 ms at the 10 ms floor`);
    for (const report of [{ every_ms: 1e15, first_ms: 1e15 }, { every_ms: 'soon', first_ms: -5 }, { every_ms: 0, first_ms: 0 }]) {
      agent.write(encode({ type: 'report', ...report }));
      await sleep(100);
      const from = got[got.length - 1].at;
      await sleep(300);
      assert.strictEqual(pushesIn(got, from + 1e-9, Infinity).length, 0, `no pushes after ${JSON.stringify(report)}`);
    }
    const before = got.length;
    agent.write(encode({ type: 'ping', seq: 11 }));
    await until(() => got.slice(before).some(({ msg }) => msg.type === 'pong' && msg.seq === 11));
    assert.ok(got.slice(before).some(({ msg }) => msg.type === 'pong' && msg.seq === 11), 'the channel still works');
  } finally {
    child.kill('SIGKILL');
    agent.destroy();
  }
});
