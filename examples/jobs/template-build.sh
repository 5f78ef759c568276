#!/usr/bin/env bash
# Reference build Job for a Template rebuild: renders a Dockerfile that
# upgrades the scoped packages on top of the published image, builds and
# pushes it with a configurable builder, and reports the new image's
# packages as the ChangeRequest's result Inventory (image by digest, nonce),
# then ends its termination message with the result line the controller
# compares that Inventory with. See README.md.
set -euo pipefail

PL_SCRIPT='template-build'
# shellcheck source-path=SCRIPTDIR source=patchloop-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/patchloop-lib.sh"

usage() {
  cat <<'USAGE'
Usage: template-build.sh [--dry-run] [--help]

Runs in a Patchloop build Job. Renders a Dockerfile FROM $PATCHLOOP_BASE_IMAGE
that upgrades every package in $PATCHLOOP_PACKAGES_FILE (apt-get install
--only-upgrade, or dnf upgrade), builds and pushes it as
$PATCHLOOP_IMAGE_REPOSITORY:r$PATCHLOOP_REVISION, lists the new image's
packages and reports them with `patchloop inventory --change-request ...
--image REPOSITORY@DIGEST --nonce $PATCHLOOP_NONCE --result-line
$PATCHLOOP_TERMINATION_LOG`, which writes the result line (`result
image=sha256:<64 hex> packages=sha256:<64 hex>`) to the termination log: the
controller pins the result only if it is what that line says.

  --dry-run   check the input, print the Dockerfile and the commands; build
              and report nothing
  --help      this text

Environment (set by the controller): PATCHLOOP_PACKAGES_FILE,
PATCHLOOP_BASE_IMAGE, PATCHLOOP_REVISION, PATCHLOOP_NONCE,
PATCHLOOP_CHANGE_REQUEST, PATCHLOOP_TEMPLATE, PATCHLOOP_NAMESPACE,
PATCHLOOP_PLATFORM.
Set in the Template's buildJobTemplate:
  PATCHLOOP_IMAGE_REPOSITORY  where the new image is pushed (required)
  PATCHLOOP_IMAGE_TAG         its tag (r$PATCHLOOP_REVISION)
  PATCHLOOP_PACKAGE_MANAGER   apt or dnf (default: from PATCHLOOP_PLATFORM)
  PATCHLOOP_BUILD_COMMAND     shell snippet that builds $DOCKERFILE in $CONTEXT,
                              pushes $IMAGE and writes its digest to $DIGEST_FILE
                              (default: podman build + podman push --digestfile)
  PATCHLOOP_RUN_IN_IMAGE      shell snippet that runs its arguments in $IMAGE_REF
                              (default: podman run --rm --entrypoint "" "$IMAGE_REF")
  PATCHLOOP_BIN, PATCHLOOP_TERMINATION_LOG

Exit codes: 0 done, 1 failed, 2 refused (bad input).
USAGE
}

pl_args "$@"
need_purpose build
need_env PATCHLOOP_PACKAGES_FILE PATCHLOOP_BASE_IMAGE PATCHLOOP_REVISION PATCHLOOP_NONCE \
  PATCHLOOP_CHANGE_REQUEST PATCHLOOP_TEMPLATE PATCHLOOP_NAMESPACE PATCHLOOP_IMAGE_REPOSITORY
pl_family
pl_read_packages "$PATCHLOOP_PACKAGES_FILE" "$PL_FAMILY"
# These end up in the Dockerfile (FROM, LABEL) and in image names.
pl_check "$PATCHLOOP_BASE_IMAGE" "$PL_IMAGE_REF" "PATCHLOOP_BASE_IMAGE"
pl_check "$PATCHLOOP_REVISION" '^[1-9][0-9]{0,8}$' "PATCHLOOP_REVISION"
pl_check "$PATCHLOOP_NONCE" '^[A-Za-z0-9]{1,128}$' "PATCHLOOP_NONCE"
pl_check "$PATCHLOOP_CHANGE_REQUEST" "$PL_K8S_NAME" "PATCHLOOP_CHANGE_REQUEST"
pl_check "$PATCHLOOP_TEMPLATE" "$PL_K8S_NAME" "PATCHLOOP_TEMPLATE"
pl_check "$PATCHLOOP_IMAGE_REPOSITORY" "$PL_REPOSITORY" "PATCHLOOP_IMAGE_REPOSITORY"
tag=${PATCHLOOP_IMAGE_TAG:-r$PATCHLOOP_REVISION}
pl_check "$tag" "$PL_TAG" "PATCHLOOP_IMAGE_TAG"

pl_workdir
CONTEXT=$PL_WORK/context
DOCKERFILE=$CONTEXT/Dockerfile
DIGEST_FILE=$PL_WORK/digest
IMAGE=$PATCHLOOP_IMAGE_REPOSITORY:$tag
mkdir -p "$CONTEXT"

# Versions are minimums: the current candidate is installed, the controller
# checks the result (and the test Job checks it in the image). The upgrade
# runs as a script copied into the build context: it names only packages
# installed in the base image, in a form apt or dnf cannot read as an action
# (pl_install_script).
if [[ $PL_FAMILY == dpkg ]]; then
  pl_install_script dpkg "DEBIAN_FRONTEND=noninteractive apt-get update </dev/null
DEBIAN_FRONTEND=noninteractive apt-get install --only-upgrade -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold" >"$CONTEXT/patchloop-upgrade.sh"
  cleanup='rm -rf /var/lib/apt/lists/*'
else
  pl_install_script rpm "dnf upgrade -y --refresh" >"$CONTEXT/patchloop-upgrade.sh"
  cleanup='dnf clean all'
fi
cat >"$DOCKERFILE" <<DOCKERFILE
# Rendered by template-build.sh for ChangeRequest $PATCHLOOP_CHANGE_REQUEST.
FROM $PATCHLOOP_BASE_IMAGE
LABEL dev.patchloop.template="$PATCHLOOP_TEMPLATE" dev.patchloop.revision="$PATCHLOOP_REVISION" dev.patchloop.change-request="$PATCHLOOP_CHANGE_REQUEST"
COPY patchloop-upgrade.sh /tmp/patchloop-upgrade.sh
RUN sh /tmp/patchloop-upgrade.sh && rm -f /tmp/patchloop-upgrade.sh && $cleanup
DOCKERFILE

# shellcheck disable=SC2016 # expanded by bash -c below, with these variables set
build=${PATCHLOOP_BUILD_COMMAND:-'podman build --pull=always -f "$DOCKERFILE" -t "$IMAGE" "$CONTEXT" && podman push --digestfile "$DIGEST_FILE" "$IMAGE"'}
list=$PL_WORK/packages.txt
query=$(pl_query_command "$PL_FAMILY")
report() {
  local cmd=("$PL_PATCHLOOP" inventory --change-request "$PATCHLOOP_CHANGE_REQUEST"
    --image "$IMAGE_REF" --nonce "$PATCHLOOP_NONCE" -n "$PATCHLOOP_NAMESPACE"
    --reporter template-build --from-file "$(pl_input_format "$PL_FAMILY"):$list"
    --result-line "$PL_TERMINATION_LOG")
  if ((PL_DRY_RUN)); then pl_show "${cmd[@]}"; else "${cmd[@]}"; fi
}

if ((PL_DRY_RUN)); then
  IMAGE_REF="$PATCHLOOP_IMAGE_REPOSITORY@<digest>"
  echo "# $DOCKERFILE"
  cat "$DOCKERFILE"
  echo "# $CONTEXT/patchloop-upgrade.sh"
  cat "$CONTEXT/patchloop-upgrade.sh"
  echo "# build, with IMAGE=$IMAGE CONTEXT=$CONTEXT DOCKERFILE=$DOCKERFILE DIGEST_FILE=$DIGEST_FILE"
  printf '%s\n' "$build"
  pl_show_in_image "the new image's packages" "$query"
  echo "# report"
  report
  exit 0
fi

echo "$PL_SCRIPT: building $IMAGE from $PATCHLOOP_BASE_IMAGE"
rc=0
CONTEXT=$CONTEXT DOCKERFILE=$DOCKERFILE DIGEST_FILE=$DIGEST_FILE IMAGE=$IMAGE bash -c "$build" || rc=$?
((rc == 0)) || fail "the image build failed (exit $rc)"
digest=$(tr -d '[:space:]' <"$DIGEST_FILE" 2>/dev/null) || digest=
[[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] ||
  fail "the build wrote no image digest to DIGEST_FILE (expected sha256: and 64 hex digits)"
# The result names the image by digest: a tag can move, the digest is what
# was built and what the test Job and publication will use.
IMAGE_REF=$PATCHLOOP_IMAGE_REPOSITORY@$digest
pl_in_image "$query" >"$list" || fail "listing the packages of $IMAGE_REF failed"
report || fail "reporting the build result failed"
echo "$PL_SCRIPT: built $IMAGE_REF and reported it for $PATCHLOOP_CHANGE_REQUEST"
