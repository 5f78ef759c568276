# Patchloop developer entry points. `make test` is the one test command: it
# prepares the real control plane (cached after the first run), then runs
# every test.

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo demo-down test testenv helm browser crds crds-check chart-crds chart-crds-check deploy deploy-check fmt-check clippy lint fuzz fuzz-smoke ci

## The whole loop in one command: a local control plane (cached), the example
## fleet, the controller and simulated Job executors. DEMO_FLAGS=--approve
## approves the template rebuild without asking.
demo:
	scripts/demo.sh up $(DEMO_FLAGS)

## Stop the demo's controller and control plane.
demo-down:
	scripts/demo.sh down

## Build (or reuse the cached) etcd + kube-apiserver + kube-controller-manager.
testenv:
	scripts/testenv.sh

## Real Helm for the chart tests: a cached virtualenv with helm-sdkpy.
helm:
	scripts/helm.sh --setup >/dev/null

## Headless Chromium (Debian's `chromium`) for tests/report_html.rs, which
## renders the HTML fleet report in it.
browser:
	scripts/browser.sh >/dev/null

## The test command: control plane, Helm and Chromium, then unit, integration
## and oracle tests (benchmarks are run separately: `cargo bench`).
test: testenv helm browser
	eval "$$(scripts/testenv.sh --print-env)" && $(CARGO) test --no-fail-fast --lib --bins --tests

## Regenerate crds/ from the Rust types (never edit crds/ by hand).
crds:
	$(CARGO) run --quiet -- crds > crds/crds.yaml

## Fail when crds/ differs from what the types generate.
crds-check:
	$(CARGO) run --quiet -- crds | diff -u crds/crds.yaml - \
	  || { echo "crds/ is stale: run 'make crds'"; exit 1; }

## Regenerate the chart's CRD templates from crds/ (after `make crds`).
chart-crds:
	scripts/chart-crds.sh > charts/patchloop/templates/crds.yaml

## Fail when the chart's CRD templates differ from crds/.
chart-crds-check:
	scripts/chart-crds.sh | diff -u charts/patchloop/templates/crds.yaml - \
	  || { echo "the chart's CRDs are stale: run 'make chart-crds'"; exit 1; }

## Regenerate deploy/ from the chart's default render (real Helm, installed
## into a throwaway test control plane).
deploy: chart-crds testenv helm
	eval "$$(scripts/testenv.sh --print-env)" && PATCHLOOP_UPDATE_DEPLOY=1 \
	  $(CARGO) test --test deploy the_chart_installs

## The chart lints, its CRDs equal crds/, deploy/ equals its default render,
## and it installs, upgrades and uninstalls with sufficient, minimal RBAC.
deploy-check: chart-crds-check testenv helm
	eval "$$(scripts/testenv.sh --print-env)" && $(CARGO) test --test deploy

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

lint: fmt-check clippy

## Coverage-guided fuzzing of every parser of user and feed data (cargo
## fuzz, libFuzzer): FUZZ_SECONDS per target (default 600), corpora in
## fuzz/corpus/. Installs cargo-fuzz on first use.
FUZZ_SECONDS ?= 600
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

## The short fuzz pass CI runs: 20 seconds per target over the kept corpora.
fuzz-smoke:
	scripts/fuzz.sh 20

## What CI runs (`test` runs tests/deploy.rs too; deploy-check alone is the
## quick way to check the chart and deploy/).
ci: lint crds-check chart-crds-check test fuzz-smoke
