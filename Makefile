# Patchloop developer entry points. `make test` is the one test command: it
# prepares the real control plane (cached after the first run), then runs
# every test.

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test testenv crds crds-check fmt-check clippy lint ci

## Build (or reuse the cached) etcd + kube-apiserver + kube-controller-manager.
testenv:
	scripts/testenv.sh

## The test command: control plane, then unit, integration and oracle tests
## (benchmarks are run separately: `cargo bench`).
test: testenv
	eval "$$(scripts/testenv.sh --print-env)" && $(CARGO) test --lib --bins --tests

## Regenerate crds/ from the Rust types (never edit crds/ by hand).
crds:
	$(CARGO) run --quiet -- crds > crds/crds.yaml

## Fail when crds/ differs from what the types generate.
crds-check:
	$(CARGO) run --quiet -- crds | diff -u crds/crds.yaml - \
	  || { echo "crds/ is stale: run 'make crds'"; exit 1; }

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

lint: fmt-check clippy

## What CI runs.
ci: lint crds-check test
