#!/usr/bin/env bash
# Installs what `make test` needs and a fresh machine may lack: a C compiler (ring, the
# crypto backend of rustls, compiles C code), Lua 5.1, and the rustfmt and clippy components.
# Go and the Rust toolchain come with the machine; the script only checks that they exist,
# because neither Debian's Go nor a toolchain download can supply the versions required.
set -euo pipefail

missing_packages=()
command -v cc >/dev/null 2>&1 || missing_packages+=(gcc libc6-dev)
command -v make >/dev/null 2>&1 || missing_packages+=(make)
# Lua 5.1 runs the Argo CD health script in gitops/ in its test; Argo CD's interpreter
# implements that version of the language.
command -v lua5.1 >/dev/null 2>&1 || missing_packages+=(lua5.1)
if [ ${#missing_packages[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-tools: missing Debian packages ${missing_packages[*]}; install them with apt-get as root" >&2
        exit 1
    fi
    echo "install-tools: installing ${missing_packages[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_packages[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "install-tools: 'cargo' was not found on PATH; install Rust 1.89 or newer with rustup" >&2
    exit 1
fi
if ! command -v go >/dev/null 2>&1; then
    echo "install-tools: 'go' was not found on PATH; install Go 1.26 or newer (it builds kube-apiserver, kubectl, etcd and helm)" >&2
    exit 1
fi

missing_components=()
cargo fmt --version >/dev/null 2>&1 || missing_components+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || missing_components+=(clippy)
if [ ${#missing_components[@]} -gt 0 ]; then
    if ! command -v rustup >/dev/null 2>&1; then
        echo "install-tools: missing Rust components ${missing_components[*]} and no rustup to install them" >&2
        exit 1
    fi
    echo "install-tools: installing Rust components ${missing_components[*]} with rustup" >&2
    rustup component add "${missing_components[@]}"
fi
