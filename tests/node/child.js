'use strict';
// Forked by app.js: its probe (loaded through the inherited NODE_OPTIONS) must stay inert.
const probe = globalThis[Symbol.for('heapwarden.probe')];
console.log(JSON.stringify({
  level: 'info', msg: 'The forked child reports its probe.', child_pid: process.pid,
  probe_loaded: Boolean(probe), claimed: Boolean(probe && probe.claimed),
  control_fd_env: process.env.HEAPWARDEN_CONTROL_FD !== undefined,
}));
setInterval(() => {}, 1000);
