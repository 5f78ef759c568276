#!/usr/bin/env bash
# Builds the images the real test node runs (tests/support/node.rs), with no
# registry ever pulled from: image tarballs in the `docker save` layout that
# `ctr images import` reads, written by hand.
#
#   localhost/pause:3.4.1     Kubernetes' own build/pause/linux/pause.c, static
#   localhost/debian:12       Debian 12 (debootstrap minbase) + bash, jq,
#                             openssh-client, ca-certificates
#   localhost/runner:<hash>   debian:12 + the patchloop binary given with
#                             --runner and the user 65532 (the remediation
#                             runner image)
#
# and, for the test machines (tests/support/machines.rs), not an image:
#
#   machine-root/             debian:12's root + openssh-server, with
#                             $MACHINE_PACKAGE at bookworm's own (older)
#                             version, no SSH host keys (each machine makes
#                             its own)
#   repo-fixed/               a flat apt repository holding the newest
#                             $MACHINE_PACKAGE the host's apt knows (from
#                             bookworm-security): the fix the machines lack
#   advisory-fixed.json       OSV records of that fix, one per Debian
#                             changelog entry between the machines' version
#                             and the repository's (see build_fixed_advisory)
#
# Idempotent and cached under $PATCHLOOP_CACHE/node-images: the Debian root
# is made once (about 2 minutes), the runner image again only when the binary
# changes. Needs root (debootstrap, numeric owners in the layers).
#
# Usage: scripts/node-images.sh                 build pause and debian
#        scripts/node-images.sh --print-dir     print the image directory
#        scripts/node-images.sh --runner BIN    build the runner image of BIN,
#                                               print its tarball's path
set -euo pipefail

CACHE="${PATCHLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/patchloop}"
K8S_VERSION="1.20.2"
PAUSE_SOURCE="$CACHE/k8s-$K8S_VERSION/src/pause.c"
PAUSE_TAG="3.4.1"
SUITE="bookworm"
MIRROR="${PATCHLOOP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
IMAGES="$CACHE/node-images"
ROOTFS="$IMAGES/rootfs-$SUITE"
BASE_PACKAGES="jq,openssh-client,ca-certificates"
# The package the test machines run old and the repository holds fixed: a
# real Debian advisory in tests/fixtures/osv/debian names the fix.
MACHINE_PACKAGE="${PATCHLOOP_MACHINE_PACKAGE:-libexpat1}"
MACHINE_ROOT="$IMAGES/machine-root"
FIXED_REPO="$IMAGES/repo-fixed"
FIXED_ADVISORY="$IMAGES/advisory-fixed.json"

log() { echo "node-images: $*" >&2; }

sha256() { sha256sum "$1" | cut -d' ' -f1; }

# make_image NAME TAG RUN_JSON LAYER_TAR... : writes $IMAGES/NAME-TAG.tar.
# RUN_JSON is the config's Entrypoint/Cmd fields, e.g. '"Cmd":["/bin/bash"]'.
# Each layer tar is stored as <diff_id>/layer.tar; the config lists the
# diff_ids in order; manifest.json names the image localhost/NAME:TAG.
make_image() {
  local name="$1" tag="$2" run="$3"
  shift 3
  local out="$IMAGES/$name-$tag.tar" work diff_ids=() layers=()
  work=$(mktemp -d "$IMAGES/.work.XXXXXX")
  local layer id
  for layer in "$@"; do
    id=$(sha256 "$layer")
    mkdir -p "$work/$id"
    ln "$layer" "$work/$id/layer.tar" 2>/dev/null || cp "$layer" "$work/$id/layer.tar"
    diff_ids+=("\"sha256:$id\"")
    layers+=("\"$id/layer.tar\"")
  done
  local config
  config=$(IFS=,; printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],%s},"rootfs":{"type":"layers","diff_ids":[%s]}}' "$run" "${diff_ids[*]}")
  printf '%s' "$config" > "$work/config.json"
  local config_id
  config_id=$(sha256 "$work/config.json")
  mv "$work/config.json" "$work/$config_id.json"
  (IFS=,; printf '[{"Config":"%s.json","RepoTags":["localhost/%s:%s"],"Layers":[%s]}]' \
    "$config_id" "$name" "$tag" "${layers[*]}") > "$work/manifest.json"
  (cd "$work" && tar -cf "$out.partial" manifest.json "$config_id.json" $(for l in "$@"; do echo "$(sha256 "$l")/layer.tar"; done))
  mv "$out.partial" "$out"
  rm -rf "$work"
}

# layer_of DIR OUT : a layer tarball of DIR (entry names without "./").
layer_of() {
  local dir="$1" out="$2"
  (cd "$dir" && tar --numeric-owner --xattrs -cf "$out.partial" $(ls -A))
  mv "$out.partial" "$out"
}

build_pause() {
  [ -f "$IMAGES/pause-$PAUSE_TAG.tar" ] && return 0
  if [ ! -f "$PAUSE_SOURCE" ]; then
    log "missing $PAUSE_SOURCE (kept by scripts/testenv.sh when it builds Kubernetes); remove $CACHE/k8s-$K8S_VERSION and run scripts/testenv.sh"
    exit 1
  fi
  log "building localhost/pause:$PAUSE_TAG from Kubernetes' pause.c"
  local root
  root=$(mktemp -d "$IMAGES/.pause.XXXXXX")
  gcc -Os -static -Wall -Werror -DVERSION="v$PAUSE_TAG-patchloop" -o "$root/pause" "$PAUSE_SOURCE"
  strip "$root/pause"
  layer_of "$root" "$IMAGES/pause.layer.tar"
  make_image pause "$PAUSE_TAG" '"Entrypoint":["/pause"]' "$IMAGES/pause.layer.tar"
  rm -rf "$root" "$IMAGES/pause.layer.tar"
}

build_rootfs() {
  [ -f "$ROOTFS/.patchloop-complete" ] && return 0
  log "debootstrap $SUITE (minbase + $BASE_PACKAGES) from $MIRROR, about 2 minutes"
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >&2
  # Nothing of the build host's apt state or logs belongs in an image.
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/*.log
  touch "$ROOTFS/.patchloop-complete"
}

build_debian() {
  [ -f "$IMAGES/debian-12.tar" ] && [ -f "$IMAGES/debian-12.layer.tar" ] && return 0
  build_rootfs
  log "building localhost/debian:12"
  layer_of "$ROOTFS" "$IMAGES/debian-12.layer.tar"
  make_image debian 12 '"Cmd":["/bin/bash"]' "$IMAGES/debian-12.layer.tar"
}

# chroot_apt ROOT ARGS...: apt-get in ROOT, no service started (policy-rc.d).
chroot_apt() {
  local root="$1"
  shift
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get "$@" >&2
  rm -f "$root/usr/sbin/policy-rc.d"
}

build_machine_root() {
  [ -f "$MACHINE_ROOT/.patchloop-complete" ] && return 0
  build_rootfs
  log "building the test machines' root (openssh-server, $MACHINE_PACKAGE from $SUITE)"
  rm -rf "$MACHINE_ROOT"
  cp -a "$ROOTFS" "$MACHINE_ROOT"
  rm -f "$MACHINE_ROOT/.patchloop-complete"
  # The debootstrap root knows only $SUITE main: what it installs is the
  # release's own version, older than bookworm-security's fix.
  chroot_apt "$MACHINE_ROOT" update -qq
  chroot_apt "$MACHINE_ROOT" install -y -qq --no-install-recommends openssh-server "$MACHINE_PACKAGE"
  rm -f "$MACHINE_ROOT"/etc/ssh/ssh_host_*
  rm -rf "$MACHINE_ROOT"/var/cache/apt/archives/*.deb "$MACHINE_ROOT"/var/lib/apt/lists/*
  touch "$MACHINE_ROOT/.patchloop-complete"
}

build_fixed_repo() {
  [ -f "$FIXED_REPO/Packages" ] && return 0
  log "building the fixed repository ($MACHINE_PACKAGE as the host's apt has it)"
  rm -rf "$FIXED_REPO.partial"
  mkdir -p "$FIXED_REPO.partial"
  (cd "$FIXED_REPO.partial" && apt-get download -q "$MACHINE_PACKAGE" >&2 \
    && dpkg-scanpackages --multiversion . /dev/null > Packages 2>/dev/null)
  rm -rf "$FIXED_REPO"
  mv "$FIXED_REPO.partial" "$FIXED_REPO"
}

# The advisory that names the repository's fix. The public OSV mirror the
# fixtures come from (tests/fixtures/SOURCES.md) ends in early 2025, and
# bookworm's own version already has every fix it names; the fixes between
# bookworm and bookworm-security are stated by Debian in the fixed package's
# changelog. Each changelog entry newer than the machines' version becomes
# one OSV record (Debian:12, the source package, fixed at that entry's
# version, its CVEs as aliases, published at its date), with the .deb's name
# and sha256 as provenance. Nothing in it is written by hand.
build_fixed_advisory() {
  [ -f "$FIXED_ADVISORY" ] && return 0
  local deb old source package
  deb=$(find "$FIXED_REPO" -maxdepth 1 -name '*.deb' | head -n1)
  package=$(dpkg-deb -f "$deb" Package)
  source=$(dpkg-deb -f "$deb" Source | cut -d' ' -f1)
  source=${source:-$package}
  old=$(dpkg-query --admindir="$MACHINE_ROOT/var/lib/dpkg" -W -f '${Version}' "$package")
  log "deriving the advisory of $source from $(basename "$deb")'s changelog (entries after $old)"
  dpkg-deb --fsys-tarfile "$deb" \
    | tar -xOf - "./usr/share/doc/$package/changelog.Debian.gz" | gunzip \
    | awk -v old="$old" '
        /^[a-z0-9][a-z0-9.+-]* \(/ { version = $2; gsub(/[()]/, "", version); if (version == old) exit; next }
        /^ -- / { sub(/^.*>  /, ""); print version "\t" $0 "\t" cves; cves = ""; next }
        { while (match($0, /CVE-[0-9]+-[0-9]+/)) { c = substr($0, RSTART, RLENGTH); if (index(cves, c) == 0) cves = cves " " c; $0 = substr($0, RSTART + RLENGTH) } }' \
    | while IFS=$'\t' read -r version date cves; do
        jq -n --arg source "$source" --arg version "$version" --arg cves "$cves" \
          --arg published "$(date -u -d "$date" +%Y-%m-%dT%H:%M:%SZ)" \
          --arg deb "$(basename "$deb")" --arg sha "$(sha256 "$deb")" '{
            schema_version: "1.6.0",
            id: ("DEBIAN-CHANGELOG-" + $source + "-" + ($version | gsub("[^A-Za-z0-9.-]"; "_"))),
            published: $published, modified: $published,
            aliases: ($cves | split(" ") | map(select(. != ""))),
            summary: ($source + " " + $version + ": security fixes named in its Debian changelog"),
            details: ("Derived from debian/changelog in " + $deb + " (sha256 " + $sha + "): the entry for " + $version + " names these CVEs as fixed."),
            affected: [{package: {ecosystem: "Debian:12", name: $source},
                        ranges: [{type: "ECOSYSTEM", events: [{introduced: "0"}, {fixed: $version}]}]}],
            database_specific: {source: "debian/changelog", deb: $deb, deb_sha256: $sha}
          }'
      done | jq -s . > "$FIXED_ADVISORY.partial"
  if [ "$(jq length "$FIXED_ADVISORY.partial")" -eq 0 ]; then
    log "no changelog entry of $source is newer than $old: nothing to fix"
    exit 1
  fi
  mv "$FIXED_ADVISORY.partial" "$FIXED_ADVISORY"
}

# build_runner BIN: localhost/runner:<12 hex of BIN's and this script's hash>; prints the tarball.
build_runner() {
  local bin="$1" tag
  # The binary and this script (the image's layout) name the image.
  tag=$( (sha256 "$bin"; sha256 "$0") | sha256sum | cut -c1-12)
  local out="$IMAGES/runner-$tag.tar"
  if [ ! -f "$out" ]; then
    build_debian
    log "building localhost/runner:$tag"
    local root
    root=$(mktemp -d "$IMAGES/.runner.XXXXXX")
    install -D -m 0755 "$bin" "$root/usr/local/bin/patchloop"
    # The unprivileged user Jobs run as (examples/jobs/remediation.yaml):
    # ssh and ssh-keygen refuse to run for a uid /etc/passwd does not name.
    mkdir -p "$root/etc"
    cp "$ROOTFS/etc/passwd" "$ROOTFS/etc/group" "$root/etc/"
    echo "nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin" >> "$root/etc/passwd"
    echo "nonroot:x:65532:" >> "$root/etc/group"
    layer_of "$root" "$IMAGES/runner-$tag.layer.tar"
    # As the project's image (Dockerfile): patchloop is the entrypoint.
    make_image runner "$tag" '"Entrypoint":["/usr/local/bin/patchloop"],"Cmd":["run"]' "$IMAGES/debian-12.layer.tar" "$IMAGES/runner-$tag.layer.tar"
    rm -rf "$root" "$IMAGES/runner-$tag.layer.tar"
    # Older runner images are of binaries no test runs any more.
    find "$IMAGES" -maxdepth 1 -name 'runner-*.tar' ! -name "runner-$tag.tar" -delete
  fi
  echo "$out"
}

main() {
  mkdir -p "$IMAGES"
  case "${1:-}" in
    --print-dir) echo "$IMAGES" ;;
    --runner) build_runner "$2" ;;
    "") build_pause; build_debian; build_machine_root; build_fixed_repo; build_fixed_advisory ;;
    *) echo "usage: $0 [--print-dir | --runner BIN]" >&2; exit 2 ;;
  esac
}

main "$@"
