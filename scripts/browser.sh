#!/usr/bin/env bash
# Headless Chromium for the HTML report's rendering test (tests/report_html.rs),
# from Debian's own `chromium` package: no prebuilt browser is downloadable on
# these machines.
#
# Idempotent: when /usr/bin/chromium exists nothing is installed (no apt-get
# update either). Prints the browser's path.
#
# Usage: scripts/browser.sh [--print-path]
#   --print-path   only print the path; fail (exit 1) if it is not installed
set -euo pipefail

CHROMIUM=/usr/bin/chromium

log() { echo "browser: $*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ "${1:-}" = "--print-path" ]; then
  [ -x "$CHROMIUM" ] || { log "$CHROMIUM is not installed: run scripts/browser.sh"; exit 1; }
  echo "$CHROMIUM"
  exit 0
fi

if [ ! -x "$CHROMIUM" ]; then
  log "installing Debian's chromium (headless, for tests/report_html.rs)"
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2
  [ -x "$CHROMIUM" ] || { log "apt-get installed chromium but $CHROMIUM is missing"; exit 1; }
fi
echo "$CHROMIUM"
