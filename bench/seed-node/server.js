'use strict';
// The Node design heapwarden was seeded with, written the way a Node developer would:
// a `cluster` primary forking one worker per core, each worker a plain `http` server
// reading items cache-aside through L1 `lru-cache` (in-process, per worker) → L2 Redis
// (`ioredis`) → PostgreSQL (`pg`). It answers `GET /items/:id` with the demo's JSON body
// (`{"id","name","value","version"}`, `x-cache: l1|l2|db`) from the demo's own
// `demo_items` table, so bench/demo.sh can run both side by side on the same data.
//
// Configuration (environment): PORT, HOST, WORKERS (default: one per core),
// DATABASE_URL, REDIS_URL, L1_MAX, L1_TTL_MS, L2_TTL_S, PG_POOL_MAX.

const cluster = require('node:cluster');
const http = require('node:http');
const os = require('node:os');

const PORT = Number(process.env.PORT || 8080);
const HOST = process.env.HOST || '127.0.0.1';
const WORKERS = Number(process.env.WORKERS) || os.availableParallelism();

if (cluster.isPrimary) {
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  let listening = 0;
  cluster.on('listening', () => {
    if (++listening === WORKERS) console.log(`All ${WORKERS} workers are listening on ${HOST}:${PORT}.`);
  });
  let stopping = false;
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return;
    console.error(`worker ${worker.process.pid} exited (${signal || code}); starting another`);
    cluster.fork();
  });
  const stop = () => {
    stopping = true;
    for (const worker of Object.values(cluster.workers)) worker.kill('SIGTERM');
    cluster.disconnect(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  runWorker();
}

function runWorker() {
  const { LRUCache } = require('lru-cache');
  const Redis = require('ioredis');
  const pg = require('pg');

  // BIGINT columns as JS numbers (ids and versions stay far below 2^53), as the demo
  // serialises them.
  pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number.parseInt(v, 10));

  const l1 = new LRUCache({
    max: Number(process.env.L1_MAX || 10000),
    ttl: Number(process.env.L1_TTL_MS || 60000),
  });
  const l2TtlSeconds = Number(process.env.L2_TTL_S || 300);
  const redis = new Redis(process.env.REDIS_URL || 'redis://127.0.0.1:6379');
  redis.on('error', (err) => console.error('redis:', err.message));
  const db = new pg.Pool({
    connectionString: process.env.DATABASE_URL || 'postgres://127.0.0.1:5432/test',
    max: Number(process.env.PG_POOL_MAX || 8),
  });
  db.on('error', (err) => console.error('pg:', err.message));

  // The JSON text is what is cached in both layers, so a hit sends it as is.
  async function readItem(id) {
    const cached = l1.get(id);
    if (cached !== undefined) return [cached, 'l1'];
    const key = `seed:item:${id}`;
    const fromRedis = await redis.get(key);
    if (fromRedis !== null) {
      l1.set(id, fromRedis);
      return [fromRedis, 'l2'];
    }
    const { rows } = await db.query(
      'SELECT id, name, value, version FROM demo_items WHERE id = $1 AND NOT deleted',
      [id],
    );
    if (rows.length === 0) return null;
    const body = JSON.stringify(rows[0]);
    await redis.set(key, body, 'EX', l2TtlSeconds);
    l1.set(id, body);
    return [body, 'db'];
  }

  function sendJson(res, status, body, layer) {
    const headers = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
    if (layer) headers['x-cache'] = layer;
    res.writeHead(status, headers);
    res.end(body);
  }

  function sendError(res, status, message) {
    sendJson(res, status, JSON.stringify({ error: message, status }));
  }

  const ITEM = /^\/items\/([^/?]+)$/;

  const server = http.createServer((req, res) => {
    const match = req.method === 'GET' ? ITEM.exec(req.url) : null;
    if (match === null) return sendError(res, 404, 'no such route');
    const id = Number(match[1]);
    if (!/^[-+]?\d+$/.test(match[1]) || !Number.isSafeInteger(id)) {
      return sendError(res, 400, `id must be an integer, got ${JSON.stringify(match[1])}`);
    }
    readItem(id).then(
      (found) => (found ? sendJson(res, 200, found[0], found[1]) : sendError(res, 404, `no item ${id}`)),
      (err) => {
        console.error('GET /items/:id failed:', err.message);
        sendError(res, 500, 'internal error');
      },
    );
  });
  server.listen(PORT, HOST);
  process.on('SIGTERM', () => {
    server.close();
    Promise.allSettled([redis.quit(), db.end()]).then(() => process.exit(0));
    server.closeAllConnections();
  });
}
