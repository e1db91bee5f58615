# Shared helpers for the test-environment scripts. Sourced, not run.
#
# Layout (all overridable through the environment):
#   DEVSET_CACHE    where built/downloaded tools live, keyed by version; outside the repo so a
#                   fresh clone reuses them (default: ~/.cache/devset)
#   DEVSET_ENV_DIR  the state of one running environment: data dirs, logs, pids, certs and the
#                   env file (default: <repo>/target/testenv). Two checkouts, or two values of
#                   this variable, give two environments that do not collide.
#   DEVSET_ENV_FILE the file of connection settings (default: $DEVSET_ENV_DIR/env.sh)
set -euo pipefail

DEVSET_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEVSET_CACHE="${DEVSET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/devset}"
DEVSET_ENV_DIR="${DEVSET_ENV_DIR:-$DEVSET_REPO/target/testenv}"
DEVSET_ENV_FILE="${DEVSET_ENV_FILE:-$DEVSET_ENV_DIR/env.sh}"
export DEVSET_REPO DEVSET_CACHE DEVSET_ENV_DIR DEVSET_ENV_FILE
mkdir -p "$DEVSET_CACHE" "$DEVSET_ENV_DIR"

log() { printf '[testenv %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# free_port: prints a TCP port on 127.0.0.1 that is free right now. Ports handed out in this
# environment are remembered so two components never get the same one.
free_port() {
  local p
  while :; do
    p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
    if ! grep -qx "$p" "$DEVSET_ENV_DIR/.ports" 2>/dev/null; then
      echo "$p" >>"$DEVSET_ENV_DIR/.ports"
      echo "$p"
      return
    fi
  done
}

# wait_port HOST PORT SECONDS [LOGFILE]: waits until something accepts connections.
wait_port() {
  local host=$1 port=$2 secs=$3 logf=${4:-}
  local deadline=$((SECONDS + secs))
  until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      [ -n "$logf" ] && [ -f "$logf" ] && tail -n 40 "$logf" >&2
      die "nothing listens on $host:$port after ${secs}s"
    fi
    sleep 0.2
  done
}

# start_bg NAME LOGFILE CMD...: starts CMD in its own process group, records its pid in
# $DEVSET_ENV_DIR/pids/NAME so that `down` can stop it, and the command (with the directory and
# the exported environment it ran in) in $DEVSET_ENV_DIR/cmds/NAME, so that `tests/env/proc`
# can start it again (the fault tests stop and start Kafka, etcd, PostgreSQL… in place).
start_bg() {
  local name=$1 logf=$2
  shift 2
  mkdir -p "$DEVSET_ENV_DIR/pids" "$DEVSET_ENV_DIR/cmds"
  {
    export -p
    printf 'cd %q\n' "$PWD"
    printf 'logf=%q\n' "$logf"
    printf 'cmd=('
    printf '%q ' "$@"
    printf ')\n'
  } >"$DEVSET_ENV_DIR/cmds/$name"
  setsid "$@" >"$logf" 2>&1 </dev/null &
  echo $! >"$DEVSET_ENV_DIR/pids/$name"
}

# stop_bg NAME: stops what start_bg started (TERM to the group, then KILL).
stop_bg() {
  local f="$DEVSET_ENV_DIR/pids/$1" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# env_line KEY VALUE: appends `export KEY='VALUE'` to the env file.
env_line() {
  printf "export %s='%s'\n" "$1" "$2" >>"$DEVSET_ENV_FILE"
}

# apt_install PKG...: installs Debian packages that are missing (runs apt-get update once).
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  log "apt-get install ${missing[*]}"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
