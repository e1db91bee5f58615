#!/usr/bin/env bash
# Component: a single-node Apache Kafka (KRaft, combined broker+controller) on 127.0.0.1.
#
#   bash tests/env/kafka.sh up|down
#
# The jars come from Maven through tests/tools/kafka/pom.xml and are cached in
# $DEVSET_CACHE/kafka-<version>-<pom hash>/libs; the broker runs with the machine's java.
# State and logs live in $DEVSET_ENV_DIR/kafka/. Appends to the env file:
#   KAFKA_BOOTSTRAP  host:port of the PLAINTEXT listener
#   KAFKA_LIBS       the jar directory (tests/bin/kafka-* run Kafka's own tools from it)
#   KAFKA_POD_BOOTSTRAP  with a node: host:port of the listener on the node's bridge address
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

POM="$DEVSET_REPO/tests/tools/kafka/pom.xml"
KAFKA_DIR="$DEVSET_ENV_DIR/kafka"
KAFKA_JAVA="$DEVSET_REPO/tests/bin/kafka-java"
# A small heap for the broker; a test broker needs neither throughput nor long GC pauses.
KAFKA_BROKER_OPTS="${KAFKA_BROKER_OPTS:--Xms256m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError -XX:ErrorFile=$KAFKA_DIR/hs_err_%p.log}"

kafka_version() { sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM"; }

# kafka_libs: prints the jar dir, resolving it with Maven the first time. The download goes to a
# temporary dir that is renamed into place, so an interrupted run never leaves half a cache.
kafka_libs() {
  local ver key home tmp
  ver=$(kafka_version)
  [ -n "$ver" ] || die "no <kafka.version> in $POM"
  key=$(sha256sum "$POM" | cut -c1-8)
  home="$DEVSET_CACHE/kafka-$ver-$key"
  if [ ! -d "$home/libs" ]; then
    command -v mvn >/dev/null || die "mvn is needed to fetch the Kafka jars"
    log "kafka: resolving Apache Kafka $ver jars with Maven (first run only)"
    tmp=$(mktemp -d "$DEVSET_CACHE/.kafka-$ver.XXXXXX")
    if ! mvn -q -B -f "$POM" -Dmaven.repo.local="$DEVSET_CACHE/m2" \
      dependency:copy-dependencies -DoutputDirectory="$tmp/libs" >"$tmp/mvn.log" 2>&1; then
      tail -n 40 "$tmp/mvn.log" >&2
      rm -rf "$tmp"
      die "kafka: mvn could not resolve the Kafka $ver jars"
    fi
    # Another environment may have won the race; then keep its copy.
    mv -T "$tmp" "$home" 2>/dev/null || rm -rf "$tmp"
  fi
  echo "$home/libs"
}

# fail MSG: shows the broker log, stops the broker, exits.
fail() {
  [ -f "$KAFKA_DIR/server.log" ] && { log "kafka: last lines of $KAFKA_DIR/server.log"; tail -n 60 "$KAFKA_DIR/server.log" >&2; }
  stop_bg kafka
  die "kafka: $*"
}

up() {
  local libs bport cport cluster_id
  libs=$(kafka_libs)
  command -v java >/dev/null || die "java is needed to run Kafka"
  down # a broker left from an earlier `up` of this environment
  rm -rf "$KAFKA_DIR"
  mkdir -p "$KAFKA_DIR/data"
  bport=$(free_port)
  cport=$(free_port)
  # With a node (tests/env/node.sh), pods reach the broker through a second listener on the
  # node's bridge address, advertised as such.
  local pod_l="" pod_a="" pod_p="" pport
  if [ -n "${DEVSET_NODE_IP:-}" ]; then
    pport=$(free_port)
    pod_l=",POD://$DEVSET_NODE_IP:$pport" pod_a=",POD://$DEVSET_NODE_IP:$pport" pod_p=",POD:PLAINTEXT"
  fi

  # Both listeners on loopback only; everything that is replicated has one replica.
  cat >"$KAFKA_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$bport,CONTROLLER://127.0.0.1:$cport$pod_l
advertised.listeners=PLAINTEXT://127.0.0.1:$bport$pod_a
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT$pod_p
log.dirs=$KAFKA_DIR/data
num.partitions=3
auto.create.topics.enable=true
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
EOF

  # The broker logs to stdout, which start_bg sends to $KAFKA_DIR/server.log.
  cat >"$KAFKA_DIR/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
EOF

  # KRaft needs its storage formatted once, with a cluster id (base64url of 16 random bytes).
  # Like Kafka's own random-uuid: URL-safe base64 of 16 random bytes, never starting with '-'
  # (the storage tool would take such an id for an option).
  cluster_id=$(python3 -c 'import base64,uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"): break
print(s)')
  # All JVMs run through tests/bin/kafka-java, which keeps a class-data archive per main class
  # in the cache: the second start of the broker takes about half the time of the first.
  export KAFKA_LIBS="$libs"
  "$KAFKA_JAVA" kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" \
    >"$KAFKA_DIR/format.log" 2>&1 || { cat "$KAFKA_DIR/format.log" >&2; die "kafka: storage format failed"; }

  KAFKA_JVM_OPTS="$KAFKA_BROKER_OPTS" KAFKA_LOG4J="$KAFKA_DIR/log4j2.properties" \
    start_bg kafka "$KAFKA_DIR/server.log" "$KAFKA_JAVA" kafka.Kafka "$KAFKA_DIR/server.properties"
  local pid deadline=$((SECONDS + 90))
  pid=$(cat "$DEVSET_ENV_DIR/pids/kafka")

  # Wait for the broker to say it started, then for it to answer a metadata call from Kafka's
  # own admin tool (TopicCommand --list), which is what the tests' clients will do first.
  until grep -q 'Kafka Server started' "$KAFKA_DIR/server.log" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || fail "the broker exited during startup"
    ((SECONDS < deadline)) || fail "the broker did not start within 90s"
    sleep 0.2
  done
  wait_port 127.0.0.1 "$bport" 30 "$KAFKA_DIR/server.log"
  printf 'request.timeout.ms=5000\ndefault.api.timeout.ms=10000\n' >"$KAFKA_DIR/admin.properties"
  until "$KAFKA_JAVA" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "127.0.0.1:$bport" --command-config "$KAFKA_DIR/admin.properties" --list \
    >/dev/null 2>"$KAFKA_DIR/probe.log"; do
    kill -0 "$pid" 2>/dev/null || fail "the broker exited during startup"
    ((SECONDS < deadline)) || { cat "$KAFKA_DIR/probe.log" >&2; fail "the broker does not answer metadata calls"; }
    sleep 0.5
  done

  env_line KAFKA_BOOTSTRAP "127.0.0.1:$bport"
  env_line KAFKA_LIBS "$libs"
  [ -z "$pod_l" ] || env_line KAFKA_POD_BOOTSTRAP "$DEVSET_NODE_IP:$pport"
  log "kafka: Apache Kafka $(kafka_version) (KRaft) on 127.0.0.1:$bport (controller :$cport), logs in $KAFKA_DIR"
}

down() {
  stop_bg kafka
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) die "usage: $0 up|down" ;;
esac
