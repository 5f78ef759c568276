#!/usr/bin/env bash
# Real Helm for the chart's tests and CI: no `helm` binary is downloadable on
# these machines, but the PyPI package `helm-sdkpy` bundles the Helm library
# behind a Python API. This script keeps a virtualenv with it and runs
# scripts/helm.py (lint, install, upgrade, uninstall) in it.
#
# Idempotent and cached: the venv lives in
# ${PATCHLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/patchloop}/helm-sdkpy-<version>;
# later runs only check that it imports.
#
# Usage: scripts/helm.sh --setup             install (if needed) and print the venv's python
#        scripts/helm.sh <helm.py arguments>  e.g. lint charts/patchloop
set -euo pipefail

HELM_SDKPY_VERSION="0.1.32"
CACHE="${PATCHLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/patchloop}"
VENV="$CACHE/helm-sdkpy-$HELM_SDKPY_VERSION"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

ready() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import helm_sdkpy' 2>/dev/null; }

if ! ready; then
  mkdir -p "$CACHE"
  # One installer at a time (tests may call this concurrently).
  exec 9>"$CACHE/.helm-sdkpy.lock"
  flock 9
  if ! ready; then
    python="${PATCHLOOP_PYTHON:-python3}"
    command -v "$python" >/dev/null || { echo "helm.sh: $python not found (Python 3.11+ needed)" >&2; exit 1; }
    echo "helm.sh: installing helm-sdkpy $HELM_SDKPY_VERSION into $VENV" >&2
    rm -rf "$VENV"
    "$python" -m venv "$VENV" >&2
    # helm-sdkpy declares Python >= 3.12 but works on 3.11.
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --ignore-requires-python \
      "helm-sdkpy==$HELM_SDKPY_VERSION" >&2
    ready || { echo "helm.sh: helm-sdkpy does not import" >&2; rm -rf "$VENV"; exit 1; }
  fi
  exec 9>&-
fi

if [ "${1:-}" = "--setup" ]; then
  echo "$VENV/bin/python"
  exit 0
fi
# Helm's own cache/config/data (repositories, registry logins): kept out of ~.
export HELM_CACHE_HOME="${HELM_CACHE_HOME:-$CACHE/helm/cache}"
export HELM_CONFIG_HOME="${HELM_CONFIG_HOME:-$CACHE/helm/config}"
export HELM_DATA_HOME="${HELM_DATA_HOME:-$CACHE/helm/data}"
exec "$VENV/bin/python" "$HERE/helm.py" "$@"
