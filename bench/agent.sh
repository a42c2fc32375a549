#!/usr/bin/env bash
# Benchmarks the heapwarden agent (start-up, restart latency, footprint, sampling cost,
# leak-detection latency, heap-profile dump time, worker churn) and prints markdown tables.
# Builds the release binaries first: the figures are for what ships.
#
# Usage: bench/agent.sh [--quick] [--only startup,restart,footprint,detection,dump,churn]
#   --quick   short smoke run (about 1 minute); its figures are not reference figures
# Full run: about 6 minutes. Progress goes to stderr, tables to stdout:
#   bench/agent.sh > agent-bench.md
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# One build: the agent links heapwarden-protocol, not the probe, so building it with the
# workers no longer hands it jemalloc (it ships on the C allocator).
# The native preload library too (a library crate, not a bin): the overshoot bench's C
# rows run under `probe = "native"`, which finds it next to the agent.
# (`--bins` alone would skip it: the preload-build crate has no binary, so its build script
# would not run.)
cargo build --release --workspace --bins >&2
cargo build --release -p heapwarden-preload-build >&2
exec "${CARGO_TARGET_DIR:-$root/target}/release/bench-agent" "$@"
