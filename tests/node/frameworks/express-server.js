'use strict';
// An Express 5 app with the commonest Node leak: every request body is kept in a
// module-level array. It knows nothing of heapwarden (the probe arrives through
// NODE_OPTIONS) and listens on $PORT as it would under PM2.
const express = require('express');

const sessions = [];
const app = express();
app.use(express.json({ limit: '1mb' }));

app.post('/sessions', function rememberSession(req, res) {
  sessions.push({ id: sessions.length + 1, body: req.body, receivedAt: new Date().toISOString() });
  res.json({ id: sessions.length });
});

app.get('/health', (req, res) => res.send('ok'));

app.listen(process.env.PORT);
