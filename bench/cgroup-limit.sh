#!/usr/bin/env bash
# A worker under a real memory limit: the agent and its pool run inside one memory cgroup
# (as under a systemd unit's MemoryMax=), whose hard limit (CGROUP_MIB, 256) sits 56 MiB above `max-memory`:
# room for the agent, its profile-conversion helper and the replacement worker. The
# worker's RSS is watched, so the agent compares what the kernel counts; a probe-worker
# leaks 10 MiB/s. Three runs:
#   predicted  the defaults (`predict = "on"`): replaced before the limit;
#   after      `predict = "off"`: max-memory acts on the first sample over it;
#   none       max-memory off: nothing acts before the kernel does (PM2's design, which
#              checks every 30 s, is this at any leak faster than limit-headroom / 30 s).
# For each: leak replacements, OOM kills (the cgroup's own counter), the cgroup's peak.
#
# cgroup v2 (`memory.max`, `memory.events`, `memory.peak`) where the memory controller is
# on the unified hierarchy; otherwise cgroup v1 (`memory.limit_in_bytes`,
# `memory.oom_control`, `memory.max_usage_in_bytes`), same semantics: a hard limit whose
# breach the kernel answers with the OOM killer. Needs root (or a delegated subtree).
#
# Usage: [CGROUP_MIB=256] bench/cgroup-limit.sh [SECONDS per run, default 45]
# Binaries: ${CARGO_TARGET_DIR:-target}/release/{heapwarden,probe-worker} (bench/agent.sh
# builds them).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${CARGO_TARGET_DIR:-$root/target}/release"
seconds="${1:-45}"
limit_mib=200
cgroup_mib="${CGROUP_MIB:-256}"
for b in heapwarden probe-worker; do
  [ -x "$bin/$b" ] || { echo "$bin/$b is missing: run bench/agent.sh first" >&2; exit 1; }
done

own=$(sed -n 's/^0:://p' /proc/self/cgroup)
if grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  kind=v2
  parent="/sys/fs/cgroup${own%/}"
else
  kind=v1
  v1=$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)
  parent="/sys/fs/cgroup/memory${v1%/}"
fi
[ -w "$parent" ] || { echo "cannot create a cgroup under $parent (not writable)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "## A worker under a real memory limit (cgroup $kind)"
echo
echo "cgroup limit ${cgroup_mib} MiB for the agent and its worker (${parent}/heapwarden-bench-*), \`max-memory = \"${limit_mib}MiB\"\`, \`watch = \"rss\"\`, one probe-worker leaking 10 MiB/s from start, ${seconds} s per run, release build."
echo
echo "| run | leak trips (rule) | worker exits by signal 9 | OOM kills (cgroup counter) | cgroup peak MiB | worker RSS at trip MiB (median) |"
echo "|---|---|---:|---:|---:|---:|"

for run in predicted after none; do
  cg="$parent/heapwarden-bench-$run-$$"
  mkdir "$cg"
  if [ "$kind" = v2 ]; then
    echo $((cgroup_mib << 20)) > "$cg/memory.max"
    echo 0 > "$cg/memory.swap.max" 2>/dev/null || true
  else
    echo $((cgroup_mib << 20)) > "$cg/memory.limit_in_bytes"
  fi
  case $run in
    predicted) rules="max-memory = \"${limit_mib}MiB\"" ;;
    after) rules="max-memory = \"${limit_mib}MiB\"
predict = \"off\"" ;;
    none) rules="max-memory = \"off\"" ;;
  esac
  cat > "$work/$run.toml" <<EOF
state-dir = "$work/state-$run"
[admin]
listen = "127.0.0.1:0"
[pool]
workers = 1
listen = "127.0.0.1:0"
command = ["$bin/probe-worker"]
min-uptime = "200ms"
[pool.env]
PROBE_WORKER_LEAK_MIB_PER_SEC = "10"
PROBE_WORKER_REPORT_HEAP = "1"
[pool.restart]
initial-delay = "100ms"
max-restarts = 1000
[watchdog]
watch = "rss"
growth = "off"
trend-min-rate = "off"
max-leak-restarts-per-hour = 1000
$rules
EOF
  # The agent starts inside the cgroup; its workers inherit it.
  sh -c 'echo $$ > "$1/cgroup.procs"; exec "$2" run -c "$3"' _ "$cg" "$bin/heapwarden" "$work/$run.toml" \
    > "$work/$run.log" 2>&1 &
  agent=$!
  sleep "$seconds"
  kill -TERM "$agent" 2>/dev/null || true
  wait "$agent" 2>/dev/null || true
  if [ "$kind" = v2 ]; then
    ooms=$(sed -n 's/^oom_kill //p' "$cg/memory.events")
    peak=$(( $(cat "$cg/memory.peak" 2>/dev/null || echo 0) >> 20 ))
  else
    ooms=$(sed -n 's/^oom_kill //p' "$cg/memory.oom_control")
    peak=$(( $(cat "$cg/memory.max_usage_in_bytes") >> 20 ))
  fi
  python3 - "$work/$run.log" "$run" "$ooms" "$peak" <<'PY'
import json, statistics, sys
log, run, ooms, peak = sys.argv[1:]
trips, killed, rss = {}, 0, []
for line in open(log):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if r.get("msg") == "A leak rule tripped.":
        trips[r.get("rule")] = trips.get(r.get("rule"), 0) + 1
        rss.append(r.get("bytes", 0) / 2**20)
    if r.get("msg", "").startswith("A worker") and r.get("signal") in (9, "SIGKILL", "9"):
        killed += 1
trip_text = ", ".join(f"{n} {rule}" for rule, n in sorted(trips.items())) or "none"
med = f"{statistics.median(rss):.1f}" if rss else "—"
print(f"| {run} | {trip_text} | {killed} | {ooms} | {peak} | {med} |")
PY
  rmdir "$cg" 2>/dev/null || true
done
echo
