# shellcheck shell=bash disable=SC2034
# (SC2034: the PL_* variables set here are read by the sourcing scripts.)
# Shared by the reference job scripts in this directory: sourced, never run.
#
# Package names and versions from the contract's package list end up inside
# shell text run on a machine (over SSH) or in an image. They are therefore
# checked against the package managers' own character sets and anything else
# is refused, never quoted: a list that needs quoting is not a package list.
#
# Exit codes of every script: 0 done, 1 failed (retrying may help: network,
# apt/dnf, a version still too low), 2 refused (bad input, unknown target:
# retrying cannot help).

PL_TERMINATION_LOG=${PATCHLOOP_TERMINATION_LOG:-/dev/termination-log}
PL_PATCHLOOP=${PATCHLOOP_BIN:-patchloop}
PL_DRY_RUN=0
PL_WORK=

# die CODE MESSAGE...: to stderr and, when Kubernetes provides one, to the
# termination log, which the controller copies into the object's status.
die() {
  local code=$1
  shift
  printf '%s: %s\n' "${PL_SCRIPT:-job}" "$*" >&2
  if [[ -w $PL_TERMINATION_LOG ]]; then
    printf '%s\n' "$*" >"$PL_TERMINATION_LOG" 2>/dev/null || true
  fi
  exit "$code"
}
refuse() { die 2 "refused: $*"; }
fail() { die 1 "$@"; }

# pl_args "$@": --dry-run and --help; anything else is refused. Each script
# defines usage().
pl_args() {
  while (($#)); do
    case $1 in
      --dry-run) PL_DRY_RUN=1 ;;
      -h | --help)
        usage
        exit 0
        ;;
      *)
        usage >&2
        refuse "unknown argument: $(printf '%q' "$1")"
        ;;
    esac
    shift
  done
}

# pl_workdir: a private scratch directory, removed on exit (it may hold a
# copy of the SSH key and package lists).
pl_workdir() {
  PL_WORK=$(mktemp -d "${TMPDIR:-/tmp}/patchloop-job.XXXXXX")
  trap 'rm -rf "$PL_WORK"' EXIT
}

need_env() {
  local v
  for v; do
    [[ -n ${!v:-} ]] || refuse "missing environment variable $v"
  done
}

# need_purpose PURPOSE: a script run by the wrong kind of Job (a build
# template pointing at a remediation script) is refused.
need_purpose() {
  if [[ -n ${PATCHLOOP_PURPOSE:-} && $PATCHLOOP_PURPOSE != "$1" ]]; then
    refuse "PATCHLOOP_PURPOSE is $PATCHLOOP_PURPOSE; this script is for $1 Jobs"
  fi
}

# pl_family: dpkg or rpm, from PATCHLOOP_PACKAGE_MANAGER (apt, dnf) or the
# distribution part of PATCHLOOP_PLATFORM.
pl_family() {
  case ${PATCHLOOP_PACKAGE_MANAGER:-} in
    apt) PL_FAMILY=dpkg ;;
    dnf) PL_FAMILY=rpm ;;
    '')
      need_env PATCHLOOP_PLATFORM
      case ${PATCHLOOP_PLATFORM%%:*} in
        Debian | Ubuntu) PL_FAMILY=dpkg ;;
        AlmaLinux | 'Rocky Linux' | 'Red Hat' | Fedora | CentOS | 'Oracle Linux') PL_FAMILY=rpm ;;
        *) refuse "PATCHLOOP_PLATFORM names a distribution with neither apt nor dnf; set PATCHLOOP_PACKAGE_MANAGER to apt or dnf if it has one" ;;
      esac
      ;;
    *) refuse "PATCHLOOP_PACKAGE_MANAGER must be apt or dnf" ;;
  esac
}

# Debian policy 5.6.1 and 5.6.12 (plus dpkg's :arch qualifier, which the
# controller adds when one name is installed for several architectures);
# rpm's names and [epoch:]version[-release] with the characters rpm-based
# distributions use (rpm's caret is left out: it is a shell metacharacter in
# some shells and no advisory uses it). The same grammar as the controller's
# (src/engine/package_grammar.rs), plus: a name never ends in '-' (apt reads
# that as "remove") and never starts with '-' (an option). A trailing '+'
# (g++) stays valid: names reach apt only as NAME:ARCH of an installed
# package (pl_install_script), which apt cannot read as an action.
PL_DPKG_NAME='^[a-z0-9][a-z0-9+.-]*[a-z0-9+.](:[a-z0-9]([a-z0-9-]*[a-z0-9])?)?$'
PL_DPKG_VERSION='^([0-9]+:)?[0-9][A-Za-z0-9.+~-]*$'
PL_RPM_NAME='^[A-Za-z0-9_]([A-Za-z0-9._+-]*[A-Za-z0-9_+])?(:[A-Za-z0-9_]+)?$'
PL_RPM_VERSION='^([0-9]+:)?[A-Za-z0-9._+~]+(-[A-Za-z0-9._+~]+)?$'
PL_MAX_FIELD=200
PL_MAX_LINE=1024

# pl_read_packages FILE FAMILY: fills PL_NAMES, PL_MINS and PL_SOURCES from
# the contract's `name minimum-fixed-version [source]` lines. A bad line is
# refused naming its number and field, never echoing it: it may be an
# action word, a control sequence or a megabyte.
pl_read_packages() {
  local file=$1 family=$2 name_re version_re line name min source extra n=0
  case $family in
    dpkg) name_re=$PL_DPKG_NAME version_re=$PL_DPKG_VERSION ;;
    rpm) name_re=$PL_RPM_NAME version_re=$PL_RPM_VERSION ;;
  esac
  [[ -f $file && -r $file ]] || refuse "the package list $file does not exist or is unreadable"
  PL_NAMES=() PL_MINS=() PL_SOURCES=()
  while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    ((${#line} <= PL_MAX_LINE)) ||
      refuse "$file line $n: longer than $PL_MAX_LINE characters"
    [[ $line != *[[:cntrl:]]* ]] ||
      refuse "$file line $n: contains a control character"
    [[ $line =~ ^[[:space:]]*$ ]] && continue
    read -r name min source extra <<<"$line"
    if [[ -z $min || -n $extra ]]; then
      refuse "$file line $n: expected \"name minimum-fixed-version [source]\""
    fi
    [[ ${#name} -le $PL_MAX_FIELD && $name =~ $name_re ]] ||
      refuse "$file line $n: field 1 is not a valid $family package name (a name the package manager could read as an action, option or pattern is refused)"
    [[ ${#min} -le $PL_MAX_FIELD && $min =~ $version_re ]] ||
      refuse "$file line $n: field 2 is not a valid $family version"
    if [[ -n $source ]]; then
      [[ ${#source} -le $PL_MAX_FIELD && $source =~ $name_re && $source != *:* ]] ||
        refuse "$file line $n: field 3 is not a valid $family source package name"
    fi
    PL_NAMES+=("$name")
    PL_MINS+=("$min")
    PL_SOURCES+=("${source:-}")
  done <"$file"
  ((${#PL_NAMES[@]} > 0)) || refuse "the package list $file is empty: nothing to install"
}

# pl_install_script FAMILY COMMAND: a POSIX sh script that runs COMMAND
# (apt-get install ..., dnf upgrade ...) followed by the installed packages
# among PL_NAMES, each in a form the package manager reads as exactly one
# installed package and never as an action or a pattern: dpkg's NAME:ARCH
# (apt-get(8): a trailing '-' removes, '+' installs, '=' and '/' select
# versions and releases, and a name that is no package is tried as a pattern;
# an architecture never ends in those), rpm's NAME.ARCH. "Installed" is an
# exact match in the package database's full listing (never a pattern
# lookup). A package that is not installed is skipped and reported, never
# installed; when none is installed COMMAND does not run.
pl_install_script() {
  local family=$1 command=$2 name
  # -f: $args is split on purpose, and must never glob.
  printf 'set -euf\n'
  if [[ $family == dpkg ]]; then
    # shellcheck disable=SC2016 # expanded by dpkg-query on the machine
    printf '%s\n' 'installed=$(dpkg-query -W -f='\''${db:Status-Abbrev}|${Package}|${Architecture}\n'\'' </dev/null)' \
      'pick() { printf '\''%s\n'\'' "$installed" | awk -F'\''|'\'' -v want="$1" '\''substr($1, 2, 1) == "i" && ($2 == want || $2 ":" $3 == want) { print $2 ":" $3 }'\''; }'
  else
    # shellcheck disable=SC2016 # expanded by rpm on the machine
    printf '%s\n' 'installed=$(rpm -qa --queryformat '\''%{NAME}|%{ARCH}\n'\'' </dev/null)' \
      'pick() { printf '\''%s\n'\'' "$installed" | awk -F'\''|'\'' -v want="$1" '\''$2 != "(none)" && ($1 == want || $1 "." $2 == want) { print $1 "." $2 }'\'' | sort -u; }'
  fi
  printf 'args=\n'
  printf 'for p in'
  for name in "${PL_NAMES[@]}"; do
    if [[ $family == rpm ]]; then printf ' %s' "$(pl_rpm_name "$name")"; else printf ' %s' "$name"; fi
  done
  printf '; do\n'
  # shellcheck disable=SC2016 # expanded on the machine
  printf '%s\n' '  q=$(pick "$p")' \
    '  if [ -z "$q" ]; then echo "skipped $p: not installed on this machine"; continue; fi' \
    '  args="$args $q"' \
    'done' \
    'if [ -z "$args" ]; then echo "nothing to upgrade: no listed package is installed"; exit 0; fi'
  # shellcheck disable=SC2016 # $args is expanded on the machine
  printf '%s $args </dev/null\n' "$command"
}

# pl_rpm_name NAME: dnf and rpm spell the controller's `glibc:x86_64` as
# `glibc.x86_64`.
pl_rpm_name() { printf '%s' "${1/:/.}"; }

# pl_verify_script FAMILY: a POSIX sh script that prints one verdict line per
# package, `ok|low|absent NAME INSTALLED MINIMUM`, comparing with the
# machine's (or image's) own package tools. A package compares on its source
# package's version when the list names a source, as the controller does. A
# package that is not installed is `absent`: it cannot be vulnerable.
pl_verify_script() {
  local i field
  if [[ $1 == dpkg ]]; then
    # Every installed instance (one per architecture) must be high enough.
    cat <<'SCRIPT'
set -eu
check() {
  q=$(dpkg-query -W -f="\${db:Status-Abbrev}|\${$3}\n" "$1" 2>/dev/null </dev/null) || q=
  verdict="absent $1 - $2"
  while IFS='|' read -r state have; do
    case $state in ?i*) ;; *) continue ;; esac
    if dpkg --compare-versions "$have" ge "$2" </dev/null; then
      [ "${verdict%% *}" = low ] || verdict="ok $1 $have $2"
    else
      verdict="low $1 $have $2"
    fi
  done <<EOF
$q
EOF
  echo "$verdict"
}
SCRIPT
    for i in "${!PL_NAMES[@]}"; do
      field=Version
      [[ -z ${PL_SOURCES[i]} ]] || field=source:Version
      printf 'check %s %s %s\n' "${PL_NAMES[i]}" "${PL_MINS[i]}" "$field"
    done
  else
    # rpm's labelCompare: epochs as numbers, then version, then release with
    # rpm's own rpm.vercmp (rpm's built-in Lua, present wherever rpm is; no
    # rpmdevtools needed). rpm.vercmp compares bare strings before rpm 4.16
    # and whole epoch:version-release strings since; given one part at a
    # time it means the same in both. A minimum without a release matches
    # any release.
    # Install-only packages (kernel) keep older versions installed, so the
    # newest instance counts.
    cat <<'SCRIPT'
set -eu
vercmp() { rpm --eval "%{lua: print(rpm.vercmp('$1', '$2'))}" </dev/null; }
ge() {
  case $1 in *:*) he=${1%%:*} hvr=${1#*:} ;; *) he=0 hvr=$1 ;; esac
  case $2 in *:*) me=${2%%:*} mvr=${2#*:} ;; *) me=0 mvr=$2 ;; esac
  [ "$he" -eq "$me" ] || { [ "$he" -gt "$me" ]; return; }
  case $hvr in *-*) hv=${hvr%-*} hr=${hvr##*-} ;; *) hv=$hvr hr= ;; esac
  case $mvr in *-*) mv=${mvr%-*} mr=${mvr##*-} ;; *) mv=$mvr mr= ;; esac
  c=$(vercmp "$hv" "$mv")
  [ "$c" = 0 ] || { [ "$c" = 1 ]; return; }
  if [ -z "$mr" ] || [ -z "$hr" ]; then return 0; fi
  [ "$(vercmp "$hr" "$mr")" != -1 ]
}
check() {
  q=$(rpm -q --qf '%{EPOCHNUM}:%{VERSION}-%{RELEASE}|%{SOURCERPM}\n' "$1" 2>/dev/null </dev/null) || q=
  verdict="absent $1 - $2"
  while IFS='|' read -r evr srpm; do
    [ -n "$evr" ] || continue
    have=$evr
    if [ "$3" = source ] && [ -n "$srpm" ] && [ "$srpm" != "(none)" ]; then
      # The source rpm's version-release with the binary's epoch.
      nvr=${srpm%.src.rpm} && nvr=${nvr%.nosrc.rpm}
      r=${nvr##*-} && nv=${nvr%-*}
      have=${evr%%:*}:${nv##*-}-$r
    fi
    if ge "$have" "$2"; then
      verdict="ok $1 $have $2"
    elif [ "${verdict%% *}" != ok ]; then
      verdict="low $1 $have $2"
    fi
  done <<EOF
$q
EOF
  echo "$verdict"
}
SCRIPT
    for i in "${!PL_NAMES[@]}"; do
      field=version
      [[ -z ${PL_SOURCES[i]} ]] || field=source
      printf 'check %s %s %s\n' "$(pl_rpm_name "${PL_NAMES[i]}")" "${PL_MINS[i]}" "$field"
    done
  fi
}

# pl_verdicts FAMILY OUTPUT: prints why the packages fall short (nothing when
# every package is at least its minimum or absent); a package without a
# verdict means the check did not finish and counts as a failure.
pl_verdicts() {
  local family=$1 output=$2 word name have min i problems=()
  local -A verdict=()
  while read -r word name have min; do
    case $word in ok | low | absent) verdict[$name]="$word $have $min" ;; esac
  done <<<"$output"
  for i in "${!PL_NAMES[@]}"; do
    name=${PL_NAMES[i]}
    [[ $family == dpkg ]] || name=$(pl_rpm_name "$name")
    read -r word have min <<<"${verdict[$name]:-none - -}"
    case $word in
      ok | absent) ;;
      low) problems+=("$name $have is below the fixed version ${PL_MINS[i]}${PL_SOURCES[i]:+ (source ${PL_SOURCES[i]})}") ;;
      *) problems+=("$name was not checked") ;;
    esac
  done
  for i in "${!problems[@]}"; do
    ((i == 0)) || printf '; '
    printf '%s' "${problems[i]}"
  done
}

# pl_query_command FAMILY: the package list command whose output
# `patchloop inventory --from-file` reads (dpkg-query or rpm-qa format: the
# formats of src/engine/inventory.rs).
pl_query_command() {
  if [[ $1 == dpkg ]]; then
    printf '%s\n' "dpkg-query -W -f='\${db:Status-Abbrev}\\t\${Package}\\t\${Version}\\t\${source:Package}\\t\${source:Version}\\t\${Architecture}\\n' </dev/null"
  else
    printf '%s\n' "rpm -qa --queryformat '%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\t%{SOURCERPM}\\t%{ARCH}\\n' </dev/null"
  fi
}

# pl_input_format FAMILY: the matching --from-file format.
pl_input_format() {
  if [[ $1 == dpkg ]]; then echo dpkg-query; else echo rpm-qa; fi
}

# pl_show ARGV...: a command as a shell line, for --dry-run.
pl_show() {
  local out
  printf -v out '%q ' "$@"
  printf '%s\n' "${out% }"
}

# --- SSH (remediation) ------------------------------------------------------

# pl_target: PATCHLOOP_TARGET (the Workload's spec.target as JSON, read with
# jq) into PL_ADDRESS, PL_USER and PL_PORT, each checked: they become ssh
# arguments and the known_hosts lookup key.
pl_target() {
  need_env PATCHLOOP_TARGET
  local parsed fields
  parsed=$(jq -r '
      if type == "object" and (.address | type) == "string" then
        .address, (.user // "" | tostring), (.port // 22 | tostring)
      else error("not an object with an address") end' <<<"$PATCHLOOP_TARGET" 2>/dev/null) ||
    refuse "PATCHLOOP_TARGET (the Workload's spec.target) is not a JSON object with a string \"address\""
  mapfile -t fields <<<"$parsed"
  ((${#fields[@]} == 3)) || refuse "PATCHLOOP_TARGET (the Workload's spec.target) must be one JSON object"
  PL_ADDRESS=${fields[0]}
  PL_USER=${fields[1]:-${PATCHLOOP_SSH_USER:-root}}
  PL_PORT=${fields[2]}
  # A host name or IPv4 address, or an IPv6 address; never something ssh
  # could read as an option.
  if ! [[ $PL_ADDRESS =~ ^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$ ||
    ($PL_ADDRESS == *:* && $PL_ADDRESS =~ ^[0-9A-Fa-f:.]{2,45}$) ]]; then
    refuse "spec.target.address is not a host name or IP address"
  fi
  [[ $PL_USER =~ ^[a-z_][a-z0-9_.-]{0,31}$ ]] ||
    refuse "spec.target.user is not a valid user name"
  if ! [[ $PL_PORT =~ ^[0-9]{1,5}$ ]] || ((10#$PL_PORT < 1 || 10#$PL_PORT > 65535)); then
    refuse "spec.target.port is not a port number"
  fi
  PL_PORT=$((10#$PL_PORT))
}

# pl_ssh_setup: refuses a Workload whose host key is not pinned in the
# policy's known_hosts *before* the private key is touched, then prepares
# ssh's arguments. Keys are pinned per Workload, not per address: the
# known_hosts entry is named NAMESPACE/WORKLOAD and ssh looks it up by that
# name (HostKeyAlias), so a Workload that points its address at another
# machine cannot borrow that machine's pin. ssh itself enforces the pin
# (StrictHostKeyChecking=yes against that file only, never learning or
# rewriting keys), so a target that presents another key fails too.
pl_ssh_setup() {
  local dir=${PATCHLOOP_SSH_DIR:-/etc/patchloop/ssh}
  local known_hosts=${PATCHLOOP_SSH_KNOWN_HOSTS:-$dir/known_hosts}
  local key=${PATCHLOOP_SSH_KEY:-$dir/id_ed25519}
  # Kubernetes names (a namespace is a DNS label, a Workload a DNS
  # subdomain): no ',', '*', '?', '!' or whitespace, which known_hosts
  # patterns and ssh -o would read.
  [[ $PATCHLOOP_NAMESPACE =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]] ||
    refuse "PATCHLOOP_NAMESPACE is not a Kubernetes namespace name"
  [[ $PATCHLOOP_WORKLOAD =~ $PL_K8S_NAME ]] ||
    refuse "PATCHLOOP_WORKLOAD is not a Kubernetes object name"
  PL_HOST_KEY_ALIAS=$PATCHLOOP_NAMESPACE/$PATCHLOOP_WORKLOAD
  # ssh -o splits its value on whitespace.
  [[ $known_hosts != *[[:space:]]* && $key != *[[:space:]]* ]] ||
    refuse "SSH file paths must not contain whitespace"
  [[ -f $known_hosts && -r $known_hosts ]] ||
    refuse "no pinned host keys: $known_hosts is missing (mount the policy's SSH Secret)"
  if ! ssh-keygen -F "$PL_HOST_KEY_ALIAS" -f "$known_hosts" >/dev/null 2>&1; then
    refuse "Workload $PL_HOST_KEY_ALIAS has no pinned host key: add a \"$PL_HOST_KEY_ALIAS <key-type> <key>\" line to $known_hosts (keys are pinned per Workload, not per address); not connecting"
  fi
  PL_SSH_KEY=$key
  if ((!PL_DRY_RUN)); then
    [[ -f $key && -r $key ]] || refuse "no SSH key: $key is missing (mount the policy's SSH Secret)"
    # ssh refuses a key readable by others, and Secret volumes are 0644 by
    # default (or root-owned): a private copy works whatever the mount mode.
    PL_SSH_KEY=$PL_WORK/id
    (umask 077 && cp "$key" "$PL_SSH_KEY")
  fi
  PL_SSH=(ssh -F /dev/null -i "$PL_SSH_KEY" -p "$PL_PORT" -l "$PL_USER"
    -o IdentitiesOnly=yes -o BatchMode=yes
    -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$known_hosts"
    -o GlobalKnownHostsFile=/dev/null -o UpdateHostKeys=no
    -o "HostKeyAlias=$PL_HOST_KEY_ALIAS" -o CheckHostIP=no
    -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no
    -o ConnectTimeout=30 -o ServerAliveInterval=30
    -- "$PL_ADDRESS" sh -s)
  # Non-root accounts get root through sudo; -n fails instead of prompting.
  PL_SUDO='sudo -n '
  [[ $PL_USER != root ]] || PL_SUDO=
}

# pl_remote STEP SCRIPT: runs SCRIPT with `sh -s` on the target (the script
# on stdin needs no quoting and works whatever the account's login shell),
# its output on stdout; with --dry-run prints what would run. A failure ends
# the Job with STEP and the last lines of output in the termination message.
pl_remote() {
  local step=$1 script=$2 rc=0
  [[ $script == *$'\n' ]] || script+=$'\n'
  if ((PL_DRY_RUN)); then
    printf '# %s\n%s <<'\''REMOTE'\''\n%sREMOTE\n' "$step" "$(pl_show "${PL_SSH[@]}")" "$script"
    return 0
  fi
  "${PL_SSH[@]}" <<<"$script" 2>"$PL_WORK/stderr" || rc=$?
  cat "$PL_WORK/stderr" >&2
  if ((rc == 255)); then
    fail "$step: ssh to $PL_USER@$PL_ADDRESS:$PL_PORT failed (unreachable, host key mismatch or key refused): $(tail -n 3 "$PL_WORK/stderr")"
  elif ((rc != 0)); then
    fail "$step failed on $PL_ADDRESS (exit $rc): $(tail -n 5 "$PL_WORK/stderr")"
  fi
}

# pl_remediate FAMILY INSTALL_SCRIPT REPORTER: install, verify on the
# target, report the target's inventory, then fail if a package is still
# below its minimum (the inventory is reported either way: it is the truth
# the controller verifies against).
pl_remediate() {
  local family=$1 install=$2 reporter=$3 out problems list
  pl_remote "install" "$install"
  out=$(pl_remote "verify" "$(pl_verify_script "$family")")
  printf '%s\n' "$out"
  list=$PL_WORK/packages.txt
  pl_remote "inventory" "$(pl_query_command "$family")" >"$list"
  local report=("$PL_PATCHLOOP" inventory --workload "$PATCHLOOP_WORKLOAD"
    -n "$PATCHLOOP_NAMESPACE" --reporter "$reporter"
    --from-file "$(pl_input_format "$family"):$list")
  if ((PL_DRY_RUN)); then
    cat "$list"
    echo "# report"
    pl_show "${report[@]}"
    return 0
  fi
  problems=$(pl_verdicts "$family" "$out")
  if ! "${report[@]}"; then
    fail "reporting the inventory failed${problems:+; also: $problems}"
  fi
  [[ -z $problems ]] || fail "$problems"
  echo "$PL_SCRIPT: $PATCHLOOP_WORKLOAD ($PL_ADDRESS): every package is at least its fixed version"
}

# --- Images (build and test) --------------------------------------------------

# Image references and the parts a build names: registry/path[:tag][@digest].
PL_IMAGE_REF='^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,510}$'
PL_REPOSITORY='^[a-z0-9][a-z0-9._/:-]{0,254}$'
PL_TAG='^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$'
PL_K8S_NAME='^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$'

# pl_check VALUE REGEX WHAT: refuses VALUE unless it matches.
pl_check() {
  [[ $1 =~ $2 ]] || refuse "$3 is not valid"
}

# How a command runs inside an image: a shell snippet that runs its
# arguments in $IMAGE_REF. The default needs podman in the Job's image.
# shellcheck disable=SC2016 # $IMAGE_REF is expanded by pl_in_image's bash -c
PL_RUN_IN_IMAGE=${PATCHLOOP_RUN_IN_IMAGE:-'podman run --rm --entrypoint "" "$IMAGE_REF"'}

# pl_in_image SCRIPT: runs SCRIPT with `sh -c` in $IMAGE_REF.
pl_in_image() {
  IMAGE_REF=$IMAGE_REF bash -c "$PL_RUN_IN_IMAGE"' "$@"' run-in-image sh -c "$1"
}

# pl_show_in_image STEP SCRIPT: what pl_in_image would run, for --dry-run.
pl_show_in_image() {
  printf '# %s: %s sh -c SCRIPT, with IMAGE_REF=%s and SCRIPT:\n%s\n# (end of SCRIPT)\n' \
    "$1" "$PL_RUN_IN_IMAGE" "$IMAGE_REF" "$2"
}
