# Developer and CI entry points. Longer logic lives in scripts/.

.DEFAULT_GOAL := help
SHELL := /bin/bash

.PHONY: help test demo crds check-crds control-plane helm build lint release sim bench

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

test: ## Run every check and test, installing and building what is missing (what CI runs)
# CI has no Docker engine, so it builds the release binary with the Dockerfile's build script
# instead (about 7 minutes on 2 cores from a fresh clone), before the tests so that their
# totals close the output. Developers run `make release`. The tools come first, because a
# fresh machine may lack the C compiler that the release build needs.
	@if [ "$${CI:-}" = true ]; then \
		scripts/install-tools.sh && \
		release_started=$$SECONDS && scripts/build-release.sh && \
		echo "test: the release build took $$((SECONDS - release_started)) s" >&2; \
	fi
	scripts/test.sh

demo: ## Run the operator on a local control plane and the simulator, end to end, and clean up
	scripts/demo.sh

crds: ## Regenerate crds/ from the Rust types and copy them into the Helm chart
	cargo run --quiet --locked --bin calsync-operator -- crds --output-dir crds
	rm -f charts/calsync-operator/crds/*.yaml
	cp crds/*.yaml charts/calsync-operator/crds/

check-crds: ## Fail when crds/ or the chart's copy differs from the Rust types
	scripts/check-crds.sh

control-plane: ## Build kube-apiserver, kubectl and etcd into the cache and print their folder
	scripts/build-control-plane.sh

helm: ## Build helm into the cache and print its path
	scripts/build-helm.sh

build: ## Build every binary, test and example
	cargo build --locked --all-targets

lint: ## Check formatting and run clippy with warnings as errors
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

release: ## Build the release binary with the same script as the Dockerfile's build stage
	scripts/build-release.sh

# The simulator's settings for `make sim`; override on the command line, for example
# `make sim SIM_ARGS="--later-version --latency 20ms"`.
SIM_LISTEN ?= 127.0.0.1:8090
SIM_TOKEN ?= dev-token
SIM_ARGS ?=

sim: ## Run the MyTimetable simulator on SIM_LISTEN, token SIM_TOKEN, extra flags in SIM_ARGS
	MYTIMETABLE_SIM_TOKEN='$(SIM_TOKEN)' cargo run --quiet --locked --bin mytimetable-sim -- --listen '$(SIM_LISTEN)' $(SIM_ARGS)

# The benchmark's settings; override on the command line, for example
# `make bench N=1000 STEADY=2m` or `make bench BENCH_ARGS="--max-concurrent-requests 16"`.
N ?= 1000 10000
LATENCY ?= 20ms
STEADY ?= 10m
BENCH_ARGS ?=

bench: ## Measure converge, steady state, memory and the read-only API (docs/benchmarks.md)
	N='$(N)' LATENCY='$(LATENCY)' STEADY='$(STEADY)' BENCH_ARGS='$(BENCH_ARGS)' scripts/bench.sh
