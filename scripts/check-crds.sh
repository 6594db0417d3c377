#!/usr/bin/env bash
# Fails when crds/ or the Helm chart's copy in charts/calsync-operator/crds/ differs from what
# `calsync-operator crds` generates from the Rust types.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
generated="$(mktemp -d)"
trap 'rm -rf "$generated"' EXIT

cargo run --quiet --locked --bin calsync-operator -- crds --output-dir "$generated" >/dev/null
for folder in crds charts/calsync-operator/crds; do
    if ! diff -ru "$folder" "$generated" >&2; then
        echo "check-crds: $folder/ is stale; run 'make crds' and commit the result" >&2
        exit 1
    fi
done
echo "check-crds: crds/ and the chart's copy match the Rust types" >&2
