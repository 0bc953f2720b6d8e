#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Local Apache Kafka in KRaft combined mode (broker+controller per JVM), no Docker.
# Usage: kafka.sh install|start|stop|status
#        kafka.sh cli <main-class> [args...]   run a Kafka CLI class, e.g.
#          kafka.sh cli org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --list
#        kafka.sh kill-node N       SIGKILL node N (fault tests); `start` brings it back
#        kafka.sh active-controller print the node id of the active KRaft controller
# KAFKA_BROKERS=1 (default): one node, broker 127.0.0.1:9092, controller :9093.
# KAFKA_BROKERS=3: three nodes, brokers :9092/:9094/:9096, controllers :9093/:9095/:9097.
# KAFKA_PORT_BASE (default 9090) moves every port: with 19090, brokers :19092/:19094/:19096. A
# cluster on another base runs beside the stack's own, with its own data; the replicated-cluster
# tests use KAFKA_BROKERS=3 KAFKA_PORT_BASE=19090.
# KAFKA_ADVERTISED_PORT_BASE (default: KAFKA_PORT_BASE) is where clients are told to connect on
# the plaintext listener: the network-fault tests put a proxy there (that proxy must be up before
# `start`, whose health check connects through it).
# Every broker also has a SASL_SSL listener (SCRAM-SHA-256/512, certificate from the stack's CA)
# at :9192 (:9194/:9196), where ACLs apply (StandardAuthorizer): the secured side of the stack.
# The plaintext listener stays open to everyone on loopback (its principal, ANONYMOUS, is a super
# user), so the demo and tools need no credentials. SCRAM super user: admin / admin-secret.
# Jars come from Maven Central via stack/kafka/pom.xml (there is no Kafka tarball mirror here).
set -euo pipefail
SERVICE=kafka
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

POM="$REPO_ROOT/stack/kafka/pom.xml"
LOG4J_CONF="$REPO_ROOT/stack/kafka/log4j2.properties"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
# Keyed by the pom's hash so any edit to it (versions, exclusions) triggers a refetch.
LIBS="$CACHE_DIR/kafka/$VERSION-$(sha256sum "$POM" | cut -c1-12)"
N="${KAFKA_BROKERS:-1}"
[[ "$N" == 1 || "$N" == 3 ]] || die "KAFKA_BROKERS must be 1 or 3, got '$N'"

PORT_BASE="${KAFKA_PORT_BASE:-9090}"
if ! [[ "$PORT_BASE" =~ ^[0-9]+$ ]] || ((PORT_BASE < 1024 || PORT_BASE > 65000)); then
  die "KAFKA_PORT_BASE must be a number from 1024 to 65000, got '$PORT_BASE'"
fi

# 1-node and 3-node clusters have different quorums, so each keeps its own data; so does each
# port base.
cluster_dir() {
  if [[ "$PORT_BASE" == 9090 ]]; then echo "$STACK_DIR/kafka/cluster-$1"; else echo "$STACK_DIR/kafka/cluster-$1-p$PORT_BASE"; fi
}
broker_port() { echo $((PORT_BASE + 2 * $1)); }       # node 1 -> 9092, 2 -> 9094, 3 -> 9096
controller_port() { echo $((PORT_BASE + 1 + 2 * $1)); } # node 1 -> 9093, 2 -> 9095, 3 -> 9097
secure_port() { echo $((PORT_BASE + 100 + 2 * $1)); }   # node 1 -> 9192, 2 -> 9194, 3 -> 9196
ADVERTISED_BASE="${KAFKA_ADVERTISED_PORT_BASE:-$PORT_BASE}"
advertised_port() { echo $((ADVERTISED_BASE + 2 * $1)); }
ADMIN_USER="admin"
ADMIN_PASSWORD=admin-secret
KEYSTORE_PASSWORD=imgstream-keystore
secure_bootstrap() { local i a=(); for i in $(seq 1 "$1"); do a+=("127.0.0.1:$(secure_port "$i")"); done; (IFS=,; echo "${a[*]}"); }
bootstrap() { local i a=(); for i in $(seq 1 "$1"); do a+=("127.0.0.1:$(broker_port "$i")"); done; (IFS=,; echo "${a[*]}"); }

# kjava CLASS ARGS...: a Kafka main class on the cached classpath; tool logging goes to stderr.
kjava() {
  java -Xmx512m -cp "$LIBS/*" -Dlog4j2.configurationFile="$LOG4J_CONF" \
    -Dkafka.log.target=SYSTEM_ERR -Dkafka.root.level=WARN "$@"
}

install() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  [[ -f "$LIBS/.complete" ]] && return 0
  command -v mvn >/dev/null || apt_install maven
  say "fetching Kafka $VERSION jars from Maven Central into $LIBS"
  rm -rf "$LIBS" "$LIBS.tmp"
  # KAFKA_MVN_ARGS lets callers add e.g. -Dmaven.repo.local=... (unquoted on purpose: several args).
  # Output is only shown on failure: Debian's Maven 3.8 prints stray ANSI codes even with -q -B.
  local out
  # shellcheck disable=SC2086
  out="$(mvn -q -B -f "$POM" ${KAFKA_MVN_ARGS:-} dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" 2>&1)" \
    || { printf '%s\n' "$out" >&2; die "Maven could not fetch the Kafka jars (output above)"; }
  touch "$LIBS.tmp/.complete" && mv "$LIBS.tmp" "$LIBS"
}

# running_clusters: node counts (1 and/or 3) of this port base's clusters with a live node.
running_clusters() {
  local n f
  for n in 1 3; do
    for f in "$(cluster_dir "$n")"/node*/kafka.pid; do pid_alive "$f" && { echo "$n"; break; }; done
  done
  return 0
}

KEYSTORE="$TLS_DIR/kafka.p12"
make_keystore() { # Java's Kafka reads PKCS12 (not an unencrypted PEM key)
  issue_cert kafka
  [[ -f "$KEYSTORE" && "$KEYSTORE" -nt "$TLS_DIR/kafka.crt" ]] && return 0
  openssl pkcs12 -export -in "$TLS_DIR/kafka.crt" -inkey "$TLS_DIR/kafka.key" -certfile "$TLS_DIR/ca.crt" \
    -name kafka -passout "pass:$KEYSTORE_PASSWORD" -out "$KEYSTORE" || die "making the Kafka keystore failed"
}

# The SCRAM super user: written at format time for new storage, and checked through the brokers
# at every start (storage formatted before the secured listener existed has none; and once, on
# this machine, the SCRAM-SHA-512 credential was gone after a day of broker restarts).
SCRAM_ADMIN="SCRAM-SHA-512=[name=$ADMIN_USER,password=$ADMIN_PASSWORD]"
ensure_scram_admin() {
  local have m
  have="$(kjava kafka.admin.ConfigCommand --bootstrap-server "$(bootstrap "$N")" --describe \
    --entity-type users --entity-name "$ADMIN_USER" 2>/dev/null)" || die "describing the SCRAM user $ADMIN_USER failed"
  for m in 512 256; do
    grep -q "SCRAM-SHA-$m=" <<<"$have" && continue
    say "adding the SCRAM-SHA-$m credential of $ADMIN_USER"
    # One mechanism per request: the brokers refuse two changes to one user in a request.
    kjava kafka.admin.ConfigCommand --bootstrap-server "$(bootstrap "$N")" --alter --entity-type users \
      --entity-name "$ADMIN_USER" --add-config "SCRAM-SHA-$m=[password=$ADMIN_PASSWORD]" >&2 \
      || die "adding the SCRAM user $ADMIN_USER failed"
  done
}

write_config() { # NODE_DIR NODE_ID
  local dir="$1" i="$2" voters=() j
  for j in $(seq 1 "$N"); do voters+=("$j@127.0.0.1:$(controller_port "$j")"); done
  # Static quorum (controller.quorum.voters) works the same for 1 and 3 nodes and needs
  # no dynamic voter registration, which is all a throwaway dev cluster needs.
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$(IFS=,; echo "${voters[*]}")
listeners=PLAINTEXT://127.0.0.1:$(broker_port "$i"),CONTROLLER://127.0.0.1:$(controller_port "$i"),SASL_SSL://127.0.0.1:$(secure_port "$i")
advertised.listeners=PLAINTEXT://127.0.0.1:$(advertised_port "$i"),SASL_SSL://127.0.0.1:$(secure_port "$i")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$KEYSTORE
listener.name.sasl_ssl.ssl.keystore.password=$KEYSTORE_PASSWORD
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:$ADMIN_USER
log.dirs=$dir/data
# imgstream setup creates its topics explicitly; typos must fail, not create topics.
auto.create.topics.enable=false
num.partitions=1
offsets.topic.replication.factor=$N
transaction.state.log.replication.factor=$N
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=$N
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Both group protocols, so consumers may use KIP-848's (KAFKA_GROUP_PROTOCOL=consumer). Kafka 4.x
# has it on by default (group.version 1 is finalized at format time); said here so it is not
# lost to a default that changes.
group.coordinator.rebalance.protocols=classic,consumer
EOF
}

node_started() { # NODE_ID LOG
  port_open "$(broker_port "$1")" && grep -q 'Kafka Server started' "$2"
}

start() {
  install
  if all_up "$N"; then
    ensure_scram_admin
    say "already running ($N node(s) at $(bootstrap "$N"))"
    return 0
  fi
  local other
  other="$(running_clusters | grep -vx "$N" || true)"
  [[ -z "$other" ]] || die "a ${other}-node Kafka cluster is running; run 'kafka.sh stop' before starting $N node(s)"

  local cdir i dir port
  cdir="$(cluster_dir "$N")"
  mkdir -p "$cdir"
  make_keystore
  # One cluster id per data set, generated once and kept next to the data.
  [[ -s "$cdir/cluster-id" ]] || kjava kafka.tools.StorageTool random-uuid >"$cdir/cluster-id"
  for i in $(seq 1 "$N"); do
    dir="$cdir/node$i"
    pid_alive "$dir/kafka.pid" && continue
    for port in "$(broker_port "$i")" "$(controller_port "$i")" "$(secure_port "$i")"; do
      port_open "$port" && die "port $port is already in use by another process (not our Kafka): $(ss -ltnpH "sport = :$port" | head -1)"
    done
    mkdir -p "$dir/data"
    write_config "$dir" "$i"
    if [[ ! -f "$dir/data/meta.properties" ]]; then
      say "formatting storage of node $i (cluster id $(cat "$cdir/cluster-id"))"
      kjava kafka.tools.StorageTool format -t "$(cat "$cdir/cluster-id")" -c "$dir/server.properties" \
        --add-scram "$SCRAM_ADMIN" --add-scram "${SCRAM_ADMIN/512/256}" >&2 \
        || die "formatting storage in $dir/data failed"
    fi
    [[ -f "$dir/kafka.log" ]] && mv "$dir/kafka.log" "$dir/kafka.log.prev" # health check greps this run's log
    say "starting node $i (broker 127.0.0.1:$(broker_port "$i"), controller 127.0.0.1:$(controller_port "$i")); log: $dir/kafka.log"
    # The JVM flags Kafka's documentation gives (operations, "Java Version"), with a heap that
    # fits these machines. 16 MiB regions keep a 2 MiB image record out of G1's humongous path:
    # with the default 1 MiB regions, every such produce request forced a young collection
    # (about eight a second while 2 MiB images were produced).
    # setsid: detach from our process group so Ctrl-C in the calling shell doesn't kill Kafka.
    # shellcheck disable=SC2016 # $$ and $@ expand in the child shell
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/kafka.pid" \
      java -Xmx1g -Xms1g -XX:MetaspaceSize=96m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:InitiatingHeapOccupancyPercent=35 -XX:G1HeapRegionSize=16M -XX:MinMetaspaceFreeRatio=50 \
      -XX:MaxMetaspaceFreeRatio=80 -XX:+ExplicitGCInvokesConcurrent \
      -cp "$LIBS/*" -Dlog4j2.configurationFile="$LOG4J_CONF" \
      kafka.Kafka "$dir/server.properties" >"$dir/kafka.log" 2>&1 </dev/null &
  done
  for i in $(seq 1 "$N"); do
    dir="$cdir/node$i"
    wait_until "$STACK_TIMEOUT" "$dir/kafka.log" node_started "$i" "$dir/kafka.log" \
      || die "node $i did not report 'Kafka Server started' within ${STACK_TIMEOUT}s"
  done
  # Real metadata round-trip through the client API, not just an open port.
  wait_until 60 "$cdir/node1/kafka.log" kjava org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$(bootstrap "$N")" --list \
    || die "brokers are up but do not answer metadata requests"
  ensure_scram_admin
  say "up: $N node(s) at $(bootstrap "$N"); SASL_SSL at $(secure_bootstrap "$N") (CA $TLS_DIR/ca.crt)"
}

all_up() { # NODES: every node's process alive, started, and its broker port open
  local i dir
  for i in $(seq 1 "$1"); do
    dir="$(cluster_dir "$1")/node$i"
    pid_alive "$dir/kafka.pid" && node_started "$i" "$dir/kafka.log" || return 1
  done
}

stop() {
  local f n pids=()
  for n in 1 3; do
    for f in "$(cluster_dir "$n")"/node*/kafka.pid; do pid_alive "$f" && pids+=("$f"); done
  done
  ((${#pids[@]})) || { say "not running"; return 0; }
  say "stopping ${#pids[@]} node(s)"
  # Signal all nodes first: a combined node that loses quorum mid-shutdown waits for it.
  for f in "${pids[@]}"; do kill "$(cat "$f")" 2>/dev/null || true; done
  for f in "${pids[@]}"; do stop_pidfile "$f"; done
  say "stopped"
}

status() {
  local n
  n="$(running_clusters | head -1)"
  if [[ -n "$n" ]] && all_up "$n"; then
    printf 'kafka  up  %s  %s\n' "$VERSION" "$(bootstrap "$n")"
  else
    printf 'kafka  down  %s  %s\n' "$VERSION" "$(bootstrap "${n:-$N}")"
    return 1
  fi
}

kill_node() { # NODE_ID: SIGKILL, no clean shutdown (a crashed broker)
  local pidfile
  if ! [[ "${1:-}" =~ ^[1-3]$ ]] || (($1 > N)); then die "usage: kill-node <1..$N>"; fi
  pidfile="$(cluster_dir "$N")/node$1/kafka.pid"
  pid_alive "$pidfile" || die "node $1 is not running"
  kill -9 "$(cat "$pidfile")"
  while pid_alive "$pidfile"; do sleep 0.1; done
  rm -f "$pidfile"
  say "killed node $1"
}

active_controller() {
  kjava org.apache.kafka.tools.MetadataQuorumCommand --bootstrap-server "$(bootstrap "$N")" \
    describe --status 2>/dev/null | sed -n 's/^LeaderId:[[:space:]]*\([0-9]*\).*/\1/p' | grep . \
    || die "the metadata quorum did not name its leader"
}

case "${1:-}" in
  install) install ;;
  kill-node) kill_node "${2:-}" ;;
  active-controller) active_controller ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  cli) shift; [[ $# -ge 1 ]] || die "usage: kafka.sh cli <main-class> [args...]"; install; kjava "$@" ;;
  *) die "usage: kafka.sh install|start|stop|status|kill-node N|active-controller|cli <class> [args...]" ;;
esac
