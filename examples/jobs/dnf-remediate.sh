#!/usr/bin/env bash
# Reference remediation Job for dnf-based machines (RHEL, AlmaLinux, Rocky,
# Fedora, ...) reached over SSH: upgrades the packages the controller lists,
# checks them on the machine with rpm, and reports the machine's inventory.
# See README.md.
set -euo pipefail

PL_SCRIPT='dnf-remediate'
# shellcheck source-path=SCRIPTDIR source=patchloop-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/patchloop-lib.sh"

usage() {
  cat <<'USAGE'
Usage: dnf-remediate.sh [--dry-run] [--help]

Runs in a Patchloop remediation Job. Upgrades every package in
$PATCHLOOP_PACKAGES_FILE that is installed on the machine in $PATCHLOOP_TARGET
over SSH (dnf upgrade NAME.ARCH; a package that is not installed is
skipped), checks each is at least its minimum fixed version (rpm's own
version comparison, on the machine), and reports the machine's inventory
(rpm -qa, read by `patchloop inventory --from-file rpm-qa:...`).

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
pl_read_packages "$PATCHLOOP_PACKAGES_FILE" rpm
pl_target
pl_workdir
pl_ssh_setup

# Versions are minimums: dnf upgrade installs the newest available, then the
# result is checked. Only packages that are installed on the machine are
# named, as NAME.ARCH (pl_install_script). --refresh because a cached
# repository index may predate the fix; stdin is /dev/null because the
# script arrives on sh's stdin.
install=$(pl_install_script rpm "${PL_SUDO}dnf upgrade -y --refresh")
pl_remediate rpm "$install" dnf-remediate
