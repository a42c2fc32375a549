#!/usr/bin/env bash
# Benchmarks of the demo cache-aside service (release binary, loopback, wrk). Each part
# prints a markdown table:
#
#   throughput  L1 hit / L2 hit (Redis) / DB read (SQLite), one worker (`heapwarden-demo`
#               alone) and the agent with one worker per core: req/s, p50, p99, worker CPU
#               µs per request, the agent's CPU share; at two loads and two log levels
#   stale       2 workers under the agent (Redis + SQLite): 50 rounds of PUT then 50 GETs
#               on fresh connections; reads older than the acknowledged write
#   replace     2 workers under wrk -c16; 100 `heapwarden restart` one after another;
#               failed requests (non-2xx + socket errors)
#   profiling   L1-hit req/s with heap profiling on vs MALLOC_CONF=prof:false (median of
#               3), and p99 while the agent dumps a heap profile every 200 ms
#
#   compare     L1 hit, alone and under the agent, this build against BASELINE_BIN (an
#               older single-binary `heapwarden` whose demo is `heapwarden demo`), rows
#               interleaved run by run so machine load falls on both alike
#   node        L1 hit, the demo under the agent against the seeds' Node design
#               (bench/seed-node: cluster + lru-cache + ioredis + pg), one worker per core
#               each, both on this redis-server and PostgreSQL (PG_URL, schema
#               heapwarden_bench): req/s, p50, p99, CPU µs per request of the whole process
#               tree (agent + workers, primary + workers), RUNS interleaved runs, medians
#               and demo/Node ratios; beside them the floor (the demo crate's `floor`
#               example under the agent: hyper answering a constant), what any hyper
#               server reaches here
#
#   bench/demo.sh [--quick] [throughput|stale|replace|profiling|compare|node ...]
#   (default: throughput stale replace profiling)
#   SKIP_BUILD=1 bench/demo.sh node                                     # demo vs Node
#   SKIP_BUILD=1 DURATION=5s bench/demo.sh throughput
#   BASELINE_BIN=/path/to/old/heapwarden bench/demo.sh compare          # before/after
#   HEAPWARDEN_BIN=/other/heapwarden HEAPWARDEN_DEMO_BIN=/other/heapwarden-demo SKIP_BUILD=1 bench/demo.sh
#
# Needs wrk, redis-server, curl, python3; `node` also node, npm and psql (the Node app's
# packages are installed into SEED_NPM, /var/tmp/heapwarden-seed-npm, when missing).
# Starts its own redis-server on a free port and never touches a shared one. Full run
# about 5 minutes after the build, `node` 1.5 minutes; --quick ~1 minute.
# The machine should be otherwise idle: check `uptime` first.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
PARTS=()
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        throughput | stale | replace | profiling | compare | node) PARTS+=("$arg") ;;
        *) echo "bench: unknown argument $arg" >&2; exit 64 ;;
    esac
done
[[ ${#PARTS[@]} -eq 0 ]] && PARTS=(throughput stale replace profiling)
if [[ $QUICK == 1 ]]; then
    DURATION=${DURATION:-1s}; ROUNDS=${ROUNDS:-10}; REPLACEMENTS=${REPLACEMENTS:-10}; RUNS=${RUNS:-1}
else
    DURATION=${DURATION:-4s}; ROUNDS=${ROUNDS:-50}; REPLACEMENTS=${REPLACEMENTS:-100}; RUNS=${RUNS:-3}
fi
CORES=$(nproc)
TICK=$(getconf CLK_TCK)
BIN=${HEAPWARDEN_BIN:-"$ROOT/target/release/heapwarden"}
DEMO_BIN=${HEAPWARDEN_DEMO_BIN:-"$(dirname "$BIN")/heapwarden-demo"}
# The demo crate's `floor` example: hyper answering a constant, for `node`.
FLOOR_BIN=${FLOOR_BIN:-"$(dirname "$BIN")/examples/floor"}
BASELINE_BIN=${BASELINE_BIN:-}
PG_URL=${PG_URL:-"postgres://$(id -un)@127.0.0.1:5432/test"}
SEED_NPM=${SEED_NPM:-/var/tmp/heapwarden-seed-npm}
# Which build `start` runs: "new" (BIN + DEMO_BIN) or "baseline" (BASELINE_BIN, one binary).
BUILD=new

for tool in wrk redis-server curl python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    # One invocation: the agent links heapwarden-protocol, so no jemalloc reaches it.
    (cd "$ROOT" && cargo build --release -p heapwarden -p heapwarden-demo --bins --example floor >&2)
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
    for _ in $(seq 1 300); do
        curl -fs -o /dev/null "$1" && return 0
        sleep 0.05
    done
    echo "bench: $1 never answered" >&2; exit 1
}

# start MODE(demo|run) WORKERS LOG_LEVEL DEMO_TOML [POOL_ENV_TOML] [POOL_TOML]
#   -> SERVER_PID, PORT, CFG
start() {
    local mode=$1 workers=$2 level=$3 demo_toml=$4 pool_env=${5:-} pool_toml=${6:-}
    PORT=$(free_port)
    local dir="$WORK/$mode-$workers-$RANDOM"
    mkdir -p "$dir"
    CFG="$dir/config.toml"
    cat >"$CFG" <<TOML
state-dir = "$dir/state"
[admin]
listen = "127.0.0.1:$(free_port)"
token-file = "$dir/token"
[pool]
workers = $workers
listen = "127.0.0.1:$PORT"
$pool_toml
[pool.env]
$pool_env
[log]
level = "$level"
[demo]
seed-rows = 1000
$demo_toml
TOML
    echo "bench-token" >"$dir/token"; chmod 600 "$dir/token"
    local env_args=()
    if [[ $mode == demo && -n $pool_env ]]; then
        local assignment=${pool_env// = /=}
        env_args=("${assignment//\"/}")
    fi
    if [[ $BUILD == baseline ]]; then
        # The single-binary layout: `heapwarden demo` read [pool]/state-dir/[log] itself.
        env "${env_args[@]}" "$BASELINE_BIN" "$mode" -c "$CFG" >"$dir/out.log" 2>&1 &
    elif [[ $mode == demo ]]; then
        env "${env_args[@]}" "$DEMO_BIN" -c "$CFG" --listen "127.0.0.1:$PORT" --state-dir "$dir/state" \
            --log-level "$level" >"$dir/out.log" 2>&1 &
    else
        "$BIN" run -c "$CFG" >"$dir/out.log" 2>&1 &
    fi
    SERVER_PID=$!
    PIDS+=($SERVER_PID)
    SERVER_LOG="$dir/out.log"
    wait_http "http://127.0.0.1:$PORT/readyz"
    if [[ $mode == run ]]; then wait_workers_ready "$workers"; fi
    return 0
}

stop() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }

ps_json() { "$([[ $BUILD == baseline ]] && echo "$BASELINE_BIN" || echo "$BIN")" ps --json -c "$CFG" 2>/dev/null; }

wait_workers_ready() { # N
    for _ in $(seq 1 200); do
        if ps_json | python3 -c 'import json,sys; w=json.load(sys.stdin); sys.exit(0 if len(w)=='"$1"' and all(x["ready"] for x in w) else 1)'; then
            return 0
        fi
        sleep 0.05
    done
    echo "bench: the workers never became ready" >&2; exit 1
}

# The worker processes: the demo itself, or the agent's children.
worker_pids() { if [[ $1 == demo ]]; then echo "$SERVER_PID"; else pgrep -P "$SERVER_PID" | tr '\n' ' '; fi; }

cpu_ticks() { # PIDS... -> utime+stime summed
    local total=0 pid
    for pid in "$@"; do
        [[ -r /proc/$pid/stat ]] || continue
        total=$((total + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$pid/stat")))
    done
    echo "$total"
}

# The wrk script spreads reads over ids 1..1000 so L2/DB reads are not one hot row.
cat >"$WORK/ids.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/items/" .. ((n * 7919) % 1000 + 1))
end
LUA

# parse_wrk WRK_OUTPUT -> RPS, P50, P99, MAX_LATENCY, REQUESTS (of a `wrk --latency` run)
parse_wrk() {
    RPS=$(awk '/Requests\/sec/ {print $2}' <<<"$1")
    P50=$(awk '$1=="50%" {print $2}' <<<"$1")
    P99=$(awk '$1=="99%" {print $2}' <<<"$1")
    MAX_LATENCY=$(awk '/Latency/ {print $4}' <<<"$1")
    REQUESTS=$(awk '/requests in/ {print $1}' <<<"$1")
}

# wrk_row LABEL MODE WORKERS LOG THREADS CONNS -> one table row (CPU per request measured
# over the wrk run from /proc/PID/stat of the workers and of the agent).
wrk_row() {
    local label=$1 mode=$2 workers=$3 log=$4 threads=$5 conns=$6
    local base="http://127.0.0.1:$PORT"
    wrk -t1 -c4 -d1s -s "$WORK/ids.lua" "$base" >/dev/null
    local layer
    # Fresh connections land on any worker: ask a few times, report the last answer.
    for _ in 1 2 3 4; do
        layer=$(curl -s -D - -o /dev/null "$base/items/17" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache"{print $2}')
    done
    local wpids; wpids=$(worker_pids "$mode")
    # shellcheck disable=SC2086
    local w0; w0=$(cpu_ticks $wpids)
    local a0=0; [[ $mode == run ]] && a0=$(cpu_ticks "$SERVER_PID")
    local t0; t0=$(date +%s.%N)
    local out
    out=$(wrk -t"$threads" -c"$conns" -d"$DURATION" --latency -s "$WORK/ids.lua" "$base")
    local t1; t1=$(date +%s.%N)
    # shellcheck disable=SC2086
    local w1; w1=$(cpu_ticks $wpids)
    local a1=0; [[ $mode == run ]] && a1=$(cpu_ticks "$SERVER_PID")
    parse_wrk "$out"
    local us_per_req agent
    us_per_req=$(python3 -c "print(f'{($w1-$w0)/$TICK*1e6/max($REQUESTS,1):.1f}')")
    agent=$(python3 -c "print('-' if '$mode'=='demo' else f'{($a1-$a0)/$TICK/($t1-$t0)*100:.0f}%')")
    printf "| %-16s | %-11s | %-5s | %-6s | %-11s | %10s | %8s | %8s | %7s | %6s |\n" \
        "$label" "$([[ $mode == demo ]] && echo "1 (alone)" || echo "$workers (agent)")" "$layer" "$log" \
        "-t$threads -c$conns" "$RPS" "$P50" "$P99" "$us_per_req" "$agent"
}

REDIS="redis-url = \"redis://127.0.0.1:$REDIS_PORT\""
# l1-ttl of 1ms: every read misses L1, so the next layer answers.
L1_TOML="$REDIS"
L2_TOML="$REDIS
l1-ttl = \"1ms\""
DB_TOML="l1-ttl = \"1ms\""

part_throughput() {
    echo "### Throughput: wrk --latency, $DURATION per row, $CORES cores, $(uname -r)"
    echo
    printf "| %-16s | %-11s | %-5s | %-6s | %-11s | %10s | %8s | %8s | %7s | %6s |\n" \
        "case" "workers" "layer" "log" "wrk" "req/s" "p50" "p99" "CPU µs/req" "agent CPU"
    echo "|---|---|---|---|---|---:|---:|---:|---:|---:|"
    local spec mode workers level
    for spec in "demo 1" "run $CORES"; do
        read -r mode workers <<<"$spec"
        for level in warn info; do
            start "$mode" "$workers" "$level" "$L1_TOML"
            wrk_row "L1 hit" "$mode" "$workers" "$level" 1 8
            wrk_row "L1 hit" "$mode" "$workers" "$level" 2 32
            stop
        done
        start "$mode" "$workers" warn "$L2_TOML"
        wrk_row "L2 hit (Redis)" "$mode" "$workers" warn 1 8
        wrk_row "L2 hit (Redis)" "$mode" "$workers" warn 2 32
        stop
        start "$mode" "$workers" warn "$DB_TOML"
        wrk_row "DB read (SQLite)" "$mode" "$workers" warn 1 8
        wrk_row "DB read (SQLite)" "$mode" "$workers" warn 2 32
        stop
    done
    echo
}

part_stale() {
    start run 2 warn "$REDIS"
    echo "### Stale reads: 2 workers (agent), Redis + SQLite, $ROUNDS rounds of PUT then 50 GETs on fresh connections"
    echo
    python3 - "$PORT" "$ROUNDS" <<'PY'
import http.client, json, sys
port, rounds = int(sys.argv[1]), int(sys.argv[2])
def call(method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request(method, path, body=body, headers={"content-type": "application/json", "connection": "close"})
    r = c.getresponse()
    data = r.read()
    worker = r.getheader("x-worker")
    c.close()
    return r.status, data, worker
total_stale = worst = 0
workers_seen = set()
item = 42
print("| round | version written | reads | stale | served by workers |")
print("|---:|---:|---:|---:|---|")
for n in range(1, rounds + 1):
    # Warm both workers' L1 with the current version first, so a missed invalidation shows.
    for _ in range(10):
        call("GET", f"/items/{item}")
    status, data, _ = call("PUT", f"/items/{item}", json.dumps({"name": f"round-{n}", "value": n}))
    assert status == 200, (status, data)
    written = json.loads(data)["version"]
    stale, seen = 0, set()
    for _ in range(50):
        status, data, worker = call("GET", f"/items/{item}")
        seen.add(worker)
        if status != 200 or json.loads(data)["version"] < written:
            stale += 1
    workers_seen |= seen
    total_stale += stale
    worst = max(worst, stale)
    if n <= 3 or n == rounds or stale:
        print(f"| {n} | {written} | 50 | {stale} | {','.join(sorted(seen))} |")
    elif n == 4:
        print("| … | | | | |")
print()
print(f"stale reads after a write: {worst} of 50 (worst round); {total_stale} of {50 * rounds} in total; "
      f"x-worker seen: {','.join(sorted(workers_seen))} (Node cluster + lru-cache: 25 of 50)")
PY
    stop
    echo
}

# replacement_done SLOT OLD_RESTARTS OLD_PID: the slot's restart count moved on, the new
# worker is ready, and the old process has exited (its drain finished).
replacement_done() {
    ps_json | python3 -c '
import json, sys
slot, before, old = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
w = [x for x in json.load(sys.stdin) if x["slot"] == slot]
sys.exit(0 if w and w[0]["restarts"] > before and w[0]["ready"] and w[0]["pid"] != old else 1)' "$@" &&
        ! kill -0 "$3" 2>/dev/null
}

part_replace() {
    start run 2 warn "$L1_TOML"
    local base="http://127.0.0.1:$PORT"
    wrk -t1 -c16 -d600s --latency -s "$WORK/ids.lua" "$base" >"$WORK/replace.out" 2>&1 &
    local wrk_pid=$!
    PIDS+=($wrk_pid)
    sleep 1
    local started; started=$(date +%s.%N)
    local i slot before old
    for i in $(seq 1 "$REPLACEMENTS"); do
        slot=$((i % 2))
        read -r before old < <(ps_json | python3 -c 'import json,sys; w=[x for x in json.load(sys.stdin) if x["slot"]=='"$slot"'][0]; print(w["restarts"], w["pid"])')
        "$BIN" restart "$slot" -c "$CFG" >/dev/null
        for _ in $(seq 1 600); do
            replacement_done "$slot" "$before" "$old" && break
            sleep 0.02
        done
        replacement_done "$slot" "$before" "$old" || { echo "bench: replacement $i of slot $slot did not finish" >&2; exit 1; }
    done
    local took; took=$(python3 -c "print(f'{$(date +%s.%N)-$started:.1f}')")
    sleep 1
    kill -INT "$wrk_pid"; wait "$wrk_pid" 2>/dev/null || true
    local out; out=$(cat "$WORK/replace.out")
    local non2xx sockerr
    parse_wrk "$out"
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); non2xx=${non2xx:-0}
    sockerr=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' <<<"$out"); sockerr=${sockerr:-0}
    echo "### Replacements under load: 2 workers (agent), wrk -t1 -c16, $REPLACEMENTS replacements in ${took}s"
    echo
    echo "| replacements | requests | non-2xx | socket errors (connect+read+write+timeout) | failed per replacement | p99 |"
    echo "|---:|---:|---:|---:|---:|---:|"
    printf "| %s | %s | %s | %s | %s | %s |\n" "$REPLACEMENTS" "$REQUESTS" "$non2xx" "$sockerr" \
        "$(python3 -c "print(f'{($non2xx+$sockerr)/$REPLACEMENTS:.2f}')")" "$P99"
    grep -E "Socket errors|Non-2xx" <<<"$out" || true
    stop
    echo
}

part_compare() {
    [[ -n $BASELINE_BIN && -x $BASELINE_BIN ]] || { echo "bench: compare needs BASELINE_BIN=/path/to/old/heapwarden" >&2; exit 64; }
    echo "### Before/after: L1 hit, log warn, wrk -t1 -c8, $DURATION per row, $RUNS interleaved runs"
    echo
    echo "baseline: $BASELINE_BIN; this build: $BIN + $DEMO_BIN"
    echo
    printf "| %-16s | %-11s | %-5s | %-6s | %-11s | %10s | %8s | %8s | %7s | %6s |\n" \
        "case" "workers" "layer" "log" "wrk" "req/s" "p50" "p99" "CPU µs/req" "agent CPU"
    echo "|---|---|---|---|---|---:|---:|---:|---:|---:|"
    local run spec mode workers
    for run in $(seq 1 "$RUNS"); do
        for spec in "demo 1" "run $CORES"; do
            read -r mode workers <<<"$spec"
            for BUILD in baseline new; do
                start "$mode" "$workers" warn "$L1_TOML"
                wrk_row "L1 hit, $([[ $BUILD == new ]] && echo after || echo before)" "$mode" "$workers" warn 1 8
                stop
            done
        done
    done
    BUILD=new
    echo
}

# The seeds' Node app's packages, installed from its lockfile when missing or changed.
seed_npm() {
    local lock="$ROOT/bench/seed-node/package-lock.json"
    if [[ ! -d $SEED_NPM/node_modules ]] || ! cmp -s "$lock" "$SEED_NPM/package-lock.json"; then
        mkdir -p "$SEED_NPM"
        cp "$ROOT/bench/seed-node/package.json" "$lock" "$SEED_NPM/"
        (cd "$SEED_NPM" && npm ci --no-audit --no-fund >&2)
    fi
}

# start_node WORKERS DATABASE_URL -> SERVER_PID (the cluster's primary), PORT
start_node() {
    PORT=$(free_port)
    SERVER_LOG="$WORK/node-$PORT.log"
    NODE_PATH="$SEED_NPM/node_modules" PORT=$PORT WORKERS=$1 DATABASE_URL=$2 \
        REDIS_URL="redis://127.0.0.1:$REDIS_PORT" node "$ROOT/bench/seed-node/server.js" >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    PIDS+=($SERVER_PID)
    for _ in $(seq 1 300); do
        grep -q "workers are listening" "$SERVER_LOG" && return 0
        sleep 0.05
    done
    echo "bench: the Node app never listened" >&2; cat "$SERVER_LOG" >&2; exit 1
}

tree_pids() { # ROOT -> ROOT and every process below it
    local child
    echo "$1"
    for child in $(pgrep -P "$1"); do tree_pids "$child"; done
}

# tree_row SERVER RUN THREADS CONNS: one wrk run against PORT; CPU of SERVER_PID's whole
# process tree per request. Prints the row and appends it to $WORK/node.tsv.
tree_row() {
    local server=$1 run=$2 threads=$3 conns=$4
    local pids; pids=$(tree_pids "$SERVER_PID")
    # shellcheck disable=SC2086
    local c0; c0=$(cpu_ticks $pids)
    local out; out=$(wrk -t"$threads" -c"$conns" -d"$DURATION" --latency -s "$WORK/ids.lua" "http://127.0.0.1:$PORT")
    # shellcheck disable=SC2086
    local c1; c1=$(cpu_ticks $pids)
    parse_wrk "$out"
    local us; us=$(python3 -c "print(f'{($c1-$c0)/$TICK*1e6/max($REQUESTS,1):.1f}')")
    printf "| %s | %-6s | %-5s | %-11s | %10s | %8s | %8s | %7s |\n" \
        "$run" "$server" "${LAYER:--}" "-t$threads -c$conns" "$RPS" "$P50" "$P99" "$us"
    echo "$server -t$threads-c$conns $RPS $P50 $P99 $us" >>"$WORK/node.tsv"
}

# warm_l1: every worker's L1 holds ids 1..1000 afterwards; LAYER = the layer that answered
# the last of a few fresh-connection reads (l1 expected).
warm_l1() {
    local base="http://127.0.0.1:$PORT"
    wrk -t1 -c8 -d2s -s "$WORK/ids.lua" "$base" >/dev/null
    for _ in 1 2 3 4; do
        LAYER=$(curl -s -D - -o /dev/null "$base/items/17" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache"{print $2}')
    done
}

part_node() {
    for tool in node npm psql; do
        command -v "$tool" >/dev/null || { echo "bench: $tool is required for node" >&2; exit 1; }
    done
    seed_npm
    psql "$PG_URL" -q -v ON_ERROR_STOP=1 -c "SET client_min_messages TO warning" \
        -c "CREATE SCHEMA IF NOT EXISTS heapwarden_bench"
    local db_url="$PG_URL?options=-csearch_path%3Dheapwarden_bench"
    local demo_toml="$REDIS
database-url = \"$db_url\""
    local versions
    versions=$(cd "$SEED_NPM/node_modules" && python3 -c 'import json, sys
print(", ".join(p + " " + json.load(open(p + "/package.json"))["version"] for p in sys.argv[1:]))' lru-cache ioredis pg)
    echo "### Demo vs the seeds' Node design: L1 hit, $CORES workers each, Redis + PostgreSQL, $DURATION per row, $RUNS interleaved runs"
    echo
    echo "demo: \`heapwarden run\`, $CORES \`heapwarden-demo\` workers, log warn. Node $(node --version): bench/seed-node/server.js,"
    echo "a cluster of $CORES workers ($versions). CPU µs/req: utime+stime of the whole"
    echo "process tree (agent + workers, primary + workers) over the run, per request. floor:"
    echo "\`heapwarden run\` with $CORES workers of the demo crate's \`floor\` example (hyper answering"
    echo "the same body to every request, probe off): what any hyper server reaches here."
    echo
    printf "| %s | %-6s | %-5s | %-11s | %10s | %8s | %8s | %7s |\n" "run" "server" "layer" "wrk" "req/s" "p50" "p99" "CPU µs/req"
    echo "|---:|---|---|---|---:|---:|---:|---:|"
    : >"$WORK/node.tsv"
    [[ -x $FLOOR_BIN ]] || { echo "bench: $FLOOR_BIN is missing (cargo build --release -p heapwarden-demo --example floor)" >&2; exit 1; }
    local floor_pool="command = [\"$FLOOR_BIN\"]
probe = \"off\"
min-uptime = \"1s\""
    local run server order bodies=()
    for run in $(seq 1 "$RUNS"); do
        # Rotate which goes first, so a trend in the machine's load falls on all three.
        order=(demo Node floor)
        if (( run % 3 == 2 )); then order=(Node floor demo); fi
        if (( run % 3 == 0 )); then order=(floor demo Node); fi
        for server in "${order[@]}"; do
            case $server in
                demo) start run "$CORES" warn "$demo_toml" ;;
                Node) start_node "$CORES" "$db_url" ;;
                floor) start run "$CORES" warn "" "" "$floor_pool" ;;
            esac
            warm_l1
            if (( run == 1 )); then bodies+=("$server \`$(curl -s "http://127.0.0.1:$PORT/items/17")\`"); fi
            tree_row "$server" "$run" 1 8
            tree_row "$server" "$run" 2 32
            stop
        done
    done
    echo
    echo "\`GET /items/17\`: ${bodies[*]}"
    echo
    python3 - "$WORK/node.tsv" <<'PY'
import statistics, sys

def micros(text):
    for unit, scale in (("us", 1), ("ms", 1e3), ("s", 1e6)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(text)

def show(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"

runs = {}
for line in open(sys.argv[1]):
    server, load, rps, p50, p99, cpu = line.split()
    runs.setdefault((server, load), []).append((float(rps), micros(p50), micros(p99), float(cpu)))
loads = sorted({load for _, load in runs}, key=lambda l: int(l.split("-c")[1]))
name = {load: load.replace("-c", " -c") for load in loads}
print("| wrk | server | req/s (median) | p50 | p99 | CPU µs/req |")
print("|---|---|---:|---:|---:|---:|")
median = {}
for load in loads:
    for server in ("demo", "Node", "floor"):
        rows = runs[(server, load)]
        median[(server, load)] = m = [statistics.median(r[i] for r in rows) for i in range(4)]
        print(f"| {name[load]} | {server} | {m[0]:,.0f} | {show(m[1])} | {show(m[2])} | {m[3]:.1f} |")
print()
for load in loads:
    d, n = median[("demo", load)], median[("Node", load)]
    f = median[("floor", load)]
    print(f"- {name[load]}: demo/Node req/s **{d[0] / n[0]:.2f}×**, CPU per request **{d[3] / n[3]:.2f}×**, "
          f"p99 {show(d[2])} vs {show(n[2])}; the floor/Node {f[0] / n[0]:.2f}× at {f[3] / n[3]:.2f}×, "
          f"p99 {show(f[2])}; the demo's own work {d[3] - f[3]:.1f} µs per request")
pairs = list(zip(runs[("demo", "-t1-c8")], runs[("Node", "-t1-c8")]))
rps_ok = all(d[0] >= 2 * n[0] for d, n in pairs)
cpu_ok = all(d[3] <= 0.4 * n[3] for d, n in pairs)
p99_ok = median[("demo", "-t2-c32")][2] < median[("Node", "-t2-c32")][2]
verdict = {True: "met", False: "MISSED"}
print()
print(f"Targets: at -t1 -c8 demo ≥ 2× Node's req/s in every run: {verdict[rps_ok]}; CPU per request "
      f"≤ 0.4× in every run: {verdict[cpu_ok]}; at -t2 -c32 a lower p99 (median): {verdict[p99_ok]}.")
PY
    echo
}

median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

part_profiling() {
    echo "### Heap profiling overhead: L1 hit, 1 worker (alone), wrk -t1 -c8, median of $RUNS"
    echo
    echo "| heap profiling | runs (req/s) | median req/s | relative |"
    echo "|---|---|---:|---:|"
    local on=() off=() run out
    for run in $(seq 1 "$RUNS"); do
        start demo 1 warn "$L1_TOML"
        wrk -t1 -c4 -d1s -s "$WORK/ids.lua" "http://127.0.0.1:$PORT" >/dev/null
        out=$(wrk -t1 -c8 -d"$DURATION" -s "$WORK/ids.lua" "http://127.0.0.1:$PORT")
        parse_wrk "$out"; on+=("$RPS")
        stop
        start demo 1 warn "$L1_TOML" 'MALLOC_CONF = "prof:false"'
        wrk -t1 -c4 -d1s -s "$WORK/ids.lua" "http://127.0.0.1:$PORT" >/dev/null
        out=$(wrk -t1 -c8 -d"$DURATION" -s "$WORK/ids.lua" "http://127.0.0.1:$PORT")
        parse_wrk "$out"; off+=("$RPS")
        stop
    done
    # The worker must notice that profiling is off and keep serving (logged at info).
    start demo 1 info "$L1_TOML" 'MALLOC_CONF = "prof:false"'
    if grep -q "Heap profiling is unavailable" "$SERVER_LOG" && curl -fs -o /dev/null "http://127.0.0.1:$PORT/items/1"; then
        PROF_OFF_NOTE="with MALLOC_CONF=prof:false the worker logged \"Heap profiling is unavailable in this worker.\" and kept serving"
    else
        PROF_OFF_NOTE="WARNING: with MALLOC_CONF=prof:false the worker did not report profiling as unavailable"
    fi
    stop
    local m_on m_off
    m_on=$(median "${on[@]}"); m_off=$(median "${off[@]}")
    printf "| on (lg_prof_sample:19) | %s | %.0f | %.1f%% |\n" "${on[*]}" "$m_on" "$(python3 -c "print($m_on/$m_off*100)")"
    printf "| off (MALLOC_CONF=prof:false) | %s | %.0f | 100%% |\n" "${off[*]}" "$m_off"
    echo
    echo "$PROF_OFF_NOTE"
    echo
    echo "### p99 during heap dumps: agent with $CORES workers, L1 hit, wrk -t1 -c8, \`heapwarden dump 0\` every 200 ms"
    echo
    echo "| dumps | req/s | p50 | p99 | max | profiles written |"
    echo "|---|---:|---:|---:|---:|---:|"
    start run "$CORES" warn "$L1_TOML"
    local base="http://127.0.0.1:$PORT" with
    for with in no yes; do
        wrk -t1 -c4 -d1s -s "$WORK/ids.lua" "$base" >/dev/null
        local dumper="" dumps=0
        if [[ $with == yes ]]; then
            ( while true; do "$BIN" dump 0 -c "$CFG" >/dev/null 2>&1 || true; sleep 0.2; done ) &
            dumper=$!
        fi
        out=$(wrk -t1 -c8 -d"$DURATION" --latency -s "$WORK/ids.lua" "$base")
        if [[ -n $dumper ]]; then kill "$dumper"; wait "$dumper" 2>/dev/null || true
            dumps=$(find "$(dirname "$CFG")/state" -name '*.pb.gz' 2>/dev/null | wc -l)
        fi
        parse_wrk "$out"
        printf "| %s | %s | %s | %s | %s | %s |\n" "$([[ $with == yes ]] && echo "every 200 ms" || echo none)" \
            "$RPS" "$P50" "$P99" "$MAX_LATENCY" "$dumps"
    done
    stop
    echo
}

echo "heapwarden demo benchmarks — $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg), quick=$QUICK"
echo
for part in "${PARTS[@]}"; do "part_$part"; done
