'use strict';
// index.d.ts declares exactly the probe's public API: every key the probe exports is a
// member of the declared `Probe` interface, and every declared member is exported. Read
// as text (no TypeScript compiler needed); the probe is inert outside heapwarden.
const test = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const path = require('path');

const dir = path.join(__dirname, '..');
const main = fs.readdirSync(dir).find((f) => /^heapwarden-probe\.c?js$/.test(f));
const probe = require(path.join(dir, main));
const dts = fs.readFileSync(path.join(dir, 'index.d.ts'), 'utf8');

function declaredMembers() {
  const body = dts.slice(dts.indexOf('interface Probe extends EventEmitter {'));
  const members = new Set();
  for (const match of body.matchAll(/^ {4}(?:readonly )?([A-Za-z_]\w*)\??[(:]/gm)) {
    members.add(match[1]);
  }
  for (const inherited of ['on', 'once']) members.delete(inherited);
  return members;
}

test('every exported key is declared in index.d.ts', () => {
  const declared = declaredMembers();
  // `_`-prefixed keys are EventEmitter's own state and the probe's test-only hooks
  // (`_writeSnapshot`), not the public API.
  const exported = Object.keys(probe).filter((k) => !k.startsWith('_'));
  for (const key of exported) assert.ok(declared.has(key), `${key} is exported but not declared`);
});

test('every declared member is exported', () => {
  for (const member of declaredMembers()) {
    assert.ok(member in probe, `${member} is declared but the probe has no ${member}`);
  }
});

test('outside heapwarden the API is inert', () => {
  assert.strictEqual(probe.claimed, false);
  assert.strictEqual(typeof probe.ready, 'function');
  assert.doesNotThrow(() => probe.ready());
  assert.strictEqual(typeof probe.version, 'string');
});

test('the drain events are declared with their payloads', () => {
  assert.match(dts, /on\(event: 'drain', listener: \(event: DrainEvent\) => void\): this;/);
  assert.match(dts, /on\(event: 'drained', listener: \(\) => void\): this;/);
  assert.match(dts, /deadlineMs: number;/);
});
