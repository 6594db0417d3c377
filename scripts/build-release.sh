#!/usr/bin/env bash
# Builds the release binary of calsync-operator and, when given a folder, copies it there.
# The Dockerfile's build stage and `make release` both run this script, so CI compiles the
# image's binary with the same command and flags as an image build does.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# --locked builds exactly the dependency versions in Cargo.lock.
cargo build --release --locked --bin calsync-operator

if [ $# -gt 0 ]; then
    mkdir -p "$1"
    cp target/release/calsync-operator "$1/"
fi
