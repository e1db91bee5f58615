#!/usr/bin/env bash
# Component: a RabbitMQ node (Debian's rabbitmq-server) of our own, on 127.0.0.1.
#
#   bash tests/env/rabbitmq.sh up|down
#
# Installs rabbitmq-server and amqp-tools from apt the first time, without letting the package
# start its system service. Runs a node in the foreground with everything under
# $DEVSET_ENV_DIR/rabbitmq/: its own epmd (port-mapper) and Erlang cookie, AMQP, Erlang
# distribution and epmd on free loopback ports, so environments never share anything.
# Appends to the env file:
#   AMQP_URL                  amqp://USER:PASS@127.0.0.1:PORT/%2f (administrator, full rights on /)
#   AMQP_POD_URL              with a node: the same on the node's bridge address
#   DEVSET_RABBITMQ_NODENAME  the node name, rabbit-<hash of DEVSET_ENV_DIR>@localhost
#   DEVSET_RABBITMQ_HOME      the HOME holding the node's Erlang cookie
#   DEVSET_ERL_EPMD_PORT      the port of the environment's epmd
# tests/bin/rabbitmqctl-env runs rabbitmqctl against the node with these.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

RMQ_DIR="$DEVSET_ENV_DIR/rabbitmq"
RMQ_BIN=/usr/lib/rabbitmq/bin # the real scripts; /usr/sbin/* would switch to the rabbitmq user
CTL="$DEVSET_REPO/tests/bin/rabbitmqctl-env"

# install: apt-get install with a policy-rc.d that forbids starting services (exit 101), so
# the package's system node never runs; on systemd hosts it is also disabled for later boots.
install() {
  dpkg -s rabbitmq-server amqp-tools >/dev/null 2>&1 && return 0
  local sudo="" policy=/usr/sbin/policy-rc.d ours="" rc=0
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# devset tests/env/rabbitmq.sh: no service starts during install\nexit 101\n' |
      $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    ours=1
  fi
  apt_install rabbitmq-server amqp-tools || rc=$?
  [ -z "$ours" ] || $sudo rm -f "$policy"
  ((rc == 0)) || die "rabbitmq: apt-get install rabbitmq-server amqp-tools failed"
  # Only stop a system node that runs: the init script's `stop` runs rabbitmqctl, which would
  # start a system-wide epmd on 0.0.0.0:4369.
  if [ -d /run/systemd/system ]; then
    $sudo systemctl disable rabbitmq-server >/dev/null 2>&1 || true
    if systemctl is-active --quiet rabbitmq-server; then $sudo systemctl stop rabbitmq-server || true; fi
  else
    $sudo update-rc.d rabbitmq-server disable >/dev/null 2>&1 || true
    if pgrep -u rabbitmq -x beam.smp >/dev/null; then $sudo invoke-rc.d rabbitmq-server stop || true; fi
  fi
}

# node_env: the environment shared by the server, epmd and rabbitmqctl-env. The settings of
# one environment come from its dir, so `down` finds the same node without the env file.
node_env() {
  local id
  id=$(printf '%s' "$DEVSET_ENV_DIR" | sha256sum | cut -c1-8)
  export DEVSET_RABBITMQ_NODENAME="rabbit-$id@localhost"
  export DEVSET_RABBITMQ_HOME="$RMQ_DIR/home"
  [ -f "$RMQ_DIR/epmd.port" ] && DEVSET_ERL_EPMD_PORT=$(cat "$RMQ_DIR/epmd.port")
  export DEVSET_ERL_EPMD_PORT="${DEVSET_ERL_EPMD_PORT:-}"
}

# fail MSG: shows the node's logs, stops what was started, exits.
fail() {
  local f
  for f in "$RMQ_DIR/epmd.log" "$RMQ_DIR/server.log" "$RMQ_DIR"/log/*.log; do
    [ -s "$f" ] || continue
    log "rabbitmq: last lines of $f"
    tail -n 40 "$f" >&2
  done
  down
  die "rabbitmq: $*"
}

up() {
  install
  down # a node left from an earlier `up` of this environment
  rm -rf "$RMQ_DIR"
  mkdir -p "$RMQ_DIR/home" "$RMQ_DIR/mnesia" "$RMQ_DIR/log"
  local amqp_port dist_port epmd_port user pass
  amqp_port=$(free_port)
  dist_port=$(free_port)
  epmd_port=$(free_port)
  echo "$epmd_port" >"$RMQ_DIR/epmd.port"
  node_env

  # A per-environment Erlang cookie in a per-environment HOME.
  python3 -c 'import secrets; print(secrets.token_hex(20), end="")' >"$RMQ_DIR/home/.erlang.cookie"
  chmod 400 "$RMQ_DIR/home/.erlang.cookie"

  # The user is created by the node at its first boot (instead of guest), with a random password.
  user=devset
  pass=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  cat >"$RMQ_DIR/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$amqp_port
${DEVSET_NODE_IP:+listeners.tcp.2 = $DEVSET_NODE_IP:$amqp_port}
default_user = $user
default_pass = $pass
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
log.console = true
log.console.level = info
log.file.level = info
EOF
  echo '[].' >"$RMQ_DIR/enabled_plugins" # no plugins: no management or other listeners
  : >"$RMQ_DIR/rabbitmq-env.conf"        # instead of /etc/rabbitmq/rabbitmq-env.conf

  # The environment's own epmd, on loopback only, in the foreground so that stop_bg ends it.
  start_bg epmd "$RMQ_DIR/epmd.log" env ERL_EPMD_ADDRESS=127.0.0.1 epmd -port "$epmd_port" -address 127.0.0.1
  wait_port 127.0.0.1 "$epmd_port" 10 "$RMQ_DIR/epmd.log"

  # Erlang distribution on loopback only; never let erl start an epmd of its own.
  start_bg rabbitmq "$RMQ_DIR/server.log" env \
    HOME="$DEVSET_RABBITMQ_HOME" \
    ERL_EPMD_PORT="$epmd_port" ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_NODENAME="$DEVSET_RABBITMQ_NODENAME" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$amqp_port" \
    RABBITMQ_DIST_PORT="$dist_port" \
    RABBITMQ_CONF_ENV_FILE="$RMQ_DIR/rabbitmq-env.conf" \
    RABBITMQ_CONFIG_FILE="$RMQ_DIR/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$RMQ_DIR/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_DIR/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia" \
    RABBITMQ_LOG_BASE="$RMQ_DIR/log" \
    RABBITMQ_PID_FILE="$RMQ_DIR/rabbitmq.pid" \
    RABBITMQ_SCHEDULER_BIND_TYPE=u ERL_CRASH_DUMP="$RMQ_DIR/erl_crash.dump" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}" \
    "$RMQ_BIN/rabbitmq-server"
  local pid deadline=$((SECONDS + 90))
  pid=$(cat "$DEVSET_ENV_DIR/pids/rabbitmq")

  # The AMQP listener opens late in the boot; then await_startup confirms the node is running.
  until (exec 3<>"/dev/tcp/127.0.0.1/$amqp_port") 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || fail "the node exited during startup"
    ((SECONDS < deadline)) || fail "the node did not open 127.0.0.1:$amqp_port within 90s"
    sleep 0.2
  done
  until "$CTL" -q await_startup --timeout 30 >"$RMQ_DIR/ctl.log" 2>&1; do
    kill -0 "$pid" 2>/dev/null || fail "the node exited during startup"
    ((SECONDS < deadline)) || { cat "$RMQ_DIR/ctl.log" >&2; fail "rabbitmqctl await_startup failed"; }
    sleep 0.5
  done

  env_line AMQP_URL "amqp://$user:$pass@127.0.0.1:$amqp_port/%2f"
  # With a node (tests/env/node.sh), pods connect on the node's bridge address.
  [ -z "${DEVSET_NODE_IP:-}" ] || env_line AMQP_POD_URL "amqp://$user:$pass@$DEVSET_NODE_IP:$amqp_port/%2f"
  env_line DEVSET_RABBITMQ_NODENAME "$DEVSET_RABBITMQ_NODENAME"
  env_line DEVSET_RABBITMQ_HOME "$DEVSET_RABBITMQ_HOME"
  env_line DEVSET_ERL_EPMD_PORT "$epmd_port"
  log "rabbitmq: $(dpkg-query -W -f='${Version}' rabbitmq-server) node $DEVSET_RABBITMQ_NODENAME on 127.0.0.1:$amqp_port (dist :$dist_port, epmd :$epmd_port), logs in $RMQ_DIR"
}

down() {
  node_env
  # TERM makes rabbitmq-server stop the node cleanly; then the environment's epmd goes.
  stop_bg rabbitmq
  stop_bg epmd
  if [ -n "$DEVSET_ERL_EPMD_PORT" ] && command -v epmd >/dev/null; then
    ERL_EPMD_PORT="$DEVSET_ERL_EPMD_PORT" epmd -kill >/dev/null 2>&1 || true
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) die "usage: $0 up|down" ;;
esac
