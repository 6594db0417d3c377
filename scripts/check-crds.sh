#!/usr/bin/env bash
# Fails when crds/ differs from what `calsync-operator crds` generates from the Rust types.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
generated="$(mktemp -d)"
trap 'rm -rf "$generated"' EXIT

cargo run --quiet --locked --bin calsync-operator -- crds --output-dir "$generated" >/dev/null
if ! diff -ru crds "$generated" >&2; then
    echo "check-crds: crds/ is stale; run 'make crds' and commit the result" >&2
    exit 1
fi
echo "check-crds: crds/ matches the Rust types" >&2
