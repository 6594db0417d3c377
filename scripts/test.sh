#!/usr/bin/env bash
# The whole test suite, as `make test` and CI run it: installs missing tools, builds the
# control-plane binaries and helm (cached outside the work tree), checks crds/, formatting
# and lints, then runs every test.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS

# Prints how long the phase since the previous call took, so that a CI log shows where the
# time went.
phase_started=$SECONDS
phase_done() {
    echo "test: $1 took $((SECONDS - phase_started)) s" >&2
    phase_started=$SECONDS
}

scripts/install-tools.sh
phase_done "installing tools"

# A first build of these Go binaries takes 10 to 20 minutes on 2 cores; later runs reuse
# the cache and return at once.
CALSYNC_CONTROL_PLANE_DIR="$(scripts/build-control-plane.sh)"
CALSYNC_HELM="$(scripts/build-helm.sh)"
export CALSYNC_CONTROL_PLANE_DIR CALSYNC_HELM
echo "test: control plane from $CALSYNC_CONTROL_PLANE_DIR, helm $CALSYNC_HELM" >&2
phase_done "the Go builds (control plane and helm)"

# check-crds builds the calsync-operator binary first, so this phase includes a debug build.
scripts/check-crds.sh
phase_done "check-crds"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
phase_done "fmt and clippy"
# The build of the tests is a phase of its own, so that the time of the tests themselves
# shows.
cargo test --locked --no-run
phase_done "building the tests"
# --no-fail-fast runs every test binary, so one failure does not hide the others. The output
# is kept so that the closing line can total every binary's counts.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
phase_done "running the tests"

echo "test: finished in $((SECONDS - started)) s" >&2
awk '/^test result:/ { passed += $4; failed += $6; ignored += $8 }
     END { printf "%d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"
exit "$status"
