#!/usr/bin/env bash
# Python workers' figures, printed as tables: Flask under gunicorn (1 heapwarden worker,
# 2 sync children) served with probe = "native" against probe = "off" (wrk, 10 s, 4
# connections, twice each), and the leak profile's time (dump in the child + conversion
# in the agent's helper) and size with ~50 and ~500 MiB of strings held in a gunicorn child
# (max-memory trips on the tree's heap once the child holds about that much).
# Uses the release binaries and the test venv:
#   cargo build --release && bench/python.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# HEAPWARDEN_BIN: another agent binary (the preload is looked for next to it).
agent="${HEAPWARDEN_BIN:-target/release/heapwarden}"
venv="${HEAPWARDEN_TEST_PYVENV:-/var/tmp/heapwarden-pyvenv}"
[ -x "$agent" ] && [ -f "$(dirname "$agent")/libheapwarden_preload.so" ] || {
  echo "build first: cargo build --release" >&2; exit 1; }
[ -x "$venv/bin/gunicorn" ] || { echo "no gunicorn in $venv (scripts/test makes it)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing (apt-get install wrk)" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 10000)); admin=$((port + 1))

# config PROBE WATCHDOG-LINES [ENV-LINES [CHILDREN]]
config() {
  cat > "$work/hw.toml" <<EOF
state-dir = "$work/state"
[admin]
listen = "127.0.0.1:$admin"
[pool]
workers = 1
command = ["$venv/bin/gunicorn", "--workers", "${4:-2}", "--chdir", "$PWD/tests/python", "--no-control-socket", "shop:app"]
probe = "$1"
listen = "127.0.0.1:$port"
min-uptime = "1s"
[pool.env]
${3:-}
[sampling]
interval = "1s"
[watchdog]
$2
EOF
}

start() {
  rm -rf "$work/state"
  "$agent" run -c "$work/hw.toml" > "$work/agent.log" 2>&1 &
  agent_pid=$!
  for _ in $(seq 1 100); do
    curl -sf "127.0.0.1:$port/health" >/dev/null 2>&1 && return
    sleep 0.2
  done
  echo "the app did not come up:" >&2; tail -20 "$work/agent.log" >&2; exit 1
}

stop() { kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; }

rps() { wrk -t2 -c4 -d10s "http://127.0.0.1:$port$1" | awk '/Requests\/sec/ {print $2}'; }

echo "| gunicorn + Flask, 2 sync children | probe = \"off\" | probe = \"native\" |"
echo "|---|---:|---:|"
for path in /health "/order"; do
  row="| GET $path (req/s, two 10 s runs) |"
  for probe in off native; do
    config "$probe" 'warmup = "1h"'
    start
    rps "$path" >/dev/null   # warm
    row="$row $(rps "$path") / $(rps "$path") |"
    stop
  done
  echo "$row"
done

echo
echo "| held in the gunicorn child (1 child) | leak profile: dump + conversion | profile size |"
echo "|---|---:|---:|"
for mib in 50 500; do
  config native "warmup = \"2s\"
growth = \"off\"
trend-min-rate = \"off\"
max-memory = \"$((mib + 40))MiB\"
action = \"profile-only\"" 'SHOP_LEAK = "1"
SHOP_ORDER_BYTES = "1048576"' 1
  start
  sleep 4   # baseline
  for _ in $(seq 1 $((mib + 30))); do curl -sf "127.0.0.1:$port/order" >/dev/null; done
  for _ in $(seq 1 60); do
    grep -q '"trigger":"leak"' "$work/agent.log" && break
    sleep 0.5
  done
  line=$(grep '"A heap profile was written."' "$work/agent.log" | grep '"trigger":"leak"' | head -1)
  seconds=$(sed -E 's/.*"seconds":([0-9.]+).*/\1/' <<<"$line")
  bytes=$(sed -E 's/.*"bytes":([0-9]+).*/\1/' <<<"$line")
  printf '| %s MiB | %.0f ms | %.1f KiB |\n' "$mib" "$(echo "$seconds * 1000" | bc -l)" \
    "$(echo "$bytes / 1024" | bc -l)"
  stop
done
