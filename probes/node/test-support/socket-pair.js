'use strict';
// Shared by the probe's tests in ../test (kept outside it so `node --test` does not run it): a connected pair of Unix sockets.

const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

// `agent` stays with the test; `worker` goes to the probe (a Channel, or a child's fd 4).
async function socketPair(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const where = path.join(dir, 's');
  const server = net.createServer();
  await new Promise((resolve) => server.listen(where, resolve));
  const accepted = new Promise((resolve) => server.once('connection', resolve));
  const agent = net.connect(where);
  const worker = await accepted;
  server.close();
  fs.rmSync(dir, { recursive: true });
  return { agent, worker };
}

module.exports = { socketPair };
