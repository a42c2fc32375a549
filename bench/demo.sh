#!/usr/bin/env bash
# Benchmark of the demo cache-aside service on loopback with wrk: requests/s and p50/p99
# latency for an L1 hit, an L2 (Redis) hit and a DB (SQLite) read, with one worker
# (`heapwarden demo` alone) and with one worker per core (`heapwarden run`).
#
#   bench/demo.sh            # builds the release binary first
#   DURATION=10s CONNECTIONS=64 bench/demo.sh
#
# Needs wrk, redis-server and curl. Starts its own redis-server on a free port; never
# touches a shared one. Takes about a minute after the build.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
CORES=$(nproc)
BIN="$ROOT/target/release/heapwarden"

for tool in wrk redis-server curl; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    (cd "$ROOT" && cargo build --release -p heapwarden >&2)
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)

wait_http() { # url
    for _ in $(seq 1 200); do
        curl -fs -o /dev/null "$1" && return 0
        sleep 0.05
    done
    echo "bench: $1 never answered" >&2; exit 1
}

# start MODE(demo|run) WORKERS DEMO_TOML LOG_LEVEL -> sets SERVER_PID, PORT
start() {
    local mode=$1 workers=$2 demo_toml=$3 level=$4
    PORT=$(free_port)
    local dir="$WORK/$mode-$workers-$RANDOM"
    mkdir -p "$dir"
    cat >"$dir/config.toml" <<TOML
state-dir = "$dir/state"
[admin]
listen = "127.0.0.1:$(free_port)"
token-file = "$dir/token"
[pool]
workers = $workers
listen = "127.0.0.1:$PORT"
[log]
level = "$level"
[demo]
seed-rows = 1000
$demo_toml
TOML
    echo "bench-token" >"$dir/token"; chmod 600 "$dir/token"
    HEAPWARDEN_CONFIG="$dir/config.toml" "$BIN" "$mode" >"$dir/out.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=($SERVER_PID)
    wait_http "http://127.0.0.1:$PORT/readyz"
    # The agent reports ready once every worker is; give late workers a moment to accept.
    [[ $mode == run ]] && sleep 1
    return 0
}

stop() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }

# The wrk script spreads reads over ids 1..1000 so L2/DB reads are not one hot row.
cat >"$WORK/ids.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/items/" .. ((n * 7919) % 1000 + 1))
end
LUA

# measure LABEL WORKERS URL_PATH -> prints one row
measure() {
    local label=$1 workers=$2
    local base="http://127.0.0.1:$PORT"
    # Warm-up pass so the row is in the layer we mean to measure.
    wrk -t1 -c4 -d1s -s "$WORK/ids.lua" "$base" >/dev/null
    local layer
    layer=$(curl -s -D - -o /dev/null "$base/items/17" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache"{print $2}')
    local out
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/ids.lua" "$base")
    local rps p50 p99
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    printf "| %-32s | %7s | %-7s | %10s | %9s | %9s |\n" "$label" "$workers" "$layer" "$rps" "$p50" "$p99"
}

REDIS="redis-url = \"redis://127.0.0.1:$REDIS_PORT\""
# l1-ttl of 1ms: every read misses L1, so the next layer answers.
L1="$REDIS"
L2="$REDIS
l1-ttl = \"1ms\""
DB="l1-ttl = \"1ms\""

echo "heapwarden demo benchmark: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $CORES cores, $(uname -r)"
echo
printf "| %-32s | %7s | %-7s | %10s | %9s | %9s |\n" "case" "workers" "x-cache" "req/s" "p50" "p99"
printf "|%s|%s|%s|%s|%s|%s|\n" "----------------------------------" "---------" "---------" "------------" "-----------" "-----------"
for spec in "demo 1" "run $CORES"; do
    read -r mode workers <<<"$spec"
    start "$mode" "$workers" "$L1" info; measure "L1 hit" "$workers"; stop
    start "$mode" "$workers" "$L2" info; measure "L2 hit (Redis)" "$workers"; stop
    start "$mode" "$workers" "$DB" info; measure "DB read (SQLite)" "$workers"; stop
done
start demo 1 "$L1" warn; measure "L1 hit, request log off (warn)" 1; stop
