// The PM2 config the migration example starts from (docs/src/operate/from-pm2.md):
// heapwarden does not read this file; tests/tests/node_pm2.rs checks that its table,
// followed word for word, gives a pool that serves on every worker.
module.exports = {
  apps: [{
    name: 'api',
    script: 'server.js',
    instances: 2,
    exec_mode: 'cluster',
    max_memory_restart: '300M',
    env: { NODE_ENV: 'production', PORT: 3000, FEATURE_AUDIT: true },
    kill_timeout: 1600,
    listen_timeout: 8000,
  }],
};
