#!/usr/bin/env bash
# Reference remediation Job for Debian and Ubuntu machines reached over SSH:
# installs at least the fixed versions the controller lists, checks them on
# the machine with dpkg, and reports the machine's inventory. See README.md.
set -euo pipefail

PL_SCRIPT='apt-remediate'
# shellcheck source-path=SCRIPTDIR source=patchloop-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/patchloop-lib.sh"

usage() {
  cat <<'USAGE'
Usage: apt-remediate.sh [--dry-run] [--help]

Runs in a Patchloop remediation Job. Installs the current candidate of every
package in $PATCHLOOP_PACKAGES_FILE that is installed on the machine in
$PATCHLOOP_TARGET over SSH (apt-get install --only-upgrade NAME:ARCH; a
package that is not installed is skipped), checks each is at least its minimum
fixed version (dpkg --compare-versions, on the machine), and reports the
machine's inventory with `patchloop inventory`.

  --dry-run   check the input and the pinned host key, print the commands
              that would run on the machine and locally; connect to nothing
  --help      this text

Environment (set by the controller): PATCHLOOP_TARGET, PATCHLOOP_PACKAGES_FILE,
PATCHLOOP_WORKLOAD, PATCHLOOP_NAMESPACE. Optional: PATCHLOOP_SSH_DIR
(/etc/patchloop/ssh: id_ed25519 and known_hosts), PATCHLOOP_SSH_KEY,
PATCHLOOP_SSH_KNOWN_HOSTS, PATCHLOOP_SSH_USER (root; the target's "user"
wins), PATCHLOOP_BIN (patchloop), PATCHLOOP_TERMINATION_LOG
(/dev/termination-log).

Exit codes: 0 done, 1 failed, 2 refused (bad input or unknown target).
USAGE
}

pl_args "$@"
need_purpose remediation
need_env PATCHLOOP_PACKAGES_FILE PATCHLOOP_WORKLOAD PATCHLOOP_NAMESPACE
pl_read_packages "$PATCHLOOP_PACKAGES_FILE" dpkg
pl_target
pl_workdir
pl_ssh_setup

# Versions are minimums: Debian keeps only the latest security update, so
# the current candidate is installed and then checked. Only packages that
# are installed on the machine are named, as NAME:ARCH (pl_install_script).
# --force-confold keeps locally changed configuration files instead of
# prompting; stdin is /dev/null because the script itself arrives on sh's
# stdin.
apt="${PL_SUDO}env DEBIAN_FRONTEND=noninteractive apt-get"
install=$(pl_install_script dpkg "$apt update -q </dev/null
$apt install --only-upgrade -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold")
pl_remediate dpkg "$install" apt-remediate
