#!/usr/bin/env bash
# Coverage-guided fuzzing of Patchloop's parsers of user and feed data
# (fuzz/fuzz_targets: osv, kev, inventory, version, duration, window) with
# cargo-fuzz and libFuzzer.
#
# Installs cargo-fuzz when missing (from crates.io, into ~/.cargo/bin). The
# machines have only the stable toolchain; cargo-fuzz needs nightly flags
# (-Zsanitizer), which RUSTC_BOOTSTRAP=1 enables on stable.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   Default: 20 seconds for each target (the CI pass). Each target reads and
#   grows its corpus in fuzz/corpus/<target> (committed; minimise with
#   `cargo fuzz cmin <target>` before committing) and is also seeded from the
#   real data in tests/fixtures. A crash fails the run, leaving the
#   reproducer in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-20}"
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(osv kev inventory version duration window)

seeds_of() {
  case "$1" in
    osv) echo tests/fixtures/osv/debian tests/fixtures/osv/ubuntu ;;
    kev) echo tests/fixtures/kev ;;
    inventory) echo tests/fixtures/dpkg tests/fixtures/apk ;;
    *) ;;
  esac
}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz >&2
fi

export RUSTC_BOOTSTRAP=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "fuzz: $t for ${seconds}s"
  # shellcheck disable=SC2046 # the seed directories are word lists
  if ! cargo fuzz run "$t" "fuzz/corpus/$t" $(seeds_of "$t") -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=1048576 \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $t failed (a crash leaves its input in fuzz/artifacts/$t/)"
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+ *DONE' "$log" || true
done
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crash"
