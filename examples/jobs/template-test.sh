#!/usr/bin/env bash
# Reference test Job for a Template rebuild: checks in the new image that
# every scoped package is at least its fixed version, then runs a smoke
# test in it. Exit 0 passes. See README.md.
set -euo pipefail

PL_SCRIPT='template-test'
# shellcheck source-path=SCRIPTDIR source=patchloop-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/patchloop-lib.sh"

usage() {
  cat <<'USAGE'
Usage: template-test.sh [--dry-run] [--help]

Runs in a Patchloop test Job. In $PATCHLOOP_IMAGE, checks every package in
$PATCHLOOP_PACKAGES_FILE is at least its minimum fixed version (or not
installed), with the image's own dpkg or rpm, then runs the smoke test.

  --dry-run   check the input, print the commands; run nothing
  --help      this text

Environment (set by the controller): PATCHLOOP_IMAGE, PATCHLOOP_PACKAGES_FILE,
PATCHLOOP_PLATFORM.
Set in the Template's testJobTemplate:
  PATCHLOOP_PACKAGE_MANAGER   apt or dnf (default: from PATCHLOOP_PLATFORM)
  PATCHLOOP_SMOKE_TEST        shell snippet run with sh -c in the image
                              (default: dpkg --audit, or rpm -Va --nofiles
                              --noscripts: the package database is consistent;
                              empty: none)
  PATCHLOOP_RUN_IN_IMAGE      shell snippet that runs its arguments in $IMAGE_REF
                              (default: podman run --rm --entrypoint "" "$IMAGE_REF")
  PATCHLOOP_TERMINATION_LOG

Exit codes: 0 passed, 1 failed, 2 refused (bad input).
USAGE
}

pl_args "$@"
need_purpose test
need_env PATCHLOOP_IMAGE PATCHLOOP_PACKAGES_FILE
pl_family
pl_read_packages "$PATCHLOOP_PACKAGES_FILE" "$PL_FAMILY"
pl_check "$PATCHLOOP_IMAGE" "$PL_IMAGE_REF" "PATCHLOOP_IMAGE"
IMAGE_REF=$PATCHLOOP_IMAGE

if [[ $PL_FAMILY == dpkg ]]; then
  default_smoke='dpkg --audit'
else
  default_smoke='rpm -Va --nofiles --noscripts'
fi
smoke=${PATCHLOOP_SMOKE_TEST-$default_smoke}
verify=$(pl_verify_script "$PL_FAMILY")

if ((PL_DRY_RUN)); then
  pl_show_in_image "package versions" "$verify"
  [[ -z $smoke ]] || pl_show_in_image "smoke test" "$smoke"
  exit 0
fi

rc=0
out=$(pl_in_image "$verify") || rc=$?
printf '%s\n' "$out"
((rc == 0)) || fail "checking the package versions in $IMAGE_REF failed (exit $rc)"
problems=$(pl_verdicts "$PL_FAMILY" "$out")
[[ -z $problems ]] || fail "$problems"
if [[ -n $smoke ]]; then
  pl_in_image "$smoke" || rc=$?
  ((rc == 0)) || fail "the smoke test failed in $IMAGE_REF (exit $rc): $smoke"
fi
echo "$PL_SCRIPT: $IMAGE_REF passed"
