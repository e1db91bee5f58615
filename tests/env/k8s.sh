#!/usr/bin/env bash
# Kubernetes control plane for the integration tests: etcd + kube-apiserver (RBAC on, TLS,
# client-cert admin, service-account tokens), all on free loopback ports, plus kubectl and helm.
# No controller-manager, scheduler or kubelet: objects are stored and served, pods never run,
# unless the node component (tests/env/node.sh) is up too; then DEVSET_NODE_IP is set here.
#
# The binaries are built with Go from the modules pinned in tests/tools/{k8s,etcd,helm}/go.mod
# into $DEVSET_CACHE/<tool>-<version>/bin (once; later runs start in seconds).
#
# Usage: tests/env/k8s.sh up|down   (normally called by tests/env/up and tests/env/down)
# `up` appends KUBECONFIG, KUBE_APISERVER_URL and PATH (kubectl, helm, etcd, kube-apiserver) to
# $DEVSET_ENV_FILE.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

TOOLS="$DEVSET_REPO/tests/tools"
K8S_DIR="$DEVSET_ENV_DIR/k8s"
READY_TIMEOUT=${DEVSET_K8S_READY_TIMEOUT:-120}

# modver GOMOD MODULE: the version of MODULE required by GOMOD.
modver() {
  local v
  v=$(awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$1")
  [ -n "$v" ] || die "no version of $2 in $1"
  echo "$v"
}

K8S_VERSION=$(modver "$TOOLS/k8s/go.mod" k8s.io/kubernetes)
ETCD_VERSION=$(modver "$TOOLS/etcd/go.mod" go.etcd.io/etcd/server/v3)
HELM_VERSION=$(modver "$TOOLS/helm/go.mod" helm.sh/helm/v4)
K8S_BIN="$DEVSET_CACHE/k8s-$K8S_VERSION/bin"
ETCD_BIN="$DEVSET_CACHE/etcd-$ETCD_VERSION/bin"
HELM_BIN="$DEVSET_CACHE/helm-$HELM_VERSION/bin"

# build_tools NAME VERSION MODDIR LDFLAGS BIN=PKG...: builds the packages of the Go module in
# MODDIR into $DEVSET_CACHE/NAME-VERSION/bin unless already there. Builds go to a temp dir that
# is renamed into place at the end, so an interrupted build is never taken for a cached one; a
# lock keeps two environments that start at once from building the same thing twice.
build_tools() {
  local name=$1 ver=$2 moddir=$3 ldflags=$4
  shift 4
  local dest="$DEVSET_CACHE/$name-$ver"
  [ -d "$dest" ] && return 0
  command -v go >/dev/null || die "go is needed to build $name $ver"
  local lock="$DEVSET_CACHE/.$name-$ver.lock" logf="$DEVSET_CACHE/.$name-$ver.build.log"
  (
    flock 9
    [ -d "$dest" ] && exit 0
    rm -rf "$DEVSET_CACHE/.$name-$ver.tmp."* # left by an interrupted build
    local tmp t0=$SECONDS spec
    tmp=$(mktemp -d "$DEVSET_CACHE/.$name-$ver.tmp.XXXXXX")
    log "building $name $ver with $(go env GOVERSION) (first run only, takes minutes; log: $logf)"
    : >"$logf"
    for spec in "$@"; do
      if (cd "$moddir" && CGO_ENABLED=${BUILD_CGO:-0} go build ${BUILD_GOFLAGS:-} -buildvcs=false -trimpath -ldflags "-s -w $ldflags" \
        -o "$tmp/bin/${spec%%=*}" "${spec#*=}") >>"$logf" 2>&1; then :; else
        tail -n 40 "$logf" >&2 || true
        rm -rf "$tmp"
        die "building ${spec#*=} failed"
      fi
      [ -x "$tmp/bin/${spec%%=*}" ] || { rm -rf "$tmp"; die "$name: ${spec%%=*} was not built"; }
    done
    mv -T "$tmp" "$dest"
    log "built $name $ver in $((SECONDS - t0))s"
  ) 9>"$lock"
}

# The version variables hack/lib/version.sh sets, so `kubectl version` reports v1.X.Y.
k8s_ldflags() {
  local v=${K8S_VERSION#v} ld="" p
  for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=${v%%.*} -X $p.gitMinor=$(cut -d. -f2 <<<"$v")"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  echo "$ld"
}

# The node's binaries (tests/env/node.sh), cached apart so that an environment without a node
# never builds them.
build_node() {
  build_tools k8s-node "$K8S_VERSION" "$TOOLS/k8s" "$(k8s_ldflags)" \
    kubelet=k8s.io/kubernetes/cmd/kubelet kube-proxy=k8s.io/kubernetes/cmd/kube-proxy \
    kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
    kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager
}

# tilt (tests/node_tilt.rs runs `tilt ci` against the node), cached apart like the node's
# binaries; it needs cgo (tree-sitter) and takes minutes the first time. Its module lacks the
# web UI's built assets (tilt's releases build them with yarn), and tilt refuses to start
# without an index.html, so the build uses a copy of the module with a one-page stand-in
# (tests/tools/tilt/index.html; the module cache itself is read-only).
TILT_VERSION=$(modver "$TOOLS/tilt/go.mod" github.com/tilt-dev/tilt)
TILT_BIN="$DEVSET_CACHE/tilt-$TILT_VERSION/bin"
build_tilt() {
  [ -d "$TILT_BIN" ] && return 0
  local src work="$DEVSET_CACHE/.tilt-$TILT_VERSION.src"
  src=$(cd "$TOOLS/tilt" && go mod download -json github.com/tilt-dev/tilt | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -d "$src" ] || die "tilt: go mod download github.com/tilt-dev/tilt found no module directory"
  rm -rf "$work"
  mkdir -p "$work"
  cp -r "$src" "$work/tilt"
  chmod -R u+w "$work/tilt"
  cp "$TOOLS/tilt/index.html" "$work/tilt/pkg/assets/build/index.html"
  cp "$TOOLS/tilt/go.mod" "$TOOLS/tilt/go.sum" "$work/"
  (cd "$work" && go mod edit -replace "github.com/tilt-dev/tilt=$work/tilt")
  BUILD_CGO=1 BUILD_GOFLAGS="-modfile=$work/go.mod" build_tools tilt "$TILT_VERSION" "$TOOLS/tilt" \
    "-X main.version=${TILT_VERSION#v} -X main.date=$(date -u +%Y-%m-%d)" \
    tilt=github.com/tilt-dev/tilt/cmd/tilt
  rm -rf "$work"
}

build_all() {
  build_tools etcd "$ETCD_VERSION" "$TOOLS/etcd" "" etcd=go.etcd.io/etcd/server/v3
  build_tools helm "$HELM_VERSION" "$TOOLS/helm" \
    "-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.metadata= -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
    helm=helm.sh/helm/v4/cmd/helm
  build_tools k8s "$K8S_VERSION" "$TOOLS/k8s" "$(k8s_ldflags)" \
    kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver kubectl=k8s.io/kubernetes/cmd/kubectl
}

# --- certificates (EC P-256: fast to generate) ---------------------------------------------
genkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# sign NAME SUBJECT EXTENSIONS: key + certificate NAME.{key,crt} signed by the env's CA.
sign() {
  local d=$K8S_DIR
  genkey "$d/$1.key"
  openssl req -new -key "$d/$1.key" -subj "$2" -out "$d/$1.csr" 2>/dev/null
  openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -CAserial "$d/ca.srl" -days 3650 -extfile <(printf '%b\n' "$3") -out "$d/$1.crt" 2>/dev/null
  rm -f "$d/$1.csr"
}

make_certs() {
  local d=$K8S_DIR
  genkey "$d/ca.key"
  openssl req -x509 -new -key "$d/ca.key" -subj "/CN=devset-ca" -days 3650 -out "$d/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  local leaf="basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment"
  local names="IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default"
  # With a node, pods reach the API server on the node's bridge address (tests/env/node.sh).
  [ -z "${DEVSET_NODE_IP:-}" ] || names+=",IP:$DEVSET_NODE_IP"
  names+=",DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign apiserver "/CN=kube-apiserver" "$leaf\nextendedKeyUsage=serverAuth\nsubjectAltName=$names"
  # system:masters is bound to cluster-admin by the default RBAC policy.
  sign admin "/O=system:masters/CN=devset-admin" "$leaf\nextendedKeyUsage=clientAuth"
  # The API server's identity towards kubelets (logs, exec, port-forward), which authorize it
  # by webhook like any other client.
  sign kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$leaf\nextendedKeyUsage=clientAuth"
  # Service-account token signing pair (TokenRequest, `kubectl create token`).
  genkey "$d/sa.key"
  openssl pkey -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  chmod 600 "$d"/*.key
}

write_kubeconfig() { # URL FILE
  local d=$K8S_DIR
  cat >"$2" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: devset
  cluster:
    server: $1
    certificate-authority-data: $(base64 -w0 <"$d/ca.crt")
users:
- name: devset-admin
  user:
    client-certificate-data: $(base64 -w0 <"$d/admin.crt")
    client-key-data: $(base64 -w0 <"$d/admin.key")
contexts:
- name: devset
  context:
    cluster: devset
    user: devset-admin
    namespace: default
current-context: devset
EOF
  chmod 600 "$2"
}

# --- processes -------------------------------------------------------------------------------
alive() { local f="$DEVSET_ENV_DIR/pids/$1"; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }

# port_clash NAME: true (after stopping both) if NAME died because another process took one of
# its ports between free_port and the bind; up then retries with new ports (3 tries).
port_clash() {
  grep -q 'address already in use' "$K8S_DIR/$1.log" 2>/dev/null && ((attempt < 3)) || return 1
  log "$1: a port was taken meanwhile; retrying with new ports"
  stop_bg kube-apiserver
  stop_bg etcd
}

fail() { # NAME MESSAGE: print the tail of NAME's log and give up (stopping what we started)
  log "--- last lines of $K8S_DIR/$1.log"
  tail -n 40 "$K8S_DIR/$1.log" >&2 || true
  stop_bg kube-apiserver
  stop_bg etcd
  die "$2"
}

start_etcd() { # CLIENT_PORT PEER_PORT
  local peer="http://127.0.0.1:$2"
  start_bg etcd "$K8S_DIR/etcd.log" "$ETCD_BIN/etcd" \
    --name devset --data-dir "$K8S_DIR/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$1" --advertise-client-urls "http://127.0.0.1:$1" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "devset=$peer" --initial-cluster-state new \
    --unsafe-no-fsync --log-level warn
  local deadline=$((SECONDS + 30))
  until etcd_healthy "$1"; do
    alive etcd || { port_clash etcd && return 1; fail etcd "etcd exited"; }
    ((SECONDS < deadline)) || fail etcd "etcd not healthy on 127.0.0.1:$1 after 30s"
    sleep 0.2
  done
}

# etcd_healthy PORT: GET /health over bash's /dev/tcp (no curl needed).
etcd_healthy() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    timeout 2 cat <&3 | grep -q '"health":"true"'
  ) 2>/dev/null
}

start_apiserver() { # PORT ETCD_PORT
  local d=$K8S_DIR url="https://127.0.0.1:$1" node=()
  # Without a node: admission is everything default except ServiceAccount, which needs the
  # service-account controller (not running then) to have created each namespace's `default`
  # account before a pod can be stored; no endpoint reconciler: the kubernetes service cannot
  # point at loopback. With a node (tests/env/node.sh runs kube-controller-manager), the
  # ServiceAccount plugin is on and the kubernetes service points at the node's bridge address,
  # where a relay forwards to the loopback port.
  if [ -n "${DEVSET_NODE_IP:-}" ]; then
    node=(--advertise-address="$DEVSET_NODE_IP" --endpoint-reconciler-type=lease
      --kubelet-preferred-address-types=InternalIP)
  else
    node=(--advertise-address=127.0.0.1 --disable-admission-plugins=ServiceAccount --endpoint-reconciler-type=none)
  fi
  start_bg kube-apiserver "$d/kube-apiserver.log" "$K8S_BIN/kube-apiserver" \
    --bind-address=127.0.0.1 --secure-port="$1" "${node[@]}" \
    --cert-dir="$d" --tls-cert-file="$d/apiserver.crt" --tls-private-key-file="$d/apiserver.key" \
    --client-ca-file="$d/ca.crt" --authorization-mode=Node,RBAC --anonymous-auth=false \
    --service-account-issuer="$url" --api-audiences="$url" \
    --service-account-key-file="$d/sa.pub" --service-account-signing-key-file="$d/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true \
    --etcd-servers="http://127.0.0.1:$2" --etcd-prefix="/devset-$1" \
    --kubelet-client-certificate="$d/kubelet-client.crt" --kubelet-client-key="$d/kubelet-client.key" \
    --profiling=false --v=1
}

wait_ready() { # seconds
  local deadline=$((SECONDS + $1))
  until "$K8S_BIN/kubectl" get --raw /readyz --request-timeout=5s >/dev/null 2>&1; do
    alive kube-apiserver || { port_clash kube-apiserver && return 1; fail kube-apiserver "kube-apiserver exited"; }
    alive etcd || fail etcd "etcd exited"
    ((SECONDS < deadline)) || fail kube-apiserver "kube-apiserver not ready after $1s"
    sleep 0.5
  done
}

# Every TCP socket our processes listen on must be on loopback.
check_loopback() {
  local name pid bad
  for name in etcd kube-apiserver; do
    pid=$(cat "$DEVSET_ENV_DIR/pids/$name")
    bad=$(ss -ltnpH 2>/dev/null | grep "pid=$pid," | awk '$4 !~ /^127\.0\.0\.1:/' || true)
    [ -z "$bad" ] || fail "$name" "$name listens beyond loopback: $bad"
  done
}

# A quick check that what the tests rely on works: namespaces, TokenRequest, RBAC.
self_check() {
  local k="$K8S_BIN/kubectl" sa="devset-selfcheck-$$" out
  "$k" get ns default -o name >/dev/null || fail kube-apiserver "namespace default missing"
  "$k" create serviceaccount "$sa" -n default >/dev/null || fail kube-apiserver "cannot create a service account"
  [ -n "$("$k" create token "$sa" -n default --duration=10m)" ] || fail kube-apiserver "TokenRequest failed"
  [ "$("$k" auth can-i '*' '*')" = yes ] || fail kube-apiserver "admin is not cluster-admin"
  out=$("$k" auth can-i list secrets --as="system:serviceaccount:default:$sa" 2>/dev/null || true)
  [ "$out" = no ] || fail kube-apiserver "RBAC is not enforced (a bare service account may list secrets)"
  "$k" delete serviceaccount "$sa" -n default --wait=false >/dev/null
}

up() {
  build_all
  # A fresh control plane each time (stop leftovers of an earlier run in this env dir).
  stop_bg kube-apiserver
  stop_bg etcd
  rm -rf "$K8S_DIR"
  mkdir -p "$K8S_DIR"
  command -v openssl >/dev/null || apt_install openssl
  make_certs

  local etcd_port etcd_peer api_port url kubeconfig="$K8S_DIR/admin.kubeconfig"
  export KUBECONFIG="$kubeconfig" KUBECACHEDIR="$K8S_DIR/kube-cache"
  attempt=0 # read by port_clash
  while :; do
    attempt=$((attempt + 1))
    etcd_port=$(free_port)
    etcd_peer=$(free_port)
    api_port=$(free_port)
    url="https://127.0.0.1:$api_port"
    write_kubeconfig "$url" "$kubeconfig"
    rm -rf "$K8S_DIR/etcd-data"
    start_etcd "$etcd_port" "$etcd_peer" || continue
    start_apiserver "$api_port" "$etcd_port"
    wait_ready "$READY_TIMEOUT" && break
  done
  check_loopback
  self_check
  log "kube-apiserver $K8S_VERSION ready at $url (etcd $ETCD_VERSION on 127.0.0.1:$etcd_port)"

  env_line KUBECONFIG "$kubeconfig"
  env_line KUBE_APISERVER_URL "$url"
  env_line KUBECACHEDIR "$K8S_DIR/kube-cache"
  # helm keeps its repositories, cache and plugins inside the environment too.
  env_line HELM_CACHE_HOME "$K8S_DIR/helm/cache"
  env_line HELM_CONFIG_HOME "$K8S_DIR/helm/config"
  env_line HELM_DATA_HOME "$K8S_DIR/helm/data"
  printf "export PATH='%s:%s:%s':\"\$PATH\"\n" "$K8S_BIN" "$HELM_BIN" "$ETCD_BIN" >>"$DEVSET_ENV_FILE"
}

down() {
  # The apiserver first: without etcd its graceful shutdown stalls until stop_bg's KILL.
  stop_bg kube-apiserver
  stop_bg etcd
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  build) build_all ;;           # only build/cache the binaries
  build-node) build_node ;;     # only build/cache the node's binaries
  build-tilt) build_tilt ;;     # only build/cache tilt
  *) die "usage: $0 up|down|build|build-node|build-tilt" ;;
esac
