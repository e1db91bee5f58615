#!/usr/bin/env bash
# Component: a real node for the test API server, so that pods run. containerd + runc (Debian's
# packages) with a root, state and socket of their own under $DEVSET_ENV_DIR/node, a CNI bridge
# for pods, and kubelet, kube-proxy, kube-scheduler and kube-controller-manager built from the
# Kubernetes modules pinned in tests/tools/k8s/go.mod (cached in $DEVSET_CACHE/k8s-node-<version>).
#
#   bash tests/env/node.sh prepare   before the other components (tests/env/up does this): checks
#                                    the machine, installs packages, starts building the binaries
#                                    in the background, makes the bridge and the egress guard
#   bash tests/env/node.sh up        after k8s (and the brokers): starts the node, waits for Ready
#   bash tests/env/node.sh down      removes every container, mount, netns and rule it made
#
# The bridge (devset0, $NODE_IP) is the node's address: the API server (through a relay),
# Kafka, RabbitMQ and PostgreSQL listen on loopback and on it, never on another interface.
# Nothing the node runs sends traffic off this machine: its processes run in the cgroup
# $GUARD_CGROUP, whose packets may leave only through lo and devset0, and nothing is forwarded
# between devset0 and any other interface. Some paths are fixed (/var/lib/kubelet/device-plugins,
# /var/lib/cni, /run/containerd, /run/netns/cni-*), and the bridge has a fixed address: one node
# per machine at a time.
#
# Appends to the env file: DEVSET_NODE_NAME, DEVSET_NODE_IP, CONTAINERD_ADDRESS (ctr -a),
# DEVSET_PAUSE_IMAGE.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

TOOLS="$DEVSET_REPO/tests/tools"
N="$DEVSET_ENV_DIR/node"
K8S_DIR="$DEVSET_ENV_DIR/k8s"
K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' "$TOOLS/k8s/go.mod")
NODE_BIN="$DEVSET_CACHE/k8s-node-$K8S_VERSION/bin"
K8S_BIN="$DEVSET_CACHE/k8s-$K8S_VERSION/bin"
TILT_VERSION=$(awk '$1 == "github.com/tilt-dev/tilt" && $2 ~ /^v/ { print $2; exit }' "$TOOLS/tilt/go.mod")
TILT_BIN="$DEVSET_CACHE/tilt-$TILT_VERSION/bin" # tilt, for `tilt ci` on the node (tests/node_tilt.rs)
BRIDGE=devset0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
NODE_NAME=devset-node
GUARD_CGROUP=devset-node # in the cgroup v2 hierarchy, and the cgroup root of the pods (v1)
GUARD_CHAIN=DEVSET-NODE-EGRESS
OWNER=/run/devset-node.owner # which environment holds the machine's one node
SOCK="$N/containerd/containerd.sock"
PAUSE_IMAGE=devset.local/pause:catatonit
READY_TIMEOUT=${DEVSET_NODE_READY_TIMEOUT:-120}

# The v2 hierarchy: /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a hybrid one.
cg2() {
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then echo /sys/fs/cgroup; else echo /sys/fs/cgroup/unified; fi
}

# fail NAME MESSAGE: the tail of NAME's log, the node stopped, the reason.
fail() {
  local logf="$N/$1.log"
  if [ -f "$logf" ]; then
    log "node: last lines of $logf"
    tail -n 30 "$logf" >&2 || true
  fi
  down >/dev/null 2>&1 || true
  die "node: $2 (log: $logf)"
}

# --- prepare ---------------------------------------------------------------------------------
check_machine() {
  [ "$(id -u)" = 0 ] || die "node: needs root (containerd, runc, network namespaces, iptables); run without node: tests/env/up k8s kafka rabbitmq postgres"
  [ -d "$(cg2)" ] && [ -w "$(cg2)" ] || die "node: no writable cgroup v2 hierarchy at $(cg2) (the egress guard needs it)"
  if [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
    local c
    for c in cpu cpuacct cpuset memory pids devices freezer; do
      [ -d "/sys/fs/cgroup/$c" ] || die "node: the cgroup v1 controller $c is not mounted at /sys/fs/cgroup/$c"
    done
  fi
  if [ -f "$OWNER" ] && [ "$(cat "$OWNER")" != "$DEVSET_ENV_DIR" ]; then
    die "node: a node is already up on this machine (environment $(cat "$OWNER")); there can be one at a time: tear it down with DEVSET_ENV_DIR=$(cat "$OWNER") tests/env/down"
  fi
}

# install: the runtime from apt, with a policy-rc.d so that the package's containerd service
# never starts (ours runs with its own root and socket).
install_packages() {
  local pkgs=(containerd runc containernetworking-plugins umoci catatonit iptables conntrack socat)
  dpkg -s "${pkgs[@]}" >/dev/null 2>&1 && return 0
  (
    flock 9
    local policy=/usr/sbin/policy-rc.d ours="" rc=0
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\n# devset tests/env/node.sh: no service starts during install\nexit 101\n' >"$policy"
      chmod 755 "$policy"
      ours=1
    fi
    apt_install "${pkgs[@]}" || rc=$?
    [ -z "$ours" ] || rm -f "$policy"
    ((rc == 0)) || die "node: apt-get install ${pkgs[*]} failed"
    if [ -d /run/systemd/system ]; then systemctl disable --now containerd >/dev/null 2>&1 || true; fi
  ) 9>"$DEVSET_CACHE/.apt.lock"
}

# The bridge, made before kubelet and the brokers start (they listen on its address). Only this
# bridge forwards; the mangle rules drop whatever would cross between it and another interface.
make_network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  sysctl -qw "net.ipv4.conf.$BRIDGE.forwarding=1"
  ipt_guard
}

ipt_guard() {
  local c=$GUARD_CHAIN
  iptables -w -N "$c" 2>/dev/null || iptables -w -F "$c"
  iptables -w -A "$c" -o lo -j RETURN
  iptables -w -A "$c" -o "$BRIDGE" -j RETURN
  iptables -w -A "$c" -m comment --comment "devset node: no traffic off this machine" -j REJECT
  iptables -w -C OUTPUT -m cgroup --path "$GUARD_CGROUP" -j "$c" 2>/dev/null ||
    iptables -w -I OUTPUT -m cgroup --path "$GUARD_CGROUP" -j "$c"
  local r
  for r in "-i $BRIDGE ! -o $BRIDGE" "-o $BRIDGE ! -i $BRIDGE"; do
    # shellcheck disable=SC2086
    iptables -w -t mangle -C FORWARD $r -m comment --comment "devset node" -j DROP 2>/dev/null ||
      iptables -w -t mangle -I FORWARD $r -m comment --comment "devset node" -j DROP
  done
}

prepare() {
  check_machine
  install_packages
  mkdir -p "$(cg2)/$GUARD_CGROUP" "$N"
  [ -f "$(cg2)/$GUARD_CGROUP/cgroup.procs" ] || die "node: cannot make the cgroup $(cg2)/$GUARD_CGROUP"
  echo "$DEVSET_ENV_DIR" >"$OWNER"
  make_network
  # The binaries build while the other components come up; `up` waits for them.
  if [ ! -d "$NODE_BIN" ] || [ ! -d "$TILT_BIN" ]; then
    start_bg node-build "$N/build.log" bash -c "bash '$DEVSET_REPO/tests/env/k8s.sh' build-node && bash '$DEVSET_REPO/tests/env/k8s.sh' build-tilt"
  fi
}

# --- images ----------------------------------------------------------------------------------
# The sandbox ("pause") image: Debian's catatonit as an OCI image made with umoci (no registry
# is reachable), cached by catatonit's version.
pause_image() {
  local ver dir tmp
  ver=$(dpkg-query -W -f='${Version}' catatonit | tr '+~:' '---')
  dir="$DEVSET_CACHE/pause-catatonit-$ver-2"
  if [ ! -f "$dir/pause.tar" ]; then
    tmp=$(mktemp -d "$DEVSET_CACHE/.pause.XXXXXX")
    (
      set -e
      cd "$tmp"
      umoci init --layout oci
      umoci new --image oci:catatonit
      umoci unpack --image oci:catatonit bundle
      install -m 755 /usr/bin/catatonit bundle/rootfs/catatonit
      umoci repack --image oci:catatonit bundle
      umoci config --image oci:catatonit --config.user 65535:65535 \
        --config.entrypoint /catatonit --config.entrypoint -P --clear=config.cmd
      umoci gc --layout oci
      tar -C oci -cf pause.tar .
    ) >"$N/pause-image.log" 2>&1 || { rm -rf "$tmp"; fail pause-image "building the pause image failed"; }
    mkdir -p "$dir"
    mv "$tmp/pause.tar" "$dir/pause.tar"
    rm -rf "$tmp"
  fi
  # The layout's tag (catatonit) becomes the image's tag under --base-name.
  ctr -a "$SOCK" -n k8s.io images import --base-name "${PAUSE_IMAGE%:*}" "$dir/pause.tar" \
    >"$N/pause-import.log" 2>&1 || fail pause-import "ctr images import of the pause image failed"
}

# --- processes -------------------------------------------------------------------------------
# in_guard NAME LOG CMD...: start_bg, with the process in the guard cgroup before it execs.
in_guard() {
  local name=$1 logf=$2
  shift 2
  start_bg "$name" "$logf" bash -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$(cg2)/$GUARD_CGROUP" "$@"
}

alive() { local f="$DEVSET_ENV_DIR/pids/$1"; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }

start_containerd() {
  mkdir -p "$N/containerd/root" "$N/containerd/state" "$N/runc" "$N/cni/net.d" "$N/cni/ipam"
  cat >"$N/containerd/config.toml" <<EOF
version = 2
root = "$N/containerd/root"
state = "$N/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$N/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$N/cni/net.d"
EOF
  # The pods' network: the bridge made by prepare; no gateway on it from the plugin, no masquerade.
  cat >"$N/cni/net.d/10-devset.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "devset",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$N/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "10.244.0.10", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0", "gw": "$NODE_IP"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF
  in_guard containerd "$N/containerd.log" containerd --config "$N/containerd/config.toml"
  local deadline=$((SECONDS + 30))
  until ctr -a "$SOCK" version >/dev/null 2>&1; do
    alive containerd || fail containerd "containerd exited during startup"
    ((SECONDS < deadline)) || fail containerd "containerd does not answer on $SOCK after 30s"
    sleep 0.2
  done
}

write_kubelet_config() { # HEALTHZ_PORT KUBELET_PORT
  # Pods resolve nothing: no cluster DNS runs, and the host's resolvers are off the machine.
  : >"$N/resolv.conf"
  local c
  if [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
    for c in /sys/fs/cgroup/*/; do
      [ "$c" != /sys/fs/cgroup/unified/ ] || continue
      mkdir -p "$c$GUARD_CGROUP"
    done
  fi
  cat >"$N/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $2
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $K8S_DIR/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $N/kubelet-serving.crt
tlsPrivateKeyFile: $N/kubelet-serving.key
cgroupDriver: cgroupfs
cgroupRoot: /$GUARD_CGROUP
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$SOCK
volumePluginDir: $N/kubelet/volume-plugins
resolvConf: $N/resolv.conf
clusterDomain: cluster.local
podCIDR: $POD_CIDR
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# No disk-pressure eviction (as kind does: "0%" turns a threshold off). The test machine's disk is
# shared and can run low; under DiskPressure the kubelet deletes every image no pod uses (the
# devset image imported before the tests) and taints the node, so nothing would schedule.
evictionHard: {memory.available: 100Mi, nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%", imagefs.inodesFree: "0%"}
registerNode: true
serializeImagePulls: false
EOF
}

node_certs() {
  local leaf="basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment"
  sign_node kubelet-serving "/CN=$NODE_NAME" "$leaf\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:$NODE_IP,DNS:$NODE_NAME"
  sign_node kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$leaf\nextendedKeyUsage=clientAuth"
  local name
  for name in kubelet admin; do
    local crt="$N/$name.crt" key="$N/$name.key"
    [ "$name" = admin ] && { crt="$K8S_DIR/admin.crt"; key="$K8S_DIR/admin.key"; }
    cat >"$N/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: devset
  cluster: {server: "$KUBE_APISERVER_URL", certificate-authority: "$K8S_DIR/ca.crt"}
users:
- name: $name
  user: {client-certificate: "$crt", client-key: "$key"}
contexts:
- name: devset
  context: {cluster: devset, user: $name}
current-context: devset
EOF
  done
}

sign_node() { # NAME SUBJECT EXTENSIONS: signed by the environment's CA
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$N/$1.key" 2>/dev/null
  openssl req -new -key "$N/$1.key" -subj "$2" -out "$N/$1.csr" 2>/dev/null
  openssl x509 -req -in "$N/$1.csr" -CA "$K8S_DIR/ca.crt" -CAkey "$K8S_DIR/ca.key" -CAcreateserial \
    -CAserial "$K8S_DIR/ca.srl" -days 3650 -extfile <(printf '%b\n' "$3") -out "$N/$1.crt" 2>/dev/null
  rm -f "$N/$1.csr"
  chmod 600 "$N/$1.key"
}

wait_build() {
  local f="$DEVSET_ENV_DIR/pids/node-build"
  if [ -f "$f" ]; then
    log "node: waiting for the node's binaries (log: $N/build.log)"
    while kill -0 "$(cat "$f")" 2>/dev/null; do sleep 1; done
    rm -f "$f"
  fi
  [ -d "$NODE_BIN" ] || bash "$DEVSET_REPO/tests/env/k8s.sh" build-node || fail build "building the node's binaries failed"
  [ -d "$TILT_BIN" ] || bash "$DEVSET_REPO/tests/env/k8s.sh" build-tilt || fail build "building tilt failed"
}

up() {
  [ -f "$OWNER" ] && [ "$(cat "$OWNER")" = "$DEVSET_ENV_DIR" ] && ip link show "$BRIDGE" >/dev/null 2>&1 ||
    die "node: run 'tests/env/node.sh prepare' first (tests/env/up does, before the other components)"
  set -a
  # shellcheck disable=SC1090
  source "$DEVSET_ENV_FILE"
  set +a
  [ -n "${KUBE_APISERVER_URL:-}" ] || die "node: the k8s component must be up first"
  wait_build
  local t0=$SECONDS api_port=${KUBE_APISERVER_URL##*:}
  node_certs
  start_containerd
  pause_image

  # Pods reach the API server through the kubernetes Service, whose endpoint is the bridge
  # address: a relay from there to the loopback port.
  in_guard apiserver-relay "$N/apiserver-relay.log" \
    socat "TCP-LISTEN:$api_port,bind=$NODE_IP,fork,reuseaddr" "TCP:127.0.0.1:$api_port"

  local kcm_port sched_port proxy_health proxy_metrics healthz kport
  kcm_port=$(free_port)
  sched_port=$(free_port)
  proxy_health=$(free_port)
  proxy_metrics=$(free_port)
  healthz=$(free_port)
  kport=$(free_port)
  in_guard kube-controller-manager "$N/kube-controller-manager.log" "$NODE_BIN/kube-controller-manager" \
    --kubeconfig="$N/admin.kubeconfig" --authentication-kubeconfig="$N/admin.kubeconfig" \
    --authorization-kubeconfig="$N/admin.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$kcm_port" --leader-elect=false \
    --service-account-private-key-file="$K8S_DIR/sa.key" --root-ca-file="$K8S_DIR/ca.crt" \
    --use-service-account-credentials=true --controllers='*,-nodeipam,-cloud-node-lifecycle' \
    --cluster-cidr="$POD_CIDR" --service-cluster-ip-range=10.0.0.0/24 \
    --concurrent-gc-syncs=5 --profiling=false --v=1
  in_guard kube-scheduler "$N/kube-scheduler.log" "$NODE_BIN/kube-scheduler" \
    --kubeconfig="$N/admin.kubeconfig" --authentication-kubeconfig="$N/admin.kubeconfig" \
    --authorization-kubeconfig="$N/admin.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$sched_port" --leader-elect=false --profiling=false --v=1
  write_kubelet_config "$healthz" "$kport"
  mkdir -p "$N/kubelet"
  in_guard kubelet "$N/kubelet.log" "$NODE_BIN/kubelet" \
    --config="$N/kubelet.yaml" --kubeconfig="$N/kubelet.kubeconfig" --root-dir="$N/kubelet" \
    --cert-dir="$N/kubelet/pki" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
  in_guard kube-proxy "$N/kube-proxy.log" "$NODE_BIN/kube-proxy" \
    --kubeconfig="$N/admin.kubeconfig" --hostname-override="$NODE_NAME" --proxy-mode=iptables \
    --cluster-cidr="$POD_CIDR" --bind-address=127.0.0.1 --nodeport-addresses="$NODE_IP/32" \
    --healthz-bind-address="127.0.0.1:$proxy_health" --metrics-bind-address="127.0.0.1:$proxy_metrics" \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
    --v=1

  local deadline=$((SECONDS + READY_TIMEOUT)) k="$K8S_BIN/kubectl" p
  until [ "$("$k" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; do
    for p in containerd kubelet kube-proxy kube-scheduler kube-controller-manager apiserver-relay; do
      alive "$p" || fail "$p" "$p exited"
    done
    ((SECONDS < deadline)) || fail kubelet "the node is not Ready after ${READY_TIMEOUT}s"
    sleep 0.5
  done
  log "node: $NODE_NAME Ready in $((SECONDS - t0))s"
  self_check
  env_line DEVSET_NODE_NAME "$NODE_NAME"
  env_line DEVSET_NODE_IP "$NODE_IP"
  env_line CONTAINERD_ADDRESS "$SOCK"
  env_line DEVSET_PAUSE_IMAGE "$PAUSE_IMAGE"
  printf "export PATH='%s:%s':\"\$PATH\"\n" "$NODE_BIN" "$TILT_BIN" >>"$DEVSET_ENV_FILE"
  log "node: kubelet $K8S_VERSION on $NODE_IP, containerd $(containerd --version | awk '{print $3}'), logs in $N"
}

# A pod of the pause image becomes Ready in a namespace whose default ServiceAccount the
# controller-manager made; the kubernetes Service points at the bridge address.
self_check() {
  local k="$K8S_BIN/kubectl" deadline=$((SECONDS + 60)) t0=$SECONDS
  until "$k" get serviceaccount default -n default >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail kube-controller-manager "no default ServiceAccount after 60s"
    sleep 0.5
  done
  "$k" run devset-node-check -n default --image="$PAUSE_IMAGE" --image-pull-policy=Never \
    --restart=Never --overrides='{"spec":{"securityContext":{"runAsNonRoot":true,"runAsUser":65535}}}' >/dev/null ||
    fail kubelet "cannot create a pod"
  "$k" wait pod/devset-node-check -n default --for=condition=Ready --timeout=60s >/dev/null ||
    fail kubelet "a pod of the pause image is not Ready after 60s ($("$k" get pod devset-node-check -n default -o jsonpath='{.status}'))"
  log "node: a pod Ready in $((SECONDS - t0))s"
  "$k" delete pod devset-node-check -n default --wait=false >/dev/null
  local ep
  ep=$("$k" get endpointslice -n default -l kubernetes.io/service-name=kubernetes -o jsonpath='{.items[0].endpoints[0].addresses[0]}')
  [ "$ep" = "$NODE_IP" ] || fail kube-controller-manager "the kubernetes Service's endpoint is '$ep', not $NODE_IP"
}

# --- down ------------------------------------------------------------------------------------
down() {
  # Another environment's node, or none made here: nothing to do.
  if [ -f "$OWNER" ] && [ "$(cat "$OWNER")" != "$DEVSET_ENV_DIR" ]; then return 0; fi
  [ -f "$OWNER" ] || [ -d "$N" ] || return 0
  local p
  for p in kubelet kube-proxy kube-scheduler kube-controller-manager apiserver-relay node-build; do stop_bg "$p"; done
  # Every container's shim of our containerd, then containerd itself.
  if [ -S "$SOCK" ]; then
    local pids
    pids=$(pgrep -f -- "containerd-shim-runc-v2 .*-address $SOCK( |\$)" || true)
    for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
  fi
  stop_bg containerd
  # Their leftovers: mounts under the environment and the fixed paths, netns, cgroups.
  local m
  for m in $(awk '{print $2}' /proc/mounts | grep -E "^($N/|/run/containerd/|/var/lib/kubelet/|/run/netns/cni-|/var/run/netns/cni-)" | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  for m in /run/netns/cni-*; do
    [ -e "$m" ] && { ip netns delete "${m##*/}" 2>/dev/null || rm -f "$m"; }
  done
  rm -rf /var/lib/kubelet/device-plugins /var/lib/cni /run/containerd
  rmdir /var/lib/kubelet 2>/dev/null || true
  local c
  for c in /sys/fs/cgroup/*/"$GUARD_CGROUP" "$(cg2)/$GUARD_CGROUP"; do
    [ -d "$c" ] || continue
    find "$c" -depth -mindepth 1 -type d -exec rmdir {} \; 2>/dev/null || true
  done
  # kube-proxy's and kubelet's rules and chains, then ours, then the bridge.
  if [ -x "$NODE_BIN/kube-proxy" ] && command -v iptables >/dev/null; then
    "$NODE_BIN/kube-proxy" --cleanup --proxy-mode=iptables >"$DEVSET_CACHE/.kube-proxy-cleanup.log" 2>&1 || true
  fi
  if command -v iptables >/dev/null; then
    drop_chains
  fi
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link delete "$BRIDGE"; fi
  for c in /sys/fs/cgroup/*/"$GUARD_CGROUP" "$(cg2)/$GUARD_CGROUP"; do
    [ -d "$c" ] && rmdir "$c" 2>/dev/null || true
  done
  if [ -f "$OWNER" ] && [ "$(cat "$OWNER")" = "$DEVSET_ENV_DIR" ]; then rm -f "$OWNER"; fi
}

# drop_chains: the rules that jump to KUBE-* or our chain, and those chains; our FORWARD drops.
drop_chains() {
  local t rule chain
  for t in filter nat mangle; do
    iptables-save -t "$t" 2>/dev/null | grep -E "^-A .*(-j (KUBE-|$GUARD_CHAIN)|devset node)" |
      grep -vE '^-A (KUBE-|'"$GUARD_CHAIN"')' | while read -r rule; do
      # shellcheck disable=SC2086
      eval "iptables -w -t $t -D ${rule#-A }" 2>/dev/null || true
    done || true # grep finds nothing: nothing to delete
    for chain in $(iptables-save -t "$t" 2>/dev/null | sed -n "s/^:\(KUBE-[^ ]*\|$GUARD_CHAIN\) .*/\1/p"); do
      iptables -w -t "$t" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables-save -t "$t" 2>/dev/null | sed -n "s/^:\(KUBE-[^ ]*\|$GUARD_CHAIN\) .*/\1/p"); do
      iptables -w -t "$t" -X "$chain" 2>/dev/null || true
    done
  done
}

case "${1:-}" in
  prepare) prepare ;;
  ip) echo "$NODE_IP" ;;
  up) up ;;
  down) down ;;
  *) die "usage: $0 prepare|up|down|ip" ;;
esac
