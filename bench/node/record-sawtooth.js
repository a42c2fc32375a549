'use strict';
// Records the watched figure of a real Node process whose heap sawtooths between about
// 50 and 200 MiB (a cache that fills and is dropped), for the watchdog's fake-clock test:
// prints heapUsed + external every SAMPLE_MS, one number per line, for COUNT samples.
// Usage: node --max-old-space-size=240 bench/node/record-sawtooth.js \
//          > agent/src/watchdog/testdata/node_sawtooth.txt
// (the heap limit makes V8 collect the dropped cache before the heap passes ~200 MiB)
const SAMPLE_MS = Number(process.env.SAMPLE_MS || 100);
const COUNT = Number(process.env.COUNT || 600);
const MIB = 1024 * 1024;
const floor = [];
const cache = [];
function fill(list, bytes) {
  for (let i = 0; i < bytes / 64; i += 1) list.push({ k: i, v: `v${i}` });
}
fill(floor, 40 * MIB);
// A cache that fills to ~110 MiB (counted at 64 B an entry) over about 2 s and is dropped, again and again; V8
// frees the dropped entries on its own schedule (no forced gc), while the next fill runs.
setInterval(() => {
  if (cache.length * 64 >= 110 * MIB) cache.length = 0;
  fill(cache, 1.5 * MIB);
}, 25);
let n = 0;
const out = [];
setInterval(() => {
  const m = process.memoryUsage();
  out.push(m.heapUsed + m.external);
  n += 1;
  if (n >= COUNT) { process.stdout.write(out.join('\n') + '\n'); process.exit(0); }
}, SAMPLE_MS);
