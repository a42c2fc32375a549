'use strict';
// A hostile "Node worker" for heapwarden's end-to-end tests: it speaks the control
// protocol by hand on fd 4 (no probe) and answers dumps with bad evidence, in turn:
// a huge profile file, a file that is not a profile, a snapshot that is not one; and
// sends a malformed frame and one of another version along the way.
const fs = require('fs');
const net = require('net');

const sock = new net.Socket({ fd: 4, readable: true, writable: true });
function frame(obj, version = 1) {
  const body = Buffer.from(typeof obj === 'string' ? obj : JSON.stringify(obj));
  const f = Buffer.alloc(5 + body.length);
  f.writeUInt32BE(body.length + 1, 0);
  f[4] = version;
  body.copy(f, 5);
  return f;
}
sock.write(frame({ type: 'hello', pid: process.pid, probe_version: 'hostile', runtime: 'node' }));
sock.write(frame('{"type":"stats", not json'));
sock.write(frame({ type: 'pong', seq: 1 }, 9));
sock.write(frame({ type: 'ready' }));
let buf = Buffer.alloc(0);
let dumps = 0;
sock.on('data', (chunk) => {
  buf = Buffer.concat([buf, chunk]);
  while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
    const len = buf.readUInt32BE(0);
    const msg = JSON.parse(buf.subarray(5, 4 + len).toString());
    buf = buf.subarray(4 + len);
    if (msg.type === 'sample') {
      sock.write(frame({ type: 'stats', seq: msg.seq, heap: { allocated: 1000000, active: 2000000 }, runtime_lag_seconds: 0, dropped: 0, metrics: null, external_bytes: 10 }));
    } else if (msg.type === 'dump') {
      dumps += 1;
      let format = 'v8-sampling';
      if (msg.kind === 'snapshot') {
        fs.writeFileSync(msg.path, '{"not":"a snapshot"}');
        format = 'v8-snapshot';
      } else if (dumps === 1) {
        // 80 MiB, sparse: past the agent's limit without costing the disk.
        const fd = fs.openSync(msg.path, 'w');
        fs.ftruncateSync(fd, 80 * 1024 * 1024);
        fs.closeSync(fd);
      } else {
        fs.writeFileSync(msg.path, 'this is not a heap profile\n'.repeat(1000));
      }
      sock.write(frame({ type: 'profile_written', seq: msg.seq, path: msg.path, error: null, micros: 1, format }));
    } else if (msg.type === 'ping') {
      sock.write(frame({ type: 'pong', seq: msg.seq }));
    }
  }
});
setInterval(() => {}, 1000);
