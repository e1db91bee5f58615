#!/usr/bin/env bash
# Component: a PostgreSQL server (Debian's postgresql) of our own, on 127.0.0.1.
#
#   bash tests/env/postgres.sh up|down
#
# Installs postgresql from apt the first time, without letting the package start its system
# cluster. Runs a cluster of its own (initdb) with the server of the newest installed major
# version (/usr/lib/postgresql/<major>/bin): TCP on 127.0.0.1 and a free port only, password
# (scram-sha-256) authentication, its unix socket in its own directory (not /var/run/postgresql).
# State and logs live in $DEVSET_ENV_DIR/postgres/ (see CLUSTER_DIRS for where the data goes).
# Appends to the env file:
#   DATABASE_URL  postgres://devset:PASS@127.0.0.1:PORT/devset (devset is the superuser)
#   DATABASE_POD_URL  with a node: the same on the node's bridge address
# tests/bin/psql-env runs psql against it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

# The physical path: the same environment always gets the same hash below, however it is spelt.
PG_DIR="$(cd "$DEVSET_ENV_DIR" && pwd -P)/postgres"
PG_ALT="/tmp/devset-postgres-$(printf '%s' "${PG_DIR%/postgres}" | sha256sum | cut -c1-8)"
PG_USER=devset

# The server refuses to run as root. As root (CI), initdb, postgres and pg_ctl run as the
# `postgres` system user (created by the package), with a clean environment; otherwise as
# ourselves. Always from /, so an unreadable working directory does not matter.
if [ "$(id -u)" = 0 ]; then
  RUN_AS=(env -C / setpriv --reuid=postgres --regid=postgres --init-groups --reset-env)
else
  RUN_AS=(env -C /)
fi
as_pg() { "${RUN_AS[@]}" "$@"; }

# pg_bin: prints the bin directory of the newest installed server, or nothing.
pg_bin() {
  local p
  p=$(printf '%s\n' /usr/lib/postgresql/*/bin/postgres | sort -V | tail -n1)
  [ -x "$p" ] && dirname "$p"
  return 0
}

# install: apt-get install with a policy-rc.d that forbids starting services (exit 101), so
# the package's system cluster (15/main, which it creates) never runs; its service is also
# disabled for later boots. A lock keeps two environments from running apt-get at once.
install() {
  [ -n "$(pg_bin)" ] && return 0
  (
    flock 9
    [ -n "$(pg_bin)" ] && exit 0
    local sudo="" policy=/usr/sbin/policy-rc.d ours="" rc=0
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\n# devset tests/env/postgres.sh: no service starts during install\nexit 101\n' |
        $sudo tee "$policy" >/dev/null
      $sudo chmod 755 "$policy"
      ours=1
    fi
    apt_install postgresql || rc=$?
    [ -z "$ours" ] || $sudo rm -f "$policy"
    ((rc == 0)) || die "postgres: apt-get install postgresql failed"
    if [ -d /run/systemd/system ]; then
      $sudo systemctl disable postgresql >/dev/null 2>&1 || true
    else
      $sudo update-rc.d postgresql disable >/dev/null 2>&1 || true
    fi
    # Stop system clusters that started anyway (a policy-rc.d of someone else's let them).
    # Our own clusters are not registered in /etc/postgresql, so pg_lsclusters never lists them.
    pg_lsclusters -h 2>/dev/null | while read -r ver name _ status _; do
      if [ "$status" = online ]; then $sudo pg_ctlcluster "$ver" "$name" stop || true; fi
    done
  ) 9>"$DEVSET_CACHE/.apt.lock"
  [ -n "$(pg_bin)" ] || die "postgres: no server in /usr/lib/postgresql/*/bin after installing postgresql"
  [ "$(id -u)" != 0 ] || id -u postgres >/dev/null 2>&1 || die "postgres: running as root needs the postgres user"
}

# CLUSTER_DIRS: the places the cluster (data dir + unix socket) of this environment may be in.
# It goes in $DEVSET_ENV_DIR/postgres/cluster when that works, else in /tmp/devset-postgres-<hash
# of DEVSET_ENV_DIR>, owned by the server's user, mode 700. The fallback is taken when
#  - we are root and the postgres user cannot traverse to $DEVSET_ENV_DIR (say it is under
#    /root, mode 700). Loosening the permissions of someone's directories instead would be a
#    side effect on the machine, and chowning the env dir would break for other components;
#    checking first (as that user) and falling back always works, whatever the parents are;
#  - the socket path would be longer than the 107 bytes a unix socket path can have.
# `up` records its choice in $DEVSET_ENV_DIR/postgres/cluster-dir; `down` looks at both places,
# so it needs neither that record nor the env file.
CLUSTER_DIRS=("$PG_DIR/cluster" "$PG_ALT")

pick_cluster_dir() {
  local cl="$PG_DIR/cluster"
  # 15 = length of "/.s.PGSQL.65535"
  if ! as_pg test -x "$PG_DIR" 2>/dev/null || ((${#cl} + 15 > 107)); then
    cl=$PG_ALT
  fi
  echo "$cl"
}

# fail MSG: shows the logs, stops the server, exits.
fail() {
  local f
  for f in "$PG_DIR/server.log" "$PG_DIR/psql.log"; do
    [ -s "$f" ] || continue
    log "postgres: last lines of $f"
    tail -n 40 "$f" >&2
  done
  down
  die "postgres: $*"
}

up() {
  install
  down # a server left from an earlier `up` of this environment
  rm -rf "$PG_DIR"
  mkdir -p "$PG_DIR"
  local bin cl port pass
  bin=$(pg_bin)
  cl=$(pick_cluster_dir)
  mkdir -m 700 "$cl" || die "postgres: cannot create $cl"
  [ "$(id -u)" != 0 ] || chown postgres:postgres "$cl"
  echo "$cl" >"$PG_DIR/cluster-dir"
  port=$(free_port)
  pass=$(python3 -c 'import secrets; print(secrets.token_hex(16))')

  # The superuser is $PG_USER, with a random password; initdb reads it from a file the server's
  # user can read, removed right after.
  (umask 077 && printf '%s\n' "$pass" >"$cl/pwfile")
  [ "$(id -u)" != 0 ] || chown postgres:postgres "$cl/pwfile"
  # --no-sync: initdb's final fsync of a throwaway cluster only costs time; the server keeps fsync.
  as_pg "$bin/initdb" -D "$cl/data" -U "$PG_USER" --pwfile="$cl/pwfile" -A scram-sha-256 \
    -E UTF8 --locale=C --no-sync >"$PG_DIR/initdb.log" 2>&1 ||
    { rm -f "$cl/pwfile"; tail -n 40 "$PG_DIR/initdb.log" >&2; fail "initdb failed"; }
  rm -f "$cl/pwfile"

  # Appended to initdb's postgresql.conf (later lines win); the files stay the server user's.
  cat >>"$cl/data/postgresql.conf" <<EOF

# devset tests/env/postgres.sh
listen_addresses = '127.0.0.1${DEVSET_NODE_IP:+,$DEVSET_NODE_IP}'
port = $port
unix_socket_directories = '$cl'
unix_socket_permissions = 0700
EOF
  # Passwords only, on the socket and on 127.0.0.1; nothing else (no ::1, no replication).
  cat >"$cl/data/pg_hba.conf" <<'EOF'
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
EOF
  # With a node (tests/env/node.sh), pods connect on the node's bridge address.
  [ -z "${DEVSET_NODE_IP:-}" ] ||
    printf 'host    all       all   %s/24  scram-sha-256\n' "$DEVSET_NODE_IP" >>"$cl/data/pg_hba.conf"

  # The postmaster in the foreground (it logs to stderr, which start_bg sends to server.log).
  start_bg postgres "$PG_DIR/server.log" "${RUN_AS[@]}" "$bin/postgres" -D "$cl/data"
  local pid deadline=$((SECONDS + 60))
  pid=$(cat "$DEVSET_ENV_DIR/pids/postgres")
  until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -d postgres -U "$PG_USER" -t 2; do
    kill -0 "$pid" 2>/dev/null || fail "the server exited during startup"
    ((SECONDS < deadline)) || fail "the server does not accept connections on 127.0.0.1:$port after 60s"
    sleep 0.1
  done
  # Over TCP with the password, as the tests will connect.
  PGPASSWORD="$pass" PGCONNECT_TIMEOUT=10 "$bin/psql" -X -q -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$port" -U "$PG_USER" -d postgres -c "CREATE DATABASE $PG_USER" \
    >"$PG_DIR/psql.log" 2>&1 || fail "CREATE DATABASE $PG_USER failed"

  env_line DATABASE_URL "postgres://$PG_USER:$pass@127.0.0.1:$port/$PG_USER"
  [ -z "${DEVSET_NODE_IP:-}" ] || env_line DATABASE_POD_URL "postgres://$PG_USER:$pass@$DEVSET_NODE_IP:$port/$PG_USER"
  log "postgres: $("$bin/postgres" --version | sed 's/^postgres (PostgreSQL) //') on 127.0.0.1:$port, data in $cl/data, logs in $PG_DIR"
}

down() {
  local bin cl
  bin=$(pg_bin)
  # pg_ctl stop -m fast: disconnects clients and shuts down cleanly. It returns once the
  # postmaster has exited, so the pid file can go (stop_bg would only wait for the exited
  # process to be reaped); if it fails, stop_bg stops what is left.
  for cl in "${CLUSTER_DIRS[@]}"; do
    if [ -n "$bin" ] && [ -f "$cl/data/postmaster.pid" ] &&
      as_pg "$bin/pg_ctl" stop -D "$cl/data" -m fast -w -t 30 >/dev/null 2>&1; then
      rm -f "$DEVSET_ENV_DIR/pids/postgres"
    fi
  done
  stop_bg postgres
  for cl in "${CLUSTER_DIRS[@]}"; do
    if [ -d "$cl" ] && [ ! -L "$cl" ]; then rm -rf "$cl"; fi
  done
  rm -f "$PG_DIR/cluster-dir"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) die "usage: $0 up|down" ;;
esac
