'use strict';
// The Node probe against the written protocol (probes/protocol/frames.json, the same
// file the Rust channel tests decode): every example frame decodes to its body and
// re-encodes byte for byte; bad frames are refused without throwing.
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const path = require('node:path');

const probe = require('../heapwarden-probe.cjs');
const { encode, decode, flatten, redirectListen } = probe._frames;
const fixture = JSON.parse(fs.readFileSync(path.join(__dirname, '../../protocol/frames.json'), 'utf8'));

function frameOf(body) {
  const json = Buffer.from(JSON.stringify(body));
  const frame = Buffer.alloc(5 + json.length);
  frame.writeUInt32BE(json.length + 1, 0);
  frame[4] = fixture.version;
  json.copy(frame, 5);
  return frame;
}

test('outside heapwarden the probe is inert', () => {
  assert.strictEqual(probe.claimed, false);
  assert.strictEqual(probe.listenFd, null);
});

test('every example frame decodes and re-encodes identically', () => {
  for (const key of ['worker_to_agent', 'agent_to_worker', 'legacy_worker_to_agent', 'legacy_agent_to_worker']) {
    const frames = fixture[key].map(frameOf);
    const { messages, rest, fatal } = decode(Buffer.concat(frames));
    assert.strictEqual(fatal, null);
    assert.strictEqual(rest.length, 0);
    assert.deepStrictEqual(messages, fixture[key]);
    fixture[key].forEach((body, i) => assert.deepStrictEqual(encode(body), frames[i], key));
  }
});

test('a frame split anywhere waits for the rest', () => {
  const whole = frameOf(fixture.agent_to_worker[0]);
  for (let cut = 0; cut < whole.length; cut += 1) {
    const first = decode(whole.subarray(0, cut));
    assert.strictEqual(first.messages.length, 0);
    const second = decode(Buffer.concat([first.rest, whole.subarray(cut)]));
    assert.deepStrictEqual(second.messages, [fixture.agent_to_worker[0]]);
  }
});

test('malformed bodies and other versions are skipped, oversize is fatal', () => {
  const bad = fixture.invalid_bodies.filter((b) => { try { JSON.parse(b); return false; } catch (_) { return true; } });
  const frames = bad.map((text) => {
    const body = Buffer.from(text);
    const f = Buffer.alloc(5 + body.length);
    f.writeUInt32BE(body.length + 1, 0);
    f[4] = 1;
    body.copy(f, 5);
    return f;
  });
  const otherVersion = frameOf({ type: 'ping', seq: 1 });
  otherVersion[4] = 2;
  const good = frameOf({ type: 'ping', seq: 2 });
  const out = decode(Buffer.concat([...frames, otherVersion, good]));
  assert.deepStrictEqual(out.messages, [{ type: 'ping', seq: 2 }]);
  const huge = Buffer.alloc(8);
  huge.writeUInt32BE(fixture.max_frame + 1, 0);
  assert.match(decode(huge).fatal, /exceeds/);
  assert.strictEqual(encode({ type: 'stats', metrics: 'x'.repeat(fixture.max_frame) }), null);
});

test('random bytes never throw', () => {
  for (let i = 0; i < 2000; i += 1) {
    const bytes = Buffer.from(Array.from({ length: (i * 7) % 300 }, (_, j) => (i * 31 + j * 17) & 0xff));
    decode(bytes);
  }
});

test('a sampling profile flattens to rows with parents', () => {
  const profile = {
    head: { id: 1, selfSize: 0, callFrame: { functionName: '(root)', url: '', lineNumber: -1, columnNumber: -1 }, children: [
      { id: 2, selfSize: 64, callFrame: { functionName: 'leak', url: 'file:///app.js', lineNumber: 9, columnNumber: 2 }, children: [] },
    ] },
    samples: [{ size: 64, nodeId: 2, ordinal: 1 }],
  };
  const flat = flatten(profile);
  assert.strictEqual(flat.format, 'heapwarden-v8-sampling');
  assert.deepStrictEqual(flat.nodes, [[1, 0, '(root)', '', -1, -1, 0], [2, 1, 'leak', 'file:///app.js', 9, 2, 64]]);
  assert.deepStrictEqual(flat.samples, [[2, 64]]);
});

test('listen calls on other ports are left alone when nothing was inherited', () => {
  assert.strictEqual(redirectListen([8080]), null);
  assert.strictEqual(redirectListen([{ port: 8080 }]), null);
});
