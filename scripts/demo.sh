#!/usr/bin/env bash
# `make demo` / `make demo-down`: a local Kubernetes 1.20 control plane (the
# same etcd + kube-apiserver + kube-controller-manager the tests use, built
# and cached by scripts/testenv.sh), then `patchloop demo` on it.
#
# Usage: scripts/demo.sh up [patchloop demo flags...]   start (or reuse) the control plane, run the demo
#        scripts/demo.sh down                           stop the controller and the control plane
#        scripts/demo.sh env                            print `export KUBECONFIG=...`
#
# State (certificates, etcd data, logs, kubeconfig, pid files) lives in
# $PATCHLOOP_DEMO_DIR (default ${XDG_STATE_HOME:-$HOME/.local/state}/patchloop-demo).
# The control plane listens on 127.0.0.1 only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${PATCHLOOP_DEMO_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/patchloop-demo}"
KUBECONFIG_FILE="$STATE/kubeconfig"
ADMIN=patchloop-admin

log() { echo "demo: $*" >&2; }

alive() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

stop() {
  local name=$1 pid
  [ -f "$STATE/$name.pid" ] || return 0
  pid=$(cat "$STATE/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $name (pid $pid)"
  fi
  rm -f "$STATE/$name.pid"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts a daemon in its own session, logging to $STATE/NAME.log.
daemon() {
  local name=$1; shift
  setsid "$@" </dev/null >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
}

wait_until() {
  local what=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "$what did not come up within ${seconds}s; its log:"
      tail -n 30 "$STATE/$what.log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}

keys() {
  [ -f "$STATE/serving.crt" ] && return 0
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
    -subj /CN=patchloop-demo -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
    -keyout "$STATE/serving.key" -out "$STATE/serving.crt" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$STATE/sa.key"
  openssl ec -pubout -in "$STATE/sa.key" -out "$STATE/sa.pub" 2>/dev/null
  echo "$(openssl rand -hex 24),$ADMIN,$ADMIN,\"system:masters\"" >"$STATE/tokens.csv"
  chmod 600 "$STATE/serving.key" "$STATE/sa.key" "$STATE/tokens.csv"
}

readyz() {
  curl -sf --max-time 3 --cacert "$STATE/serving.crt" \
    -H "Authorization: Bearer $(cut -d, -f1 "$STATE/tokens.csv")" \
    "https://127.0.0.1:$(cat "$STATE/apiserver.port")/readyz"
}

etcd_healthy() { curl -sf --max-time 3 "http://127.0.0.1:$(cat "$STATE/etcd.port")/health"; }

kcm_ready() {
  kubectl --kubeconfig "$KUBECONFIG_FILE" get serviceaccount default -n default \
    -o jsonpath='{.secrets[0].name}' | grep -q .
}

control_plane_up() {
  mkdir -p "$STATE"
  eval "$("$ROOT/scripts/testenv.sh" --print-env)"
  if alive etcd && alive kube-apiserver && alive kube-controller-manager && readyz; then
    log "reusing the running control plane ($STATE)"
    return 0
  fi
  stop kube-controller-manager; stop kube-apiserver; stop etcd
  keys
  local etcd_port peer_port api_port
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
  echo "$etcd_port" >"$STATE/etcd.port"; echo "$api_port" >"$STATE/apiserver.port"
  log "starting etcd, kube-apiserver and kube-controller-manager (Kubernetes 1.20.2) in $STATE"
  daemon etcd "$PATCHLOOP_ETCD" --name=demo --data-dir="$STATE/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="demo=http://127.0.0.1:$peer_port" --logger=zap --log-level=warn
  wait_until etcd 30 etcd_healthy
  daemon kube-apiserver "$PATCHLOOP_K8S_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
    --secure-port="$api_port" --insecure-port=0 --cert-dir="$STATE/certs" \
    --tls-cert-file="$STATE/serving.crt" --tls-private-key-file="$STATE/serving.key" \
    --token-auth-file="$STATE/tokens.csv" --authorization-mode=RBAC \
    --service-account-key-file="$STATE/sa.pub" --service-account-signing-key-file="$STATE/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=10.0.0.0/24 --profiling=false --v=1
  wait_until kube-apiserver 120 readyz
  kubectl config --kubeconfig "$KUBECONFIG_FILE" set-cluster demo \
    --server="https://127.0.0.1:$api_port" --certificate-authority="$STATE/serving.crt" --embed-certs >/dev/null
  kubectl config --kubeconfig "$KUBECONFIG_FILE" set-credentials "$ADMIN" \
    --token="$(cut -d, -f1 "$STATE/tokens.csv")" >/dev/null
  kubectl config --kubeconfig "$KUBECONFIG_FILE" set-context demo --cluster=demo \
    --user="$ADMIN" --namespace=patchloop-demo >/dev/null
  kubectl config --kubeconfig "$KUBECONFIG_FILE" use-context demo >/dev/null
  chmod 600 "$KUBECONFIG_FILE"
  daemon kube-controller-manager "$PATCHLOOP_K8S_BIN/kube-controller-manager" \
    --kubeconfig="$KUBECONFIG_FILE" \
    --controllers=garbagecollector,job,namespace,serviceaccount,serviceaccount-token \
    --service-account-private-key-file="$STATE/sa.key" --root-ca-file="$STATE/serving.crt" \
    --leader-elect=false --use-service-account-credentials=false --port=0 --secure-port=0 \
    --profiling=false --v=1
  wait_until kube-controller-manager 90 kcm_ready
  log "control plane ready at https://127.0.0.1:$api_port"
}

up() {
  local started=$SECONDS
  control_plane_up
  (cd "$ROOT" && cargo build --quiet --bin patchloop)
  stop controller
  local exe="$ROOT/target/debug/patchloop"
  (cd "$ROOT" && "$exe" demo --kubeconfig "$KUBECONFIG_FILE" \
     --keep-controller "$STATE/controller.pid" --controller-log "$STATE/controller.log" "$@")
  cat <<EOF

The control plane and the controller keep running (${STATE}; $((SECONDS - started)) s in all).
Explore with kubectl:

    export KUBECONFIG=$KUBECONFIG_FILE
    kubectl get patchloop -n patchloop-demo
    kubectl describe workload web-01 -n patchloop-demo
    $exe report -n patchloop-demo -o html > report.html

Stop everything with: make demo-down
EOF
}

down() {
  stop controller
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
  rm -rf "$STATE"
  log "removed $STATE"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  env) echo "export KUBECONFIG=$KUBECONFIG_FILE" ;;
  *) echo "usage: $0 up [patchloop demo flags...] | down | env" >&2; exit 2 ;;
esac
