#!/usr/bin/env bash
# Builds kube-apiserver, kubectl and etcd from the Go modules pinned in scripts/controlplane
# into a cache folder outside the work tree, and prints that folder on standard output.
# A later run with the same go.mod, go.sum and Go version reuses the cached binaries.
#
# The cache root is $CALSYNC_CACHE_DIR, else $XDG_CACHE_HOME/calsync-operator, else
# ~/.cache/calsync-operator.
set -euo pipefail

module_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/controlplane" && pwd)"
cache_root="${CALSYNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/calsync-operator}"

if ! command -v go >/dev/null 2>&1; then
    echo "build-control-plane: 'go' was not found on PATH; install Go 1.26 or newer" >&2
    exit 1
fi

# The key changes whenever a pinned version or the Go toolchain changes, so a stale binary
# is never reused.
key="$( { cat "$module_dir/go.mod" "$module_dir/go.sum"; go version; } | sha256sum | cut -c1-16)"
out="$cache_root/control-plane/$key"
binaries=(kube-apiserver kubectl etcd)

have_all=true
for binary in "${binaries[@]}"; do
    [ -x "$out/$binary" ] || have_all=false
done
if $have_all; then
    echo "$out"
    exit 0
fi

k8s_version="$(cd "$module_dir" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
k8s_minor="$(echo "$k8s_version" | cut -d. -f2)"
version_flags=""
for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    version_flags+=" -X $package.gitVersion=$k8s_version -X $package.gitMajor=1 -X $package.gitMinor=$k8s_minor"
done

# Build into a temporary folder and move it into place at the end, so an interrupted build
# never leaves a half-filled cache entry behind.
staging="$(mktemp -d "$cache_root/control-plane.build.XXXXXX" 2>/dev/null || { mkdir -p "$cache_root" && mktemp -d "$cache_root/control-plane.build.XXXXXX"; })"
trap 'rm -rf "$staging"' EXIT

echo "build-control-plane: building kube-apiserver, kubectl and etcd $k8s_version (takes 10 to 20 minutes on 2 cores the first time)" >&2
cd "$module_dir"
export CGO_ENABLED=0
go build -trimpath -ldflags "-s -w $version_flags" -o "$staging/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
go build -trimpath -ldflags "-s -w $version_flags" -o "$staging/kubectl" k8s.io/kubernetes/cmd/kubectl
go build -trimpath -ldflags "-s -w" -o "$staging/etcd" go.etcd.io/etcd/server/v3

mkdir -p "$(dirname "$out")"
rm -rf "$out"
mv "$staging" "$out"
trap - EXIT
echo "$out"
