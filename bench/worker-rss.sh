#!/usr/bin/env bash
# What one more worker costs the agent in anonymous memory and CPU: runs each given agent
# build twice, with 8 and with 64 idle probe-workers (sampled every 1 s), all at once (so
# load falls on every build alike), waits, and prints RssAnon and the main heap of each
# agent, the CPU it used after the warm-up's baseline profiles (from SETTLE seconds on,
# default 60), and the slopes per worker. By default nothing scrapes `/metrics`;
# SCRAPE_EVERY=15 scrapes every agent every 15 s, as Prometheus would (a scrape's render
# adds its own; see docs/src/internals/performance.md, "Where the per-worker RSS is"), and
# prints the mean time a scrape took, `curl` included.
#
#   [SCRAPE_EVERY=S] [SETTLE=S] bench/worker-rss.sh [SECONDS] NAME=PATH/heapwarden …
#       (default SECONDS 90, counted after SETTLE; each build runs the probe-worker
#       beside it, or this tree's)
# Needs release builds: cargo build --release --workspace --bins
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_TO_WAIT=90
if [[ ${1:-} =~ ^[0-9]+$ ]]; then SECONDS_TO_WAIT=$1; shift; fi
(($#)) || { echo "usage: bench/worker-rss.sh [SECONDS] NAME=PATH/heapwarden …" >&2; exit 64; }
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

SCRAPE_EVERY=${SCRAPE_EVERY:-0}
SETTLE=${SETTLE:-60}
port=$((20000 + RANDOM % 20000))
declare -A AGENT
ADMINS=() ADMIN_KEYS=()
for build in "$@"; do
    name=${build%%=*} bin=$(realpath "${build#*=}")
    [[ -x $bin ]] || { echo "worker-rss: $bin is not an executable" >&2; exit 66; }
    worker=$(dirname "$bin")/probe-worker
    [[ -x $worker ]] || worker=$ROOT/target/release/probe-worker
    for n in 8 64; do
        dir=$WORK/$name-$n
        mkdir -p "$dir"
        cat > "$dir/heapwarden.toml" <<TOML
state-dir = "$dir/state"
[admin]
listen = "127.0.0.1:$port"
[pool]
workers = $n
listen = "127.0.0.1:$((port + 1))"
command = ["$worker"]
min-uptime = "1s"
[pool.restart]
max-restarts = 1000
TOML
        ADMINS+=("127.0.0.1:$port")
        ADMIN_KEYS+=("$name-$n")
        port=$((port + 2))
        (cd "$dir" && exec "$bin" run -c heapwarden.toml >"$dir/log" 2>&1) &
        PIDS+=($!)
        AGENT[$name-$n]=$!
    done
done
if ((SCRAPE_EVERY > 0)); then
    scraping="a scrape every ${SCRAPE_EVERY} s"
    while :; do
        for i in "${!ADMINS[@]}"; do
            curl -sf -o /dev/null --max-time 5 -w '%{time_total}\n' "http://${ADMINS[$i]}/metrics" \
                >>"$WORK/scrapes-${ADMIN_KEYS[$i]}" || true
        done
        sleep "$SCRAPE_EVERY"
    done &
    PIDS+=($!)
else
    scraping="no scrape"
fi
echo "worker-rss: ${#ADMINS[@]} agents up, settling ${SETTLE} s, then ${SECONDS_TO_WAIT} s with $scraping" >&2
sleep "$SETTLE"
rm -f "$WORK"/scrapes-*
ticks() { # PID → utime + stime in clock ticks, ended threads included
    sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}
declare -A TICKS
for key in "${!AGENT[@]}"; do TICKS[$key]=$(ticks "${AGENT[$key]}"); done
sleep "$SECONDS_TO_WAIT"
for key in "${!AGENT[@]}"; do TICKS[$key]=$(($(ticks "${AGENT[$key]}") - ${TICKS[$key]})); done
HZ=$(getconf CLK_TCK)

kib() { # PID FIELD → KiB from /proc/PID/status
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}
heap() { # PID → KiB resident in [heap]
    awk '/ \[heap\]$/ { h = 1; next } h && /^Rss:/ { print $2; exit }' "/proc/$1/smaps"
}
echo "## Agent memory and CPU per worker, $scraping, CPU over ${SECONDS_TO_WAIT} s after ${SETTLE} s — load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| build | RssAnon 8 / 64 workers KiB | [heap] 8 / 64 KiB | RssAnon per worker KiB | [heap] per worker KiB | CPU 8 / 64 workers, % of a core | CPU per worker and sample µs |"
echo "|---|---:|---:|---:|---:|---:|---:|"
scrape_ms() { # KEY → mean seconds of its scrapes in the measured window, as ms
    awk '{ t += $1; n++ } END { if (n) printf "%.2f", 1000 * t / n; else printf "—" }' "$WORK/scrapes-$1" 2>/dev/null || printf "—"
}
for build in "$@"; do
    name=${build%%=*}
    a8=${AGENT[$name-8]} a64=${AGENT[$name-64]}
    r8=$(kib "$a8" RssAnon) r64=$(kib "$a64" RssAnon)
    h8=$(heap "$a8") h64=$(heap "$a64")
    c8=${TICKS[$name-8]} c64=${TICKS[$name-64]}
    printf "| %s | %s / %s | %s / %s | %.1f | %.1f | %.3f / %.3f | %.1f |\n" "$name" "$r8" "$r64" "$h8" "$h64" \
        "$(echo "($r64 - $r8) / 56" | bc -l)" "$(echo "($h64 - $h8) / 56" | bc -l)" \
        "$(echo "100 * $c8 / $HZ / $SECONDS_TO_WAIT" | bc -l)" \
        "$(echo "100 * $c64 / $HZ / $SECONDS_TO_WAIT" | bc -l)" \
        "$(echo "1000000 * ($c64 - $c8) / $HZ / $SECONDS_TO_WAIT / 56" | bc -l)"
done
if ((SCRAPE_EVERY > 0)); then
    echo
    echo "| build | mean scrape, 8 / 64 workers, ms (\`curl\` included) |"
    echo "|---|---:|"
    for build in "$@"; do
        name=${build%%=*}
        echo "| $name | $(scrape_ms "$name-8") / $(scrape_ms "$name-64") |"
    done
fi
