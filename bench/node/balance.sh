#!/usr/bin/env bash
# Load balance between Node workers on heapwarden's shared listening socket: wrk with
# 16 keep-alive connections for DURATION against N workers of a plain http app that
# counts its own requests; prints requests per worker and max/min (issue 23, defect 6).
#
#   bench/node/balance.sh [WORKERS ...]        (default: 2 4)
#   HEAPWARDEN_BIN=target/debug/heapwarden DURATION=10s bench/node/balance.sh
#   EXTRA_ENV='UV_TCP_SINGLE_ACCEPT = "1"' bench/node/balance.sh   (a line for [pool.env])
# The agent is not in the data path, so a debug build measures the same split.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${HEAPWARDEN_BIN:-"$ROOT/target/debug/heapwarden"}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
COUNTS=("$@")
[[ ${#COUNTS[@]} -eq 0 ]] && COUNTS=(2 4)
for tool in node wrk curl; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done

WORK=$(mktemp -d)
AGENT_PID=""
cleanup() {
    [[ -n $AGENT_PID ]] && kill "$AGENT_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/server.js" <<'JS'
'use strict';
// Counts its requests; writes the count to $COUNT_DIR/<pid> every 100 ms.
const http = require('http');
const fs = require('fs');
let served = 0;
const file = `${process.env.COUNT_DIR}/${process.pid}`;
setInterval(() => fs.writeFileSync(file, String(served)), 100).unref();
http.createServer((req, res) => { served += 1; res.end('ok'); }).listen(process.env.PORT);
JS

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "| workers | connections | requests | per worker | max/min |"
echo "|---|---|---|---|---|"
for n in "${COUNTS[@]}"; do
    port=$(free_port); admin=$(free_port)
    counts="$WORK/counts-$n"; mkdir -p "$counts"
    cat >"$WORK/h$n.toml" <<TOML
state-dir = "$WORK/state-$n"
[admin]
listen = "127.0.0.1:$admin"
[pool]
workers = $n
command = ["node", "server.js"]
cwd = "$WORK"
listen = "127.0.0.1:$port"
[pool.env]
COUNT_DIR = "$counts"
${EXTRA_ENV:-}
[log]
level = "warn"
TOML
    "$BIN" run -c "$WORK/h$n.toml" >"$WORK/agent-$n.log" 2>&1 &
    AGENT_PID=$!
    for _ in $(seq 1 300); do
        curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    rm -f "$counts"/*
    wrk -t2 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$port/" >"$WORK/wrk-$n.txt"
    sleep 0.3 # the workers write their counts every 100 ms
    per=$(for f in "$counts"/*; do cat "$f"; echo; done | tr "\n" " ")
    python3 - "$n" "$CONNECTIONS" $per <<'PY'
import sys
n, c, counts = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3:]]
counts += [0] * (int(n) - len(counts))
ratio = max(counts) / min(counts) if min(counts) else float("inf")
print(f"| {n} | {c} | {sum(counts)} | {', '.join(map(str, sorted(counts, reverse=True)))} | {ratio:.2f} |")
PY
    kill "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=""
done
