'use strict';
// heapwarden-probe.cjs: heapwarden's probe for Node.js workers (Node >= 18, no dependencies).
//
// Loaded by `node --require <this file>` (the agent prepends that to NODE_OPTIONS) or by
// `require('heapwarden-probe')` in the app. Outside heapwarden (no HEAPWARDEN_CONTROL_FD)
// it does nothing and its API is inert. It speaks the control protocol written down in
// heapwarden's README ("Control protocol") on the inherited socket.
//
// What it touches in your process, and nothing else:
// - fd $HEAPWARDEN_CONTROL_FD (4): a Unix socket to the agent, unref'd (never keeps the
//   process alive). Outgoing frames are dropped and counted, never queued without bound.
// - inspector: one in-process session running V8's sampling heap profiler
//   (HeapProfiler.startSampling, one sample per SAMPLING_INTERVAL bytes allocated),
//   restarted once per dump if the app stopped it (stats: sampling_restarts), and not
//   started at all under `node --heap-prof`, which owns that profiler.
// - perf_hooks.monitorEventLoopDelay: one histogram (the event-loop lag figure).
// - timers: one unref'd setTimeout chain, once the agent sets a report interval (the
//   stats are pushed on it instead of being asked for).
// - net.Server.prototype.listen (in the app that claims the channel only, and in its
//   worker threads): a listen on the pool's port ($HEAPWARDEN_LISTEN_PORT) becomes a
//   listen on the inherited socket (fd 3); a server listening there reports `ready` and
//   is closed on `drain`. Threads learn fd and port from worker_threads environment data
//   and report back on one unref'd BroadcastChannel ('heapwarden.probe.listen').
// - child_process.spawn (in launchers only: npm, npx, yarn, pnpm): stdio entries 3 and 4
//   pass the listening socket and the control socket down to the script they run.
// - process.env: after claiming, HEAPWARDEN_* are deleted (and LISTEN_* once the app
//   listened), so the app's own children (child_process, cluster) never touch the channel.
// - files: only at the paths the agent names (profiles and heap snapshots, mode 0600).
// Every handler catches what it throws and logs one JSON line on stderr; nothing it does
// on a sample blocks the event loop for more than a few tens of microseconds.

const VERSION = '0.1.0';
const SINGLETON = Symbol.for('heapwarden.probe');
if (globalThis[SINGLETON]) {
  // Loaded twice (NODE_OPTIONS and the app's own require): one probe, one API.
  module.exports = globalThis[SINGLETON];
  return;
}

const EventEmitter = require('events');
const fs = require('fs');
const net = require('net');
const path = require('path');

const PROTOCOL_VERSION = 1;
const MAX_FRAME = 4 * 1024 * 1024;
const MAX_QUEUED = 1024 * 1024;
const SAMPLING_INTERVAL = positiveInt(process.env.HEAPWARDEN_NODE_SAMPLING_INTERVAL, 32768);
const IDLE_GRACE_MS = 1000;
const LAG_RESOLUTION_MS = 10;
// Bounds of a report interval: no spinning, and setTimeout's own ceiling (2^31-1 ms).
const MIN_REPORT_EVERY_MS = 10;
const MAX_TIMER_MS = 2147483647;
// A stats frame pushed on the report interval carries this seq (requests count from 1).
const PUSHED_SEQ = 0;
const LAUNCHER = /^(npm|npx|yarn|pnpm|pnpx|corepack)(-cli)?(\.c?js)?$/;

const api = new EventEmitter();
let channel = null;
let session = null;
// Times the probe had to restart V8's sampling heap profiler another party stopped.
let samplingRestarts = 0;
let loopDelay = null;
let metricsRegistry = null;
let invalidateHook = null;
let readySent = false;
let listenFd = null;
let listenPort = null;
const servers = new Set();
// worker_threads: the main thread hands the listening socket's fd and the pool's port to
// threads (environment data), and threads report `listening` back (a broadcast
// channel), so an app that listens inside a worker thread is redirected too.
const THREAD_KEY = 'heapwarden.probe.listen';
let threadChannel = null;
// What the probe cost the event loop (microseconds), for the benchmarks.
const timing = { maxSampleMicros: 0, samples: 0, recentSampleMicros: [], lastDumpBlockMicros: 0, lastSnapshotMicros: 0 };

function positiveInt(text, fallback) {
  const n = Number(text);
  return Number.isInteger(n) && n > 0 ? n : fallback;
}

function report(msg, fields) {
  try {
    process.stderr.write(JSON.stringify({ level: 'warn', msg, probe: 'heapwarden', ...fields }) + '\n');
  } catch (_) { /* stderr gone: nothing left to tell */ }
}

// Runs `fn`, reporting instead of throwing into the app.
function guard(what, fn) {
  return function guarded(...args) {
    try {
      return fn.apply(this, args);
    } catch (error) {
      report('The heapwarden probe caught an error.', { while: what, error: String(error && error.message) });
      return undefined;
    }
  };
}

// ---- framing: 4-byte big-endian length N, version byte, N-1 bytes of JSON ----

function encode(msg) {
  const body = Buffer.from(JSON.stringify(msg));
  if (body.length + 1 > MAX_FRAME) return null;
  const frame = Buffer.allocUnsafe(5 + body.length);
  frame.writeUInt32BE(body.length + 1, 0);
  frame[4] = PROTOCOL_VERSION;
  body.copy(frame, 5);
  return frame;
}

// Consumes whole frames from `buf`; returns { messages, rest, fatal }. Skipped frames
// (another version, bad JSON) are told to `warn`.
function decode(buf, warn = report) {
  const messages = [];
  let offset = 0;
  while (buf.length - offset >= 4) {
    const len = buf.readUInt32BE(offset);
    if (len > MAX_FRAME) return { messages, rest: Buffer.alloc(0), fatal: `frame length ${len} exceeds ${MAX_FRAME}` };
    if (buf.length - offset < 4 + len) break;
    const payload = buf.subarray(offset + 4, offset + 4 + len);
    offset += 4 + len;
    if (len === 0 || payload[0] !== PROTOCOL_VERSION) {
      warn('The heapwarden probe ignored a frame of another protocol version.', { version: len ? payload[0] : null });
      continue;
    }
    try {
      messages.push(JSON.parse(payload.subarray(1).toString('utf8')));
    } catch (error) {
      warn('The heapwarden probe ignored a malformed frame.', { error: String(error.message) });
    }
  }
  return { messages, rest: buf.subarray(offset), fatal: null };
}

// ---- the channel: one socket to the agent, frames in and out, and the push timer ----
//
// Takes its dependencies so a test can drive it over a socket pair: `socket` (a duplex
// stream: the inherited fd here), `onMessage(msg)` for each decoded message, `onClose()`
// once the socket closed, `warn(msg, fields)` for what it refused or caught, and `clock`
// ({ now, setTimeout, clearTimeout }) for the push timer. Nothing the agent sends is
// thrown into the app: bad frames are skipped and reported, an undelimitable one (length
// over MAX_FRAME) closes the channel, a throwing handler is reported.
class Channel {
  constructor(socket, { onMessage, onClose, warn = report, clock = REAL_CLOCK }) {
    this.socket = socket;
    this.warn = warn;
    this.clock = clock;
    this.onMessage = onMessage;
    // Frames dropped rather than queued past MAX_QUEUED (or too big to frame).
    this.dropped = 0;
    this.pending = Buffer.alloc(0);
    this.pushTimer = null;
    socket.on('data', (chunk) => this.caught('read', () => this.receive(chunk)));
    socket.on('error', (error) => warn('The control channel failed.', { error: String(error && error.message) }));
    socket.on('close', () => this.caught('close', () => {
      this.stopPushes();
      onClose();
    }));
  }

  get open() {
    return !this.socket.destroyed;
  }

  caught(what, fn) {
    try {
      return fn();
    } catch (error) {
      this.warn('The heapwarden probe caught an error.', { while: what, error: String(error && error.message) });
      return undefined;
    }
  }

  receive(chunk) {
    const { messages, rest, fatal } = decode(this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk, this.warn);
    this.pending = Buffer.from(rest);
    for (const msg of messages) this.caught('message', () => this.onMessage(msg));
    if (fatal) {
      this.warn('The agent sent a frame that cannot be delimited; closing the channel.', { error: fatal });
      this.socket.destroy();
    }
  }

  // Writes one frame; false when the channel is closed or the frame was dropped.
  send(msg) {
    if (!this.open) return false;
    const frame = encode(msg);
    if (!frame || this.socket.writableLength > MAX_QUEUED) {
      this.dropped += 1;
      return false;
    }
    this.socket.write(frame);
    return true;
  }

  // Runs `push` at `atUs` (the host's CLOCK_MONOTONIC in microseconds, the same instant
  // for every worker) when that is within one interval of this process's clock, else
  // `firstMs` from now; then every `everyMs` (0 or nonsense stops). Each push time is
  // counted from the first, not from the previous push, so the probe stays in step with
  // the agent's rounds; a push that fell behind is not repeated to catch up.
  schedulePushes(everyMs, firstMs, push, atUs) {
    this.stopPushes();
    const every = Number(everyMs);
    if (!Number.isFinite(every) || every <= 0) return;
    const period = Math.min(Math.max(MIN_REPORT_EVERY_MS, every), MAX_TIMER_MS);
    const clock = this.clock;
    const first = untilGrid(atUs, period, clock.monotonicUs()) ?? Math.min(Math.max(0, Number(firstMs) || 0), period);
    let next = clock.now() + first;
    const arm = () => {
      if (!this.open) return;
      this.pushTimer = clock.setTimeout(fire, Math.max(1, Math.min(MAX_TIMER_MS, Math.ceil(next - clock.now()))));
    };
    // libuv's timers have millisecond resolution and may fire up to one early. A push
    // that throws is reported and the chain goes on.
    const fire = () => {
      const now = clock.now();
      if (now >= next - 1) {
        this.caught('push', push);
        next += period * Math.max(1, Math.floor((now - next) / period) + 1);
      }
      arm();
    };
    arm();
  }

  stopPushes() {
    if (this.pushTimer) this.clock.clearTimeout(this.pushTimer);
    this.pushTimer = null;
  }
}

// Milliseconds from `nowUs` until the first of `atUs + k * periodMs` not in the past, when
// `atUs` is within one period of `nowUs` either way; null otherwise (an older agent sent
// none, or this process reads another clock), and the caller counts `first_ms`.
function untilGrid(atUs, periodMs, nowUs) {
  const at = Number(atUs);
  if (atUs == null || !Number.isFinite(at) || !Number.isFinite(nowUs)) return null;
  const periodUs = periodMs * 1000;
  const ahead = at - nowUs;
  if (ahead > periodUs || ahead < -periodUs) return null;
  return (ahead >= 0 ? ahead : periodUs + ahead) / 1000;
}

// Unref'd timers: the push chain never keeps the process alive.
const REAL_CLOCK = {
  now: () => require('perf_hooks').performance.now(),
  // CLOCK_MONOTONIC, the clock the agent names push times on (libuv's hrtime reads it).
  monotonicUs: () => Number(process.hrtime.bigint() / 1000n),
  setTimeout: (fn, ms) => {
    const timer = setTimeout(fn, ms);
    timer.unref();
    return timer;
  },
  clearTimeout: (timer) => clearTimeout(timer),
};

function send(msg) {
  if (channel) channel.send(msg);
}

// ---- answers to the agent ----

function onMessage(msg) {
  switch (msg && msg.type) {
    case 'sample': return sample(msg.seq, msg.metrics === true);
    case 'dump': return msg.kind === 'snapshot' ? snapshot(msg.seq, String(msg.path), Number(msg.max_bytes) || 0) : dumpProfile(msg.seq, String(msg.path));
    case 'drain': return drain(Number(msg.deadline_ms) || 30000);
    case 'ping': return send({ type: 'pong', seq: msg.seq });
    case 'invalidate': return invalidate(msg);
    case 'invalidate_done': return undefined;
    case 'report': return channel.schedulePushes(msg.every_ms, msg.first_ms, () => sample(PUSHED_SEQ, false), msg.at_us);
    default: return report('The heapwarden probe ignored an unknown message.', { type: String(msg && msg.type) });
  }
}

function sample(seq, withMetrics) {
  const started = process.hrtime.bigint();
  const mem = process.memoryUsage();
  // The longest event-loop delay since the last sample, in seconds (the histogram
  // measures whole timer periods, so the resolution itself is taken off).
  const lag = loopDelay && loopDelay.count > 0 ? Math.max(0, loopDelay.max / 1e9 - LAG_RESOLUTION_MS / 1e3) : null;
  if (loopDelay) loopDelay.reset();
  const msg = {
    type: 'stats', seq, heap: { allocated: mem.heapUsed, active: mem.heapTotal },
    runtime_lag_seconds: lag, dropped: channel ? channel.dropped : 0, metrics: null,
    external_bytes: mem.external, array_buffers_bytes: mem.arrayBuffers,
    sampling_restarts: samplingRestarts,
  };
  const took = Number(process.hrtime.bigint() - started) / 1000;
  timing.samples += 1;
  if (took > timing.maxSampleMicros) timing.maxSampleMicros = took;
  timing.recentSampleMicros[timing.samples % 256] = took;
  if (!withMetrics || !metricsRegistry) return send(msg);
  // prom-client >= 13 answers with a promise; older ones with a string.
  return Promise.resolve()
    .then(() => metricsRegistry.metrics())
    .then((text) => { msg.metrics = typeof text === 'string' ? text : null; })
    .catch((error) => report('The app\'s metrics registry failed.', { error: String(error && error.message) }))
    .then(() => send(msg));
}

function written(seq, file, started, format, error) {
  const micros = Number(process.hrtime.bigint() - started) / 1000;
  send({ type: 'profile_written', seq, path: file, error: error ? String(error.message || error) : null, micros: Math.round(micros), format });
}

function dumpProfile(seq, file) {
  const started = process.hrtime.bigint();
  if (heapProfFlag()) return written(seq, file, started, 'v8-sampling', 'node --heap-prof owns the sampling heap profiler; the probe stands aside');
  if (!session) return written(seq, file, started, 'v8-sampling', 'the sampling heap profiler is not running');
  const take = (retried) => session.post('HeapProfiler.getSamplingProfile', guard('dump', (error, result) => {
    if (error && !retried) {
      // The app (an APM agent, DevTools) stopped V8's sampling profiler under us:
      // start it again and retry once. The retried profile only holds what was
      // allocated since, which beats failing every dump from now on.
      samplingRestarts += 1;
      report('The sampling heap profiler was stopped by someone else; the probe restarted it.', { restarts: samplingRestarts, error: String(error.message) });
      return session.post('HeapProfiler.startSampling', { samplingInterval: SAMPLING_INTERVAL }, guard('restart sampling', (again) => {
        if (again) return written(seq, file, started, 'v8-sampling', again);
        return take(true);
      }));
    }
    if (error) return written(seq, file, started, 'v8-sampling', error);
    const body = JSON.stringify(flatten(result.profile));
    timing.lastDumpBlockMicros = Number(process.hrtime.bigint() - started) / 1000;
    return fs.writeFile(file, body, { mode: 0o600, flag: 'wx' }, (err) => written(seq, file, started, 'v8-sampling', err));
  }));
  return take(false);
}

// `node --heap-prof` (on the command line or in NODE_OPTIONS) writes its own profile
// from V8's sampling heap profiler at exit; the probe must not start or stop it then.
function heapProfFlag() {
  const flags = process.execArgv.concat(String(process.env.NODE_OPTIONS || '').split(/\s+/));
  return flags.some((flag) => flag === '--heap-prof' || flag.startsWith('--heap-prof='));
}

// V8's tree of call frames → flat rows (nested JSON would be as deep as the deepest
// stack): nodes [id, parent, functionName, url, line, column, selfSize], samples
// [nodeId, size]. Lines and columns stay 0-based, as V8 gives them.
function flatten(profile) {
  const nodes = [];
  const stack = [[profile.head, 0]];
  while (stack.length) {
    const [node, parent] = stack.pop();
    const f = node.callFrame;
    nodes.push([node.id, parent, f.functionName, f.url, f.lineNumber, f.columnNumber, node.selfSize]);
    for (const child of node.children) stack.push([child, node.id]);
  }
  const samples = (profile.samples || []).map((s) => [s.nodeId, s.size]);
  return { format: 'heapwarden-v8-sampling', version: 1, pid: process.pid, sampling_interval: SAMPLING_INTERVAL, nodes, samples };
}

// The probe writes the snapshot itself (not v8.writeHeapSnapshot, which on ENOSPC keeps
// the deleted file open and the disk full until the worker exits): chunk by chunk into
// a descriptor it owns, never past the agent's byte cap (`max_bytes`, 0 = none); on any
// error it closes the descriptor and removes the file before answering.
function snapshot(seq, file, maxBytes) {
  const started = process.hrtime.bigint();
  writeSnapshot(file, maxBytes, (error) => {
    if (!error) timing.lastSnapshotMicros = Number(process.hrtime.bigint() - started) / 1000;
    written(seq, file, started, 'v8-snapshot', error);
  });
}

function writeSnapshot(file, maxBytes, done) {
  let fd = -1;
  let bytes = 0;
  let finished = false;
  const finish = (error) => {
    if (finished) return;
    finished = true;
    if (fd >= 0) {
      try { fs.closeSync(fd); } catch (_) { /* already closed */ }
      fd = -1;
    }
    if (error) {
      try { fs.unlinkSync(file); } catch (_) { /* never created */ }
    }
    done(error);
  };
  try {
    fd = fs.openSync(file, 'wx', 0o600);
    const stream = require('v8').getHeapSnapshot();
    stream.on('data', (chunk) => {
      if (finished) return;
      bytes += chunk.length;
      if (maxBytes > 0 && bytes > maxBytes) {
        stream.destroy();
        finish(new Error(`the snapshot exceeds the agent's cap of ${maxBytes} bytes`));
        return;
      }
      try {
        fs.writeSync(fd, chunk);
      } catch (error) {
        stream.destroy();
        finish(error);
      }
    });
    stream.on('error', (error) => finish(error));
    stream.on('end', () => finish(null));
  } catch (error) {
    finish(error);
  }
}

function invalidate(msg) {
  const done = () => send({ type: 'invalidated', seq: msg.seq });
  if (!invalidateHook) return done();
  return Promise.resolve()
    .then(() => invalidateHook(String(msg.key), msg.version))
    .catch((error) => report('The app\'s invalidation hook failed.', { error: String(error && error.message) }))
    .then(done);
}

// ---- lifecycle: ready on listen of the inherited socket, drain closes those servers ----

function markReady() {
  if (readySent || !channel) return;
  readySent = true;
  send({ type: 'ready' });
  // The app has its socket: LISTEN_* would only mislead its children.
  for (const key of ['LISTEN_FDS', 'LISTEN_PID', 'LISTEN_FDNAMES']) delete process.env[key];
}

// listen(port[, host][, backlog][, cb]) or listen({port|fd, ...}[, cb]) on the pool's
// port or on fd 3 → listen({fd: 3}) with the same callback; anything else: untouched.
function redirectListen(args) {
  const first = args[0];
  const cb = typeof args[args.length - 1] === 'function' ? [args[args.length - 1]] : [];
  if (first && typeof first === 'object' && !Array.isArray(first)) {
    if (first.fd === listenFd) return args;
    if (first.port !== undefined && Number(first.port) === listenPort && first.path === undefined) return [{ fd: listenFd }, ...cb];
    return null;
  }
  if ((typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) && Number(first) === listenPort) {
    return [{ fd: listenFd }, ...cb];
  }
  return null;
}

// An app that listens on a TCP port of its own rather than the pool's (`http-server -p
// 8081` under a pool on 8080) cannot share the agent's socket: its second worker fails
// with EADDRINUSE. Said once, with both ports, before that happens.
let otherPortWarned = false;
function warnOtherPort(args) {
  const first = args[0];
  const port = first && typeof first === 'object' ? first.port : first;
  if (otherPortWarned || port === undefined || port === null || (first && first.path !== undefined)) return;
  const number = Number(port);
  if (!Number.isInteger(number) || number <= 0 || number === listenPort) return;
  otherPortWarned = true;
  report('The app listens on its own port, not the pool\'s: only one worker can bind it (the others fail with EADDRINUSE) and the pool\'s socket goes unused. Make it listen on process.env.PORT, or set pool.listen to its port.', { app_port: number, pool_port: listenPort });
}

function patchListen() {
  const listen = net.Server.prototype.listen;
  net.Server.prototype.listen = function heapwardenListen(...args) {
    let use = args;
    try {
      const redirected = listenFd === null || drainer.started ? null : redirectListen(args);
      if (redirected) {
        use = redirected;
        track(this);
      } else if (listenFd !== null) {
        warnOtherPort(args);
      }
    } catch (error) {
      report('The heapwarden probe could not inspect a listen call.', { error: String(error.message) });
    }
    return listen.apply(this, use);
  };
}

function track(server) {
  servers.add(server);
  server.once('listening', guard('listening', () => {
    if (require('worker_threads').isMainThread) return markReady();
    return threadChannel && threadChannel.postMessage({ type: 'listening' });
  }));
  server.on('connection', (socket) => {
    server.heapwardenConnections = server.heapwardenConnections || new Set();
    server.heapwardenConnections.add(socket);
    socket.once('close', () => server.heapwardenConnections.delete(socket));
  });
}

// Stops accepting on the servers listening on the inherited socket, lets in-flight
// requests finish without keeping their connections alive, then hands over to the app.
// Takes its dependencies so a test can drive it with fake servers: `servers` (a Set of
// net.Server-likes, tracked on listen), `events` (the API: emits 'drain' {deadlineMs},
// then 'drained' once every server closed), `close(server, cb)` (stop accepting),
// `terminate()` (when the app hooked no 'drain': SIGTERM to itself, so its own handlers
// run), `every(fn, ms)` / `cancel(timer)` (the idle-connection sweep), `toThreads()`
// (tell worker threads), `warn`. A second request does nothing.
class Drain {
  constructor({ servers, events, close = closeServer, terminate = sigterm, every = unrefInterval, cancel = clearInterval, toThreads = () => {}, warn = report }) {
    Object.assign(this, { servers, events, close, terminate, every, cancel, toThreads, warn });
    this.started = false;
  }

  caught(what, fn) {
    return (...args) => {
      try {
        return fn(...args);
      } catch (error) {
        this.warn('The heapwarden probe caught an error.', { while: what, error: String(error && error.message) });
        return undefined;
      }
    };
  }

  start(deadlineMs) {
    if (this.started) return;
    this.started = true;
    this.caught('drain-threads', this.toThreads)();
    let open = this.servers.size;
    const closed = this.caught('drain-closed', () => {
      open -= 1;
      if (open > 0) return;
      // A listener that throws must not keep the process from terminating.
      this.caught('drained', () => this.events.emit('drained'))();
      if (this.events.listenerCount('drain') === 0) this.terminate();
    });
    for (const server of this.servers) {
      this.close(server, closed);
      server.prependListener('request', (req, res) => { res.shouldKeepAlive = false; });
      for (const socket of server.heapwardenConnections || []) {
        const res = socket._httpMessage;
        if (res && !res.headersSent) res.shouldKeepAlive = false;
      }
      const sweep = this.every(this.caught('drain-sweep', () => {
        if (typeof server.closeIdleConnections === 'function') server.closeIdleConnections();
      }), IDLE_GRACE_MS);
      server.once('close', () => this.cancel(sweep));
    }
    this.caught('drain', () => this.events.emit('drain', { deadlineMs }))();
    if (this.servers.size === 0 && this.events.listenerCount('drain') === 0) this.terminate();
  }
}

// net's close stops accepting without http's immediate close of idle keep-alive
// connections, which races a client's next request on them.
function closeServer(server, cb) {
  net.Server.prototype.close.call(server, cb);
}

function sigterm() {
  process.kill(process.pid, 'SIGTERM');
}

function unrefInterval(fn, ms) {
  const timer = setInterval(fn, ms);
  timer.unref();
  return timer;
}

const drainer = new Drain({
  servers,
  events: api,
  toThreads: () => {
    if (threadChannel && require('worker_threads').isMainThread) threadChannel.postMessage({ type: 'drain' });
  },
});

function drain(deadlineMs) {
  drainer.start(deadlineMs);
}

// ---- claiming the channel: exactly one process per worker talks on it ----

function isLauncher() {
  const script = process.argv[1] ? path.basename(process.argv[1]) : '';
  return LAUNCHER.test(script);
}

// stdio entries 3 and 4 hand the sockets to the script a launcher runs.
function passFdsDown(controlFd, inheritedListenFd) {
  const childProcess = require('child_process');
  const spawn = childProcess.spawn;
  childProcess.spawn = function heapwardenSpawn(file, args, options) {
    try {
      let opts = options;
      let rest = args;
      if (!Array.isArray(args)) { opts = args; rest = []; }
      opts = { ...(opts || {}) };
      const stdio = typeof opts.stdio === 'string' ? [opts.stdio, opts.stdio, opts.stdio] : [...(opts.stdio || ['pipe', 'pipe', 'pipe'])];
      while (stdio.length < 3) stdio.push('pipe');
      if (stdio[3] === undefined && stdio[4] === undefined) {
        stdio[3] = inheritedListenFd === null ? 'ignore' : inheritedListenFd;
        stdio[4] = controlFd;
        opts.stdio = stdio;
        return spawn.call(this, file, rest, opts);
      }
    } catch (error) {
      report('The heapwarden probe could not pass its sockets to a child.', { error: String(error.message) });
    }
    return spawn.apply(this, arguments);
  };
}

function inheritedSocket(fd, expectedIno) {
  try {
    const st = fs.fstatSync(fd);
    if (!st.isSocket()) return 'is not a socket';
    if (expectedIno && String(st.ino) !== expectedIno) return `is socket inode ${st.ino}, not ${expectedIno}`;
    return null;
  } catch (error) {
    return `cannot be examined (${error.code || error.message})`;
  }
}

function startProfiling() {
  loopDelay = require('perf_hooks').monitorEventLoopDelay({ resolution: LAG_RESOLUTION_MS });
  loopDelay.enable();
  if (heapProfFlag()) {
    report('The app runs with node --heap-prof; the probe leaves the sampling heap profiler to it (no heap profiles from the probe).', {});
    return;
  }
  const inspector = require('inspector');
  session = new inspector.Session();
  session.connect();
  session.post('HeapProfiler.startSampling', { samplingInterval: SAMPLING_INTERVAL }, (error) => {
    if (error) {
      report('The sampling heap profiler did not start.', { error: String(error.message) });
      session = null;
    }
  });
}

// In a worker thread of the app that claimed: redirect its listen calls like the main
// thread's, report `listening` to the main thread, stop accepting on its drain.
function joinFromThread() {
  const threads = require('worker_threads');
  const shared = typeof threads.getEnvironmentData === 'function' ? threads.getEnvironmentData(THREAD_KEY) : undefined;
  if (!shared || shared.fd === null || shared.fd === undefined) return;
  listenFd = shared.fd;
  listenPort = shared.port;
  threadChannel = new threads.BroadcastChannel(THREAD_KEY);
  if (typeof threadChannel.unref === 'function') threadChannel.unref();
  threadChannel.onmessage = guard('thread message', (event) => {
    if (!event.data || event.data.type !== 'drain' || drainer.started) return;
    drainer.started = true;
    for (const server of servers) net.Server.prototype.close.call(server);
  });
  patchListen();
}

function shareWithThreads() {
  const threads = require('worker_threads');
  if (listenFd === null || typeof threads.setEnvironmentData !== 'function') return;
  threads.setEnvironmentData(THREAD_KEY, { fd: listenFd, port: listenPort });
  threadChannel = new threads.BroadcastChannel(THREAD_KEY);
  if (typeof threadChannel.unref === 'function') threadChannel.unref();
  threadChannel.onmessage = guard('thread message', (event) => {
    if (event.data && event.data.type === 'listening') markReady();
  });
}

function claim() {
  const env = process.env;
  const fdText = env.HEAPWARDEN_CONTROL_FD;
  if (!require('worker_threads').isMainThread) {
    joinFromThread();
    return;
  }
  if (fdText === undefined) return;
  const fd = Number(fdText);
  const inheritedListen = env.LISTEN_FDS && Number(env.LISTEN_FDS) >= 1 ? 3 : null;
  if (isLauncher()) {
    passFdsDown(fd, inheritedListen);
    return;
  }
  const wrong = Number.isInteger(fd) && fd >= 0 ? inheritedSocket(fd, env.HEAPWARDEN_CONTROL_INO) : 'is not a number';
  if (wrong) {
    report('The heapwarden probe did not claim the control channel.', { fd: fdText, reason: `fd ${fdText} ${wrong}` });
    return;
  }
  listenFd = inheritedListen;
  listenPort = positiveInt(env.HEAPWARDEN_LISTEN_PORT, null);
  for (const key of Object.keys(env)) {
    if (key.startsWith('HEAPWARDEN_') && key !== 'HEAPWARDEN_WORKER_SLOT') delete env[key];
  }
  const socket = new net.Socket({ fd, readable: true, writable: true });
  socket.unref();
  // The agent went away: drain like a Drain message would.
  channel = new Channel(socket, { onMessage, onClose: () => drain(0) });
  send({ type: 'hello', pid: process.pid, probe_version: VERSION, runtime: 'node', push: true });
  startProfiling();
  patchListen();
  shareWithThreads();
}

Object.assign(api, {
  version: VERSION,
  // Tell the agent the app can take traffic (when it does not listen on fd 3 itself).
  ready: guard('ready', markReady),
  // Hand over a prom-client Registry (anything with `metrics()`): merged into /metrics.
  setMetricsRegistry: guard('setMetricsRegistry', (registry) => { metricsRegistry = registry; }),
  // fn(key, version) runs when another worker invalidated `key`.
  onInvalidate: guard('onInvalidate', (fn) => { invalidateHook = fn; }),
  timing,
  // For tests of the protocol: the same framing the channel uses.
  _frames: { encode, decode, flatten, redirectListen },
  // For tests of the snapshot writer: (file, maxBytes, done(error)).
  _writeSnapshot: writeSnapshot,
});
// Getters, not values: Object.assign would copy them once.
Object.defineProperty(api, 'claimed', { get: () => channel !== null, enumerable: true });
Object.defineProperty(api, 'listenFd', { get: () => listenFd, enumerable: true });
// For the probe's unit tests (test/channel.test.js, test/drain.test.js): the channel and
// the drain as classes that take their socket, timers and servers. Symbol-keyed and not
// enumerable, so an app sees no new key on the API.
Object.defineProperty(api, Symbol.for('heapwarden.probe.units'), { value: Object.freeze({ Channel, Drain }), enumerable: false });
globalThis[SINGLETON] = api;
module.exports = api;
guard('claim', claim)();
