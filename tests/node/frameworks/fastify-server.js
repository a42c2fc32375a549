'use strict';
// A Fastify 5 app with the commonest Node leak: every request body is kept in a
// module-level audit trail. It knows nothing of heapwarden and listens on $PORT.
const fastify = require('fastify')();

const audit = [];

fastify.post('/audit', async function recordAudit(request) {
  audit.push({ at: new Date().toISOString(), ip: request.ip, headers: { ...request.headers }, body: request.body });
  return { n: audit.length };
});

fastify.get('/health', async () => 'ok');

fastify.listen({ port: Number(process.env.PORT), host: '127.0.0.1' });
