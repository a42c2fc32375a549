'use strict';
// A service written for PM2: it listens on $PORT and knows nothing of heapwarden.
const http = require('http');

http.createServer((req, res) => {
  res.setHeader('content-type', 'application/json');
  res.setHeader('connection', 'close');
  res.end(JSON.stringify({
    pid: process.pid,
    nodeEnv: process.env.NODE_ENV,
    audit: process.env.FEATURE_AUDIT,
  }));
}).listen(process.env.PORT);
