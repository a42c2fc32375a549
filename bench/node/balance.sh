#!/usr/bin/env bash
# Load balance between Node workers on heapwarden's shared listening socket: wrk with
# 16 keep-alive connections for DURATION against N workers of a plain http app that
# counts its own requests; prints requests and keep-alive connections per slot (slot 0
# first) and the max/min of requests (issue 23, defect 6).
#
#   bench/node/balance.sh [WORKERS ...]        (default: 2 4)
#   HEAPWARDEN_BIN=target/debug/heapwarden DURATION=10s bench/node/balance.sh
#   EXTRA_ENV='UV_TCP_SINGLE_ACCEPT = "1"' bench/node/balance.sh   (a line for [pool.env])
#   BALANCE=shared bench/node/balance.sh       (pool.balance; default round-robin)
#   REPLACEMENTS=100 bench/node/balance.sh 2   then, under wrk -c16, that many
#         `heapwarden restart` one after another (slots in turn), and the failed requests
#   PIN=1 bench/node/balance.sh   wrk on CPU 0, the agent and its workers on CPU 1: the
#         workers then share one run queue, so the figure shows how connections were
#         spread rather than which worker the scheduler placed beside a busy neighbour
# The agent is not in the data path, so a debug build measures the same split.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${HEAPWARDEN_BIN:-"$ROOT/target/debug/heapwarden"}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
COUNTS=("$@")
[[ ${#COUNTS[@]} -eq 0 ]] && COUNTS=(2 4)
BALANCE=${BALANCE:-round-robin}
for tool in node wrk curl ss; do
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
// Written aside and renamed, so the reader never sees a file truncated mid-write.
setInterval(() => { fs.writeFileSync(`${file}.tmp`, String(served)); fs.renameSync(`${file}.tmp`, file); }, 100).unref();
http.createServer((req, res) => { served += 1; res.end('ok'); }).listen(process.env.PORT);
JS

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# replace N PORT: REPLACEMENTS make-before-break replacements under wrk -c16; each is done
# when the slot's restart count moved on, its new worker is ready and the old one exited.
replace() {
    local n=$1 port=$2 cfg="$WORK/h$1.toml" i slot before old took started
    ${PIN:+taskset -c 0} wrk -t2 -c"$CONNECTIONS" -d3600s "http://127.0.0.1:$port/" >"$WORK/replace-$n.txt" &
    local wrk_pid=$!
    sleep 1
    started=$(date +%s.%N)
    for i in $(seq 1 "$REPLACEMENTS"); do
        slot=$((i % n))
        read -r before old < <("$BIN" ps -c "$cfg" --json | python3 -c 'import json,sys; w=[x for x in json.load(sys.stdin) if x["slot"]=='"$slot"'][0]; print(w["restarts"], w["pid"])')
        "$BIN" restart "$slot" -c "$cfg" >/dev/null
        for _ in $(seq 1 1500); do
            "$BIN" ps -c "$cfg" --json | python3 -c '
import json, sys
slot, before, old = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
w = [x for x in json.load(sys.stdin) if x["slot"] == slot]
sys.exit(0 if w and w[0]["restarts"] > before and w[0]["ready"] and w[0]["pid"] != old else 1)' "$slot" "$before" "$old" &&
                ! kill -0 "$old" 2>/dev/null && break
            sleep 0.02
        done
    done
    took=$(python3 -c "print(f'{$(date +%s.%N)-$started:.1f}')")
    sleep 1
    kill -INT "$wrk_pid"; wait "$wrk_pid" 2>/dev/null || true
    local out; out=$(cat "$WORK/replace-$n.txt")
    local requests non2xx sockerr
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); non2xx=${non2xx:-0}
    sockerr=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' <<<"$out"); sockerr=${sockerr:-0}
    echo
    echo "| balance | workers | replacements | took s | requests | non-2xx | socket errors |"
    echo "|---|---|---|---|---|---|---|"
    echo "| $BALANCE | $n | $REPLACEMENTS | $took | $requests | $non2xx | $sockerr |"
    grep -E "Socket errors|Non-2xx" <<<"$out" || true
}

echo "| balance | workers | connections | requests | requests per slot | connections per slot | max/min |"
echo "|---|---|---|---|---|---|---|"
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
balance = "$BALANCE"
[pool.env]
COUNT_DIR = "$counts"
${EXTRA_ENV:-}
[log]
level = "warn"
TOML
    ${PIN:+taskset -c 1} "$BIN" run -c "$WORK/h$n.toml" >"$WORK/agent-$n.log" 2>&1 &
    AGENT_PID=$!
    for _ in $(seq 1 300); do
        curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    rm -f "$counts"/*
    ${PIN:+taskset -c 0} wrk -t2 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$port/" >"$WORK/wrk-$n.txt" &
    wrk_pid=$!
    sleep 1 # wrk has opened its keep-alive connections
    ss -Htnp state established "( sport = :$port )" >"$WORK/ss-$n.txt"
    wait "$wrk_pid"
    sleep 0.3 # the workers write their counts every 100 ms
    "$BIN" ps -c "$WORK/h$n.toml" --json >"$WORK/ps-$n.json"
    [[ -n ${SHOW_CPU:-} ]] && for f in "$counts"/*; do echo "pid $(basename "$f") cpu_ticks $(awk '{print $14+$15}' /proc/$(basename "$f")/stat) requests $(cat "$f")"; done
    python3 - "$n" "$CONNECTIONS" "$BALANCE" "$counts" "$WORK/ps-$n.json" "$WORK/ss-$n.txt" <<'PY'
import json, os, re, sys
n, c, balance, counts_dir, ps, ss = sys.argv[1:]
slots = {w["pid"]: w["slot"] for w in json.load(open(ps))}
requests, conns = [0] * int(n), [0] * int(n)
for name in os.listdir(counts_dir):
    if name.isdigit() and int(name) in slots:
        requests[slots[int(name)]] = int(open(os.path.join(counts_dir, name)).read() or 0)
for pid in re.findall(r"pid=(\d+)", open(ss).read()):
    if int(pid) in slots:
        conns[slots[int(pid)]] += 1
ratio = max(requests) / min(requests) if min(requests) else float("inf")
print(f"| {balance} | {n} | {c} | {sum(requests)} | {', '.join(map(str, requests))} "
      f"| {', '.join(map(str, conns))} | {ratio:.2f} |")
PY
    [[ -n ${REPLACEMENTS:-} ]] && replace "$n" "$port"
    grep -h '"level":"\(WARN\|ERRO\|CRIT\)' "$WORK/agent-$n.log" | head -5 >&2 || true
    kill "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=""
done
