#!/usr/bin/env bash
# Agent footprint, before/after: builds the agent alone (`cargo build --release -p
# heapwarden`) from a given git revision and from this tree, each in a fresh target
# directory, and prints one table: clean build time, binary size, crates in the agent's
# build, whether jemalloc is linked, strings of the demo's crates; then bench-agent
# --compare measures RSS and CPU of both side by side (8 and 16 probe-workers, 1 s).
#
#   bench/footprint.sh [--quick] [BEFORE_REV]     (default BEFORE_REV: 1fad818, the last
#                                                  commit with the demo inside the agent)
# Takes two clean release builds (minutes each on 2 cores) plus the footprint windows.
# Crates counted: unique `name vN` lines of
#   cargo tree -p heapwarden -e normal,build --prefix none   (the agent's own build graph)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=()
REV=1fad818
for arg in "$@"; do
    case $arg in
        --quick) QUICK=(--quick) ;;
        -*) echo "footprint: unknown flag $arg" >&2; exit 64 ;;
        *) REV=$arg ;;
    esac
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

crates() { # MANIFEST
    cargo tree --manifest-path "$1" -p heapwarden -e normal,build --prefix none 2>/dev/null |
        sed 's/ (\*)$//; s/ (proc-macro)$//; s/ (.*)$//' | sort -u | wc -l
}

# build NAME SOURCE_DIR -> $WORK/NAME/heapwarden, prints a table row
build() {
    local name=$1 src=$2 target="$WORK/target-$1"
    echo "footprint: clean release build of the agent alone ($name)" >&2
    local t0 t1
    t0=$(date +%s.%N)
    (cd "$src" && CARGO_TARGET_DIR=$target cargo build --release -p heapwarden >&2)
    t1=$(date +%s.%N)
    mkdir -p "$WORK/$name"
    cp "$target/release/heapwarden" "$WORK/$name/heapwarden"
    rm -rf "$target"
    local bin="$WORK/$name/heapwarden"
    printf "| %s | %.0f | %.1f | %s | %s | %s |\n" "$name" \
        "$(python3 -c "print($t1-$t0)")" \
        "$(python3 -c "import os; print(os.path.getsize('$bin')/2**20)")" \
        "$(crates "$src/Cargo.toml")" \
        "$(nm "$bin" 2>/dev/null | grep -c ' T _\?rjem_\| T malloc$\| T je_' || true)" \
        "$(strings "$bin" | grep -ci -e sqlx -e redis -e moka || true)"
}

mkdir -p "$WORK/before-src"
git -C "$ROOT" archive "$REV" | tar -x -C "$WORK/before-src"
ROWS=$(
    build before "$WORK/before-src"
    build after "$ROOT"
)
echo "## Agent build, before ($REV) and after — load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| build | clean release build s | binary MiB | crates in the agent's build | jemalloc symbols | strings sqlx/redis/moka |"
echo "|---|---:|---:|---:|---:|---:|"
echo "$ROWS"
echo
# The footprint windows need the workspace's probe-worker and bench-agent (release) and the
# agent: one invocation (the agent links heapwarden-protocol, so no jemalloc reaches it).
(cd "$ROOT" && cargo build --release -p heapwarden-tests --bins -p heapwarden >&2)
"$ROOT/target/release/bench-agent" "${QUICK[@]}" --compare "before=$WORK/before/heapwarden"
