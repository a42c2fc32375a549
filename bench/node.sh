#!/usr/bin/env bash
# Benchmarks of Node.js workers under heapwarden (release agent, the real Node probe,
# the plain http app tests/node/app.js, loopback, wrk). Prints markdown tables:
#
#   throughput  req/s, p50, p99 of the app under the agent with `probe = "off"` vs the
#               Node probe (median of RUNS interleaved runs; target: >= 95 %)
#   dumps       p99 with `heapwarden dump 0` every second vs none
#   sizes       profile dump at 50 and 500 MiB of live heap: the event-loop block in the
#               worker, end-to-end time (dump + convert + store), file size; snapshot at
#               50 MiB: time (blocking) and size
#   sample      the probe's own cost per sample (max over the run)
#
#   bench/node.sh [--quick] [throughput|dumps|sizes ...]     (default: all)
#   SKIP_BUILD=1 bench/node.sh
# Needs node, wrk, curl, python3. About 3 minutes after the build; --quick under 1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
PARTS=()
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        throughput | dumps | sizes) PARTS+=("$arg") ;;
        *) echo "bench: unknown argument $arg" >&2; exit 64 ;;
    esac
done
[[ ${#PARTS[@]} -eq 0 ]] && PARTS=(throughput dumps sizes)
if [[ $QUICK == 1 ]]; then DURATION=${DURATION:-2s}; RUNS=${RUNS:-1}; else DURATION=${DURATION:-5s}; RUNS=${RUNS:-3}; fi
BIN=${HEAPWARDEN_BIN:-"$ROOT/target/release/heapwarden"}
for tool in node wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done
[[ "${SKIP_BUILD:-0}" == 1 ]] || (cd "$ROOT" && cargo build --release -p heapwarden >&2)

WORK=$(mktemp -d)
AGENT_PID=""
cleanup() {
    [[ -n $AGENT_PID ]] && kill "$AGENT_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
cp "$ROOT"/tests/node/app.js "$ROOT"/tests/node/child.js "$WORK"/
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_agent PROBE HOLD_MIB: one worker running app.js; sets PORT ADMIN CONFIG.
start_agent() {
    PORT=$(free_port); ADMIN=$(free_port); CONFIG="$WORK/hw-$PORT.toml"
    cat >"$CONFIG" <<EOF
state-dir = "$WORK/state-$PORT"
[admin]
listen = "127.0.0.1:$ADMIN"
[pool]
workers = 1
command = ["node", "app.js"]
cwd = "$WORK"
listen = "127.0.0.1:$PORT"
probe = "$1"
ready-timeout = "120s"
[pool.env]
HOLD_MIB = "$2"
[watchdog]
warmup = "1h"
max-memory = "off"
growth = "off"
trend-min-rate = "off"
[log]
level = "warn"
EOF
    "$BIN" run -c "$CONFIG" >"$WORK/agent-$PORT.log" 2>&1 &
    AGENT_PID=$!
    for _ in $(seq 1 1200); do
        curl -sf "127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "bench: the agent did not become ready" >&2; cat "$WORK/agent-$PORT.log" >&2; exit 1
}
stop_agent() { kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=""; }
hw() { "$BIN" "$@" -c "$CONFIG"; }

# wrk_run: prints "req/s p50_ms p99_ms"
wrk_run() {
    wrk -t1 -c8 -d1s --latency "http://127.0.0.1:$PORT/" >/dev/null 2>&1 || true
    wrk -t1 -c8 -d"$DURATION" --latency "http://127.0.0.1:$PORT/" | python3 -c '
import re, sys
text = sys.stdin.read()
def ms(label):
    m = re.search(r"^\s*" + label + r"%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50, p99 = ms("50"), ms("99")
print(f"{rps:.0f} {p50:.3f} {p99:.3f}")'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

throughput() {
    echo "### Throughput of a plain Node http server, with and without the probe"
    echo
    echo "| probe | req/s (median of $RUNS) | p50 ms | p99 ms |"
    echo "|---|---:|---:|---:|"
    declare -A rps p50 p99
    for run in $(seq 1 "$RUNS"); do
        for probe in off auto; do
            start_agent "$probe" 0
            read -r r a b < <(wrk_run)
            rps[$probe]+="$r "; p50[$probe]+="$a "; p99[$probe]+="$b "
            stop_agent
        done
    done
    for probe in off auto; do
        local r a b
        r=$(tr ' ' '\n' <<<"${rps[$probe]}" | grep . | median)
        a=$(tr ' ' '\n' <<<"${p50[$probe]}" | grep . | median)
        b=$(tr ' ' '\n' <<<"${p99[$probe]}" | grep . | median)
        echo "| $([[ $probe == off ]] && echo 'off (plain)' || echo 'Node probe') | $r | $a | $b |"
        eval "RPS_$probe=$r"
    done
    python3 -c "print(f'\nWith the probe: {100 * $RPS_auto / $RPS_off:.1f} % of the plain throughput.\n')"
}

dumps() {
    echo "### Latency while the agent dumps a heap profile every second"
    echo
    echo "| dumps | req/s | p50 ms | p99 ms | profiles written |"
    echo "|---|---:|---:|---:|---:|"
    start_agent auto 50
    read -r r a b < <(wrk_run)
    echo "| none | $r | $a | $b | 0 |"
    ( while true; do hw dump 0 >/dev/null 2>&1 || true; sleep 1; done ) &
    local loop=$!
    read -r r a b < <(wrk_run)
    kill "$loop"; wait "$loop" 2>/dev/null || true
    local n
    n=$(hw profiles --json | python3 -c 'import json,sys; print(sum(p["trigger"]=="manual" for p in json.load(sys.stdin)))')
    echo "| every 1 s | $r | $a | $b | $n |"
    local timing
    timing=$(curl -s "127.0.0.1:$PORT/timing")
    echo
    python3 - "$timing" <<'EOF'
import json, sys
t = json.loads(sys.argv[1])
recent = sorted(x for x in t["recentSampleMicros"] if x is not None)
p50 = recent[len(recent) // 2]
print(f"Probe cost per sample (event loop blocked, wall clock): median {p50:.0f} µs, max {t['maxSampleMicros']:.0f} µs over {t['samples']} samples (a max on a loaded machine includes preemption).")
print()
EOF
    stop_agent
}

sizes() {
    echo "### Heap profile and snapshot cost by heap size"
    echo
    echo "| what | live heap | worker event loop blocked | dump + convert + store | file |"
    echo "|---|---:|---:|---:|---:|"
    local mibs=(50 500)
    [[ $QUICK == 1 ]] && mibs=(50)
    for mib in "${mibs[@]}"; do
        start_agent auto "$mib"
        # The index entry records the heap figure of the last sample: wait for one.
        for _ in $(seq 1 100); do
            hw ps --json | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)[0].get("heap_allocated_bytes") else 1)' && break
            sleep 0.2
        done
        local started ended meta timing
        started=$(date +%s.%N)
        meta=$(hw dump 0 --json)
        ended=$(date +%s.%N)
        timing=$(curl -s "127.0.0.1:$PORT/timing")
        python3 - "$mib" "$started" "$ended" "$meta" "$timing" <<'EOF'
import json, sys
mib, t0, t1, meta, timing = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4]), json.loads(sys.argv[5])
heap = meta["figures"].get("heap_allocated", 0) / 2**20
print(f"| profile | {heap:.0f} MiB (HOLD_MIB={mib}) | {timing['lastDumpBlockMicros'] / 1000:.1f} ms | {(t1 - t0) * 1000:.0f} ms | {meta['bytes'] / 1024:.1f} KiB |")
EOF
        if [[ $mib == 50 ]]; then
            started=$(date +%s.%N)
            meta=$(hw dump 0 --snapshot --json)
            ended=$(date +%s.%N)
            timing=$(curl -s "127.0.0.1:$PORT/timing")
            python3 - "$started" "$ended" "$meta" "$timing" <<'EOF'
import json, sys
t0, t1, meta, timing = float(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
heap = meta["figures"].get("heap_allocated", 0) / 2**20
print(f"| snapshot | {heap:.0f} MiB | {timing['lastSnapshotMicros'] / 1000:.0f} ms | {(t1 - t0) * 1000:.0f} ms | {meta['bytes'] / 2**20:.1f} MiB |")
EOF
        fi
        stop_agent
    done
    echo
}

echo "## Node.js workers ($(node --version), $(nproc) vCPU, load $(cut -d' ' -f1-3 /proc/loadavg), wrk -t1 -c8 $DURATION)"
echo
for part in "${PARTS[@]}"; do "$part"; done
