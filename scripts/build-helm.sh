#!/usr/bin/env bash
# Builds the Helm command from the Go module pinned in scripts/helm into a cache folder
# outside the work tree, and prints the path of the helm binary on standard output.
# A later run with the same go.mod, go.sum and Go version reuses the cached binary.
#
# The cache root is $CALSYNC_CACHE_DIR, else $XDG_CACHE_HOME/calsync-operator, else
# ~/.cache/calsync-operator (the same root as scripts/build-control-plane.sh).
set -euo pipefail

module_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/helm" && pwd)"
cache_root="${CALSYNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/calsync-operator}"

if ! command -v go >/dev/null 2>&1; then
    echo "build-helm: 'go' was not found on PATH; install Go 1.26 or newer" >&2
    exit 1
fi

# The key changes whenever the pinned version or the Go toolchain changes, so a stale binary
# is never reused.
key="$( { cat "$module_dir/go.mod" "$module_dir/go.sum"; go version; } | sha256sum | cut -c1-16)"
out="$cache_root/helm/$key"
if [ -x "$out/helm" ]; then
    echo "$out/helm"
    exit 0
fi

helm_version="$(cd "$module_dir" && go list -m -f '{{.Version}}' helm.sh/helm/v4)"

# Build into a temporary folder and move it into place at the end, so an interrupted build
# never leaves a half-filled cache entry behind.
mkdir -p "$cache_root"
staging="$(mktemp -d "$cache_root/helm.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

echo "build-helm: building helm $helm_version (about 4 minutes on 2 cores the first time, longer while Go downloads the modules)" >&2
cd "$module_dir"
export CGO_ENABLED=0
# The version flag makes `helm version` print the pinned release instead of a bare "v4.3".
go build -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version" \
    -o "$staging/helm" helm.sh/helm/v4/cmd/helm

mkdir -p "$(dirname "$out")"
rm -rf "$out"
mv "$staging" "$out"
trap - EXIT
echo "$out/helm"
