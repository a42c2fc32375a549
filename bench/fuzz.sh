#!/usr/bin/env bash
# Runs heapwarden's fuzz targets with a count (not part of CI's default run, where each
# target runs proptest's default 256 cases as an ordinary test):
#   control-channel decoder, worker metrics (exposition) parser, config loader, admin routes
# each for CASES cases (default 1,000,000), in release mode, then CASES_PROMTOOL random
# hostile worker texts (default 1,000) rendered into /metrics pages that `promtool check
# metrics` must parse. Prints one line per target and a table; exits non-zero on any
# failure, with the shrunk input that caused it.
#   bench/fuzz.sh [CASES]          e.g. bench/fuzz.sh 10000 for a quick run
#   FUZZ_ONLY=admin bench/fuzz.sh  only the targets whose test path contains "admin" (and
#                                  the promtool run when FUZZ_ONLY matches "promtool")
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-1000000}"
promtool_cases="${CASES_PROMTOOL:-1000}"
export PROPTEST_CASES="$cases" CARGO_TERM_COLOR=never
out=$(mktemp)
trap 'rm -f "$out"' EXIT

only="${FUZZ_ONLY:-}"

run() { # crate, test path
  [[ -z "$only" || "$2" == *"$only"* ]] || return 0
  local started=$SECONDS
  cargo test --release -q -p "$1" --lib "$2" -- --exact --nocapture 2>&1 | tee -a "$out" |
    grep -E '^fuzz |panicked|minimal failing input' || true
  echo "  ($((SECONDS - started)) s)"
}

cargo build --release -q -p heapwarden --lib --tests
run heapwarden-probes channel::fuzz_tests::fuzz_control_channel_decoder
run heapwarden admin::exposition::tests::fuzz_exposition_parser
run heapwarden config::fuzz_tests::fuzz_config_loader
run heapwarden admin::fuzz_tests::fuzz_admin_routes
started=$SECONDS
if [[ -n "$only" && "promtool" != *"$only"* ]]; then
  :
elif PROPTEST_CASES="$promtool_cases" HEAPWARDEN_PROMTOOL_CASES="$promtool_cases" cargo test --release -q -p heapwarden --lib \
  admin::tests::random_worker_text_never_breaks_the_page_for_promtool -- --exact >>"$out" 2>&1; then
  echo "fuzz promtool check of hostile pages: $promtool_cases cases, 0 failures"
  echo "fuzz promtool check of hostile pages: $promtool_cases cases, 0 failures" >>"$out"
else
  echo "fuzz promtool check of hostile pages: FAILED"; grep -A20 panicked "$out" | head -40
fi
echo "  ($((SECONDS - started)) s)"

echo
printf '%-36s %12s %9s\n' target cases failures
grep -E '^fuzz ' "$out" | sed -E 's/^fuzz (.*): ([0-9]+) cases, ([0-9]+) failures$/\1|\2|\3/' |
  awk -F'|' '{ printf "%-36s %12s %9s\n", $1, $2, $3 }'
! grep -qE 'panicked|FAILED|failed after' "$out"
