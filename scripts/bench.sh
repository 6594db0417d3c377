#!/usr/bin/env bash
# Runs the converge and steady-state benchmark (benches/converge.rs) once for each N.
# Settings come from the environment, as `make bench` passes them:
#   N        numbers of CalendarUsers (and of CalendarSyncs), space-separated (1000 10000)
#   LATENCY  delay the simulator adds to every MyTimetable request (20ms)
#   STEADY   length of the steady-state window (10m)
#   BENCH_ARGS  further flags of the benchmark, for example "--max-concurrent-requests 16"
# Results and logs go to target/bench/; docs/benchmarks.md explains them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

N="${N:-1000 10000}"
LATENCY="${LATENCY:-20ms}"
STEADY="${STEADY:-10m}"
BENCH_ARGS="${BENCH_ARGS:-}"

# The read-only API load test uses wrk from Debian's packages.
if ! command -v wrk >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench: wrk is missing; install it with: sudo apt-get install wrk" >&2
        exit 1
    fi
    echo "bench: installing wrk with apt-get" >&2
    apt-get install -y -qq wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
fi

CALSYNC_CONTROL_PLANE_DIR="$(scripts/build-control-plane.sh)"
export CALSYNC_CONTROL_PLANE_DIR

# The measured binaries and the benchmark itself, all with the release profile.
cargo build --release --locked --bin calsync-operator --bin mytimetable-sim --bin calsync-devenv
cargo bench --locked --no-run --bench converge

target_dir="${CARGO_TARGET_DIR:-target}"
for n in $N; do
    echo "bench: N=$n, latency $LATENCY, steady-state window $STEADY" >&2
    # shellcheck disable=SC2086 # BENCH_ARGS holds several flags on purpose
    cargo bench --locked --quiet --bench converge -- --n "$n" --latency "$LATENCY" \
        --steady "$STEADY" --bin-dir "$target_dir/release" --out-dir "$target_dir/bench" $BENCH_ARGS
done
echo "bench: results in $target_dir/bench/N<n>.md and .json" >&2
