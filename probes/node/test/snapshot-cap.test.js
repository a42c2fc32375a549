'use strict';
// The probe's own heap-snapshot writer (issue #16, defect 4): under the agent's byte cap
// it stops, closes its descriptor and removes the file; without one it writes V8's
// snapshot. Either way no descriptor on the file stays open.
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const probe = require('../heapwarden-probe.cjs');

function openOn(file) {
  return fs.readdirSync('/proc/self/fd').filter((fd) => {
    try { return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(file); } catch (_) { return false; }
  });
}

function write(file, cap) {
  return new Promise((resolve) => probe._writeSnapshot(file, cap, resolve));
}

test('past the cap the file is closed and removed', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-snap-'));
  const file = path.join(dir, '1.raw');
  const error = await write(file, 4096);
  assert.match(String(error && error.message), /exceeds the agent's cap of 4096 bytes/);
  assert.strictEqual(fs.existsSync(file), false);
  assert.deepStrictEqual(openOn(file), []);
  fs.rmSync(dir, { recursive: true });
});

test('under the cap the snapshot is written whole', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-snap-'));
  const file = path.join(dir, '2.raw');
  const error = await write(file, 1 << 30);
  assert.strictEqual(error, null);
  const text = fs.readFileSync(file, 'utf8');
  assert.ok(text.startsWith('{"snapshot":'), text.slice(0, 40));
  assert.ok(JSON.parse(text).nodes.length > 0);
  assert.strictEqual(fs.statSync(file).mode & 0o777, 0o600);
  assert.deepStrictEqual(openOn(file), []);
  fs.rmSync(dir, { recursive: true });
});

test('an unwritable path answers with an error and leaves nothing', async () => {
  const error = await write('/nonexistent-dir/x.raw', 0);
  assert.ok(error);
});
