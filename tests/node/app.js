'use strict';
// A plain Node http service for heapwarden's end-to-end tests; it knows nothing of
// heapwarden (the probe arrives through NODE_OPTIONS). LEAK selects a leak:
//   named     leakInNamedFunction keeps LEAK_BYTES of small objects every 100 ms
//   buffer    leakBuffers keeps LEAK_BYTES of Buffer.alloc every 100 ms
// HOLD_MIB holds that much in live objects from the start; /timing is the probe's cost;
// REPORT_HEAP=1 reports the watched figure on exit.
// FORK_CHILD=1 forks child.js, which reports whether its probe claimed the channel.
const http = require('http');
const path = require('path');

const held = [];
const perTick = Number(process.env.LEAK_BYTES || 0);

function leakInNamedFunction(bytes) {
  for (let i = 0; i < bytes / 128; i += 1) held.push({ id: i, text: `item-${i}-${Date.now()}`, more: [i, i + 1, i + 2] });
}

function leakBuffers(bytes) {
  held.push(Buffer.alloc(bytes, 7));
}

// HOLD_MIB: live JS objects held from the start (the benchmarks' heap sizes).
// (kept reachable from globalThis: a module-scope array nothing reads would be collected)
globalThis.heldForBenchmarks = [];
for (let i = 0; i < Number(process.env.HOLD_MIB || 0) * 1024 * 1024 / 96; i += 1) globalThis.heldForBenchmarks.push({ i, s: `held-${i}` });

if (perTick > 0) {
  const leak = process.env.LEAK === 'buffer' ? leakBuffers : leakInNamedFunction;
  setInterval(() => leak(perTick), 100);
}

// REPORT_HEAP=1: on SIGTERM (a drain ends in one), write heapUsed + external — the figure
// heapwarden watches for Node — as one JSON line, then exit (the overshoot benchmark).
if (process.env.REPORT_HEAP === '1') {
  process.on('SIGTERM', () => {
    const mem = process.memoryUsage();
    process.stderr.write(`${JSON.stringify({ msg: 'node worker exits.', heap_used_plus_external: mem.heapUsed + mem.external })}\n`);
    process.exit(0);
  });
}

const probe = globalThis[Symbol.for('heapwarden.probe')];
// METRICS=1: a prom-client-like registry (anything with metrics()) handed to the probe.
if (process.env.METRICS === '1' && probe) {
  let hits = 0;
  probe.setMetricsRegistry({ metrics: async () => `# HELP app_hits_total Hits.\n# TYPE app_hits_total counter\napp_hits_total ${++hits}\n` });
}
if (process.env.FORK_CHILD === '1') {
  const child = require('child_process').fork(path.join(__dirname, 'child.js'), { stdio: 'inherit' });
  child.on('exit', () => {});
}

const server = http.createServer((req, res) => {
  if (req.url === '/mem') {
    const mem = process.memoryUsage();
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({
      pid: process.pid, heapUsed: mem.heapUsed, heapTotal: mem.heapTotal, external: mem.external,
      arrayBuffers: mem.arrayBuffers, heapLimit: require('v8').getHeapStatistics().heap_size_limit,
      nodeOptions: process.env.NODE_OPTIONS || '', claimed: Boolean(probe && probe.claimed),
      controlFdLeft: process.env.HEAPWARDEN_CONTROL_FD !== undefined,
    }));
    return;
  }
  if (req.url === '/timing') {
    res.end(JSON.stringify(probe ? probe.timing : null));
    return;
  }
  res.end(`ok ${process.pid}\n`);
});
// Under the probe, listen(PORT) is turned into the inherited socket; without it (probe
// "off", the benchmarks' baseline) the app takes fd 3 itself, as socket activation says.
const plain = process.env.LISTEN_FDS === '1' && !(probe && probe.claimed);
server.listen(plain ? { fd: 3 } : Number(process.env.PORT), () => {
  console.log(JSON.stringify({ level: 'info', msg: 'The test app is listening.', app_pid: process.pid }));
});
