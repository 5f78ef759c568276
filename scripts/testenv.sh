#!/usr/bin/env bash
# Prepares a real Kubernetes 1.20.2 control plane (etcd, kube-apiserver,
# kube-controller-manager) and a real node (kube-scheduler, kubelet,
# containerd, runc, CNI plugins, local images: scripts/node-images.sh) for
# the integration tests, from Debian's own packages: no download of prebuilt
# binaries is possible on these machines.
#
# Idempotent: the built binaries are cached under $PATCHLOOP_CACHE
# (default: ${XDG_CACHE_HOME:-$HOME/.cache}/patchloop), keyed by version, so a
# second run takes seconds. Prints the directory holding the binaries.
#
# Usage: scripts/testenv.sh [--print-env]
#   --print-env   print `export VAR=...` lines for the test harness
set -euo pipefail

K8S_SOURCE_VERSION="1.20.5+really1.20.2"
K8S_VERSION="1.20.2"
CACHE="${PATCHLOOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/patchloop}"
BIN_DIR="$CACHE/k8s-$K8S_VERSION/bin"
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
PAUSE_SOURCE="$CACHE/k8s-$K8S_VERSION/src/pause.c"

log() { echo "testenv: $*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq >&2
    apt_updated=1
  fi
  log "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

ensure_deb_src() {
  if grep -rqs "^Types:.*deb-src" /etc/apt/sources.list.d/ 2>/dev/null \
     || grep -qs "^deb-src" /etc/apt/sources.list 2>/dev/null; then
    return 0
  fi
  log "adding a deb-src entry for Debian's archive"
  local src=/etc/apt/sources.list.d/debian.sources
  if [ -f "$src" ]; then
    sed 's/^Types: deb$/Types: deb-src/' "$src" | as_root tee /etc/apt/sources.list.d/patchloop-deb-src.sources >/dev/null
  else
    echo "deb-src http://deb.debian.org/debian bookworm main" | as_root tee /etc/apt/sources.list.d/patchloop-deb-src.list >/dev/null
  fi
  as_root apt-get update -qq >&2
  apt_updated=1
}

build_kubernetes() {
  local work="$CACHE/build"
  local tree="$work/kubernetes-$K8S_SOURCE_VERSION"
  mkdir -p "$work"
  if [ ! -d "$tree" ]; then
    ensure_deb_src
    apt_install dpkg-dev
    log "fetching Debian's kubernetes source package ($K8S_SOURCE_VERSION)"
    (cd "$work" && apt-get source -qq kubernetes >&2)
  fi
  # The vendored reflect2 1.0.1 crashes the apiserver under Go >= 1.18 the first
  # time a CRD is created; Debian's 1.0.2 is API-compatible.
  local reflect2="$tree/vendor/github.com/modern-go/reflect2"
  if [ ! -f "$reflect2/.patchloop-replaced" ]; then
    log "replacing vendored reflect2 with Debian's 1.0.2"
    rm -rf "$reflect2"
    mkdir -p "$reflect2"
    find /usr/share/gocode/src/github.com/modern-go/reflect2 -maxdepth 1 -type f \
      \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' -exec cp {} "$reflect2/" \;
    touch "$reflect2/.patchloop-replaced"
  fi
  mkdir -p "$tree/.go/src/k8s.io"
  [ -e "$tree/.go/src/k8s.io/kubernetes" ] || ln -s ../../.. "$tree/.go/src/k8s.io/kubernetes"
  # One make run for all four: the source is fetched and unpacked once.
  log "building ${K8S_BINARIES[*]} (about 10 minutes on 2 cores)"
  local what=()
  for bin in "${K8S_BINARIES[@]}"; do what+=("cmd/$bin"); done
  (cd "$tree" && GOPATH="$tree/.go" GO111MODULE=off CGO_ENABLED=0 GOFLAGS= \
    make WHAT="${what[*]}" >&2)
  mkdir -p "$BIN_DIR"
  local out
  out=$(dirname "$(find "$tree/_output" -type f -name kube-apiserver -path '*bin*' | head -n1)")
  # Copy, then rename: a running test may be executing the old binary.
  for bin in "${K8S_BINARIES[@]}"; do
    cp "$out/$bin" "$BIN_DIR/.$bin.new"
    mv "$BIN_DIR/.$bin.new" "$BIN_DIR/$bin"
  done
  # The node's pause image is compiled from this tree's source (scripts/node-images.sh).
  mkdir -p "$(dirname "$PAUSE_SOURCE")"
  cp "$tree/build/pause/linux/pause.c" "$PAUSE_SOURCE"
  rm -rf "$work"   # the tree and its Go cache are ~2.7 GB; the binaries are all we keep
}

main() {
  apt_install etcd-server golang-go rsync make openssl golang-github-modern-go-reflect2-dev ca-certificates
  # tests/job_scripts.rs runs the reference job scripts (examples/jobs/): they
  # need jq and ssh-keygen; the fake machine uses dpkg's and rpm's own
  # version comparison; the scripts are linted with shellcheck.
  apt_install jq openssh-client dpkg rpm shellcheck
  if ! command -v kubectl >/dev/null 2>&1; then
    apt_install kubernetes-client
  fi
  # The real node (tests/support/node.rs): Debian's containerd, runc and CNI
  # plugins (the system containerd is never started: the harness runs its
  # own), iproute2 for its bridge and the test machines' namespaces, socat
  # for the `kubernetes` Service (Pods reach the apiserver through it),
  # debootstrap for the images' Debian root, dpkg-dev for the test machines'
  # apt repository (dpkg-scanpackages). Only missing packages are
  # installed: naming an installed one would upgrade it on the host.
  apt_install containerd runc containernetworking-plugins iproute2 debootstrap socat dpkg-dev
  local built=1 bin
  for bin in "${K8S_BINARIES[@]}"; do [ -x "$BIN_DIR/$bin" ] || built=0; done
  [ -f "$PAUSE_SOURCE" ] || built=0
  [ "$built" -eq 1 ] || build_kubernetes
  "$(dirname "$0")/node-images.sh" >&2
  "$BIN_DIR/kube-apiserver" --version >&2
  if [ "${1:-}" = "--print-env" ]; then
    echo "export PATCHLOOP_K8S_BIN=$BIN_DIR"
    echo "export PATCHLOOP_ETCD=$(command -v etcd || echo /usr/bin/etcd)"
    echo "export PATCHLOOP_NODE_IMAGES=$("$(dirname "$0")/node-images.sh" --print-dir)"
  else
    echo "$BIN_DIR"
  fi
}

main "$@"
