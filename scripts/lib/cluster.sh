# shellcheck shell=bash
# The cluster stack of scripts/stack (`scripts/stack up --cluster`), sourced by
# it: what production looks like, on one machine.
#
# - Apache Kafka: three KRaft nodes, each broker and controller (a three-voter
#   quorum), clients on 127.0.0.1:9092, 9192 and 9292, controllers on 9093,
#   9193 and 9293; every topic with replication factor 3 and
#   min.insync.replicas 2, the transaction and offsets logs too.
# - Apache ZooKeeper (Maven Central, scripts/zookeeper-runtime/pom.xml) on
#   127.0.0.1:2181: ClickHouse 18.16 keeps its replication log there.
# - ClickHouse: four servers, two shards of two replicas, in the cluster
#   `context` (remote_servers, internal_replication), macros {shard} 01/02 and
#   {replica} ch-1…ch-4; HTTP on 8123, 8124, 8125, 8126, native TCP on
#   9000–9003, replication (interserver HTTP) on 9009–9012.
# - the schema registry on 8081, as in the other modes, on the three brokers.
#
# Everything lives under .stack/cluster/ (kafka-N, zookeeper, clickhouse-N),
# apart from the single-node stack's data, and survives down/up and kill -9.
# The components are zookeeper, broker-1…3, clickhouse-1…4 and registry;
# `broker` and `clickhouse` name all nodes of their kind.

ZOOKEEPER_VERSION="3.9.5"
ZOOKEEPER_RUNTIME_DIR="$ROOT/scripts/zookeeper-runtime"
ZOOKEEPER_CACHE="${ZOOKEEPER_CACHE:-$HOME/.cache/context-zookeeper/$ZOOKEEPER_VERSION}"
ZOOKEEPER_PORT="${ZOOKEEPER_PORT:-2181}"
CLUSTER_DIR="$STACK_DIR/cluster"
CLUSTER_NAME="context"
CLUSTER_BROKERS="1 2 3"
CLUSTER_CLICKHOUSES="1 2 3 4"
# Three JVMs on a development machine: half of the single node's heap each.
CLUSTER_KAFKA_HEAP_OPTS="${CLUSTER_KAFKA_HEAP_OPTS:--Xms512m -Xmx512m}"
CLUSTER_COMPONENTS="zookeeper broker-1 broker-2 broker-3 clickhouse-1 clickhouse-2 clickhouse-3 clickhouse-4 registry"

cluster_kafka_port() { echo $((9092 + 100 * ($1 - 1))); }
cluster_controller_port() { echo $((9093 + 100 * ($1 - 1))); }
cluster_bootstrap() {
  local n out=()
  for n in $CLUSTER_BROKERS; do out+=("$KAFKA_HOST:$(cluster_kafka_port "$n")"); done
  (IFS=,; echo "${out[*]}")
}
cluster_voters() {
  local n out=()
  for n in $CLUSTER_BROKERS; do out+=("$n@$KAFKA_HOST:$(cluster_controller_port "$n")"); done
  (IFS=,; echo "${out[*]}")
}
cluster_http_port() { echo $((8122 + $1)); }
cluster_tcp_port() { echo $((8999 + $1)); }
cluster_interserver_port() { echo $((9008 + $1)); }
# Servers 1 and 2 are shard 01, 3 and 4 shard 02.
cluster_shard() { printf '%02d' $((($1 + 1) / 2)); }

# What the sink's `clickhouse_shards` says for this stack: shards separated by
# `;`, the replicas of one shard by `,`.
cluster_clickhouse_shards() {
  echo "http://127.0.0.1:8123,http://127.0.0.1:8124;http://127.0.0.1:8125,http://127.0.0.1:8126"
}

# ---- ZooKeeper --------------------------------------------------------------

ensure_zookeeper_jars() {
  local marker="$ZOOKEEPER_CACHE/.complete"
  grep -q "<zookeeper.version>$ZOOKEEPER_VERSION</zookeeper.version>" "$ZOOKEEPER_RUNTIME_DIR/pom.xml" \
    || die "$ZOOKEEPER_RUNTIME_DIR/pom.xml does not pin ZooKeeper $ZOOKEEPER_VERSION (scripts/lib/cluster.sh); change both together"
  [ -f "$marker" ] && [ "$(cat "$marker")" = "$(sha256sum <"$ZOOKEEPER_RUNTIME_DIR/pom.xml")" ] && return 0
  log "installing Apache ZooKeeper $ZOOKEEPER_VERSION from Maven Central into $ZOOKEEPER_CACHE (once)"
  local tmp="$ZOOKEEPER_CACHE/libs.tmp"
  rm -rf "$tmp"; mkdir -p "$ZOOKEEPER_CACHE"
  mvn -q -B -Dstyle.color=never -f "$ZOOKEEPER_RUNTIME_DIR/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >&2 || die "Maven could not resolve ZooKeeper $ZOOKEEPER_VERSION (see above)"
  rm -rf "$ZOOKEEPER_CACHE/libs"; mv "$tmp" "$ZOOKEEPER_CACHE/libs"
  sha256sum <"$ZOOKEEPER_RUNTIME_DIR/pom.xml" >"$marker"
}

zookeeper_answers() {
  [ "$( (exec 3<>"/dev/tcp/127.0.0.1/$ZOOKEEPER_PORT" && printf ruok >&3 && timeout 2 cat <&3) 2>/dev/null)" = imok ]
}

start_zookeeper() {
  local dir="$CLUSTER_DIR/zookeeper"
  mkdir -p "$dir/data"
  if ! running_pid zookeeper >/dev/null; then
    ensure_zookeeper_jars
    port_free 127.0.0.1 "$ZOOKEEPER_PORT"
    cat >"$dir/zoo.cfg" <<CFG
# Written by scripts/stack on every start; edit scripts/lib/cluster.sh, not this file.
tickTime=2000
dataDir=$dir/data
clientPort=$ZOOKEEPER_PORT
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,mntr
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
CFG
    log "starting Apache ZooKeeper $ZOOKEEPER_VERSION on 127.0.0.1:$ZOOKEEPER_PORT, data in $dir/data"
    (cd "$dir" && exec java -Xms64m -Xmx256m -XX:+UseSerialGC -Dzookeeper.jmx.log4j.disable=true \
        -cp "$ZOOKEEPER_CACHE/libs/*" org.apache.zookeeper.server.ZooKeeperServerMain "$dir/zoo.cfg" \
        >>"$dir/zookeeper.log" 2>&1 </dev/null 9>&-) &
    echo $! >"$(pid_file zookeeper)"
  fi
  wait_until "ZooKeeper" 60 zookeeper_answers || die "ZooKeeper did not answer within 60 s; see $dir/zookeeper.log"
}

# ---- Kafka: three KRaft nodes -------------------------------------------------

# Runs "$@" with the settings of broker node N (scripts/stack's broker
# functions read them).
with_broker_node() { # N command...
  local n="$1"; shift
  local KAFKA_NODE_ID="$n" KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_VOTERS KAFKA_RF=3 KAFKA_MIN_ISR=2
  local KAFKA_BOOTSTRAP_LIST="" BROKER_NAME="broker-$n" KAFKA_HEAP_OPTS="$CLUSTER_KAFKA_HEAP_OPTS" KAFKA_CLUSTER_ID
  KAFKA_PORT="$(cluster_kafka_port "$n")"
  KAFKA_CONTROLLER_PORT="$(cluster_controller_port "$n")"
  KAFKA_VOTERS="$(cluster_voters)"
  KAFKA_CLUSTER_ID="$(cat "$CLUSTER_DIR/kafka-cluster-id")"
  "$@"
}

cluster_launch_broker() { # dir: the node's storage formatted once, the process started
  local dir="$1"
  mkdir -p "$dir/data"
  format_storage "$dir"
  running_pid "$BROKER_NAME" >/dev/null || launch_broker "$dir"
}

# Starts the requested nodes, all before waiting for any (one node alone has
# no quorum), then applies the topics with three replicas.
start_cluster_brokers() { # node numbers
  ensure_kafka_jars || die "installing Apache Kafka failed"
  mkdir -p "$CLUSTER_DIR"
  [ -s "$CLUSTER_DIR/kafka-cluster-id" ] \
    || kafka_tool kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 >"$CLUSTER_DIR/kafka-cluster-id"
  local n
  for n in "$@"; do with_broker_node "$n" cluster_launch_broker "$CLUSTER_DIR/kafka-$n"; done
  for n in "$@"; do with_broker_node "$n" start_broker_process "$CLUSTER_DIR/kafka-$n"; done
  local KAFKA_RF=3
  create_topics
}

# ---- ClickHouse: two shards of two replicas ------------------------------------

cluster_clickhouse_answers() { # N
  [ "$(curl -s --max-time 5 "http://127.0.0.1:$(cluster_http_port "$1")/?query=SELECT%201" 2>/dev/null)" = "1" ]
}

# The cluster, ZooKeeper and this server's macros, merged into the packaged
# config (ClickHouse reads config.d/ beside its config file).
write_cluster_xml() { # N dir
  local n="$1" dir="$2" shard s r
  mkdir -p "$dir/config.d"
  {
    echo "<!-- Written by scripts/stack on every start; edit scripts/lib/cluster.sh, not this file. -->"
    echo "<yandex>"
    echo "  <remote_servers>"
    echo "    <$CLUSTER_NAME>"
    for s in 1 2; do
      echo "      <shard>"
      echo "        <internal_replication>true</internal_replication>"
      for r in $((2 * s - 1)) $((2 * s)); do
        echo "        <replica><host>127.0.0.1</host><port>$(cluster_tcp_port "$r")</port></replica>"
      done
      echo "      </shard>"
    done
    echo "    </$CLUSTER_NAME>"
    echo "  </remote_servers>"
    echo "  <zookeeper><node><host>127.0.0.1</host><port>$ZOOKEEPER_PORT</port></node></zookeeper>"
    shard="$(cluster_shard "$n")"
    echo "  <macros><cluster>$CLUSTER_NAME</cluster><shard>$shard</shard><replica>ch-$n</replica></macros>"
    echo "  <interserver_http_host>127.0.0.1</interserver_http_host>"
    echo "  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>"
    echo "</yandex>"
  } >"$dir/config.d/cluster.xml"
}

start_cluster_clickhouse() { # N
  local n="$1" dir="$CLUSTER_DIR/clickhouse-$1"
  mkdir -p "$dir"
  if ! running_pid "clickhouse-$n" >/dev/null; then
    local CLICKHOUSE_HTTP_PORT CLICKHOUSE_TCP_PORT CLICKHOUSE_INTERSERVER_PORT
    CLICKHOUSE_HTTP_PORT="$(cluster_http_port "$n")"
    CLICKHOUSE_TCP_PORT="$(cluster_tcp_port "$n")"
    CLICKHOUSE_INTERSERVER_PORT="$(cluster_interserver_port "$n")"
    port_free 127.0.0.1 "$CLICKHOUSE_HTTP_PORT"
    port_free 127.0.0.1 "$CLICKHOUSE_TCP_PORT"
    write_clickhouse_config "$dir"
    write_cluster_xml "$n" "$dir"
    log "starting ClickHouse clickhouse-$n (shard $(cluster_shard "$n"), replica ch-$n) on http://127.0.0.1:$CLICKHOUSE_HTTP_PORT, data in $dir/data"
    (cd "$dir" && exec nohup clickhouse-server --config-file="$dir/config.xml" >>"$dir/log/stdout.log" 2>&1 </dev/null 9>&-) &
    echo $! >"$(pid_file "clickhouse-$n")"
  fi
}

# ---- the mode's commands ----------------------------------------------------------

# Starts the requested components in the order they need each other.
start_cluster() { # components
  local c brokers=() clickhouses=() registry=0 zookeeper=0
  for c in "$@"; do
    case "$c" in
      zookeeper) zookeeper=1 ;;
      broker-*) brokers+=("${c#broker-}") ;;
      clickhouse-*) clickhouses+=("${c#clickhouse-}") ;;
      registry) registry=1 ;;
    esac
  done
  export KAFKA_BOOTSTRAP_LIST
  KAFKA_BOOTSTRAP_LIST="$(cluster_bootstrap)"
  if [ "$zookeeper" = 1 ] || [ "${#clickhouses[@]}" -gt 0 ]; then start_zookeeper; fi
  if [ "${#brokers[@]}" -gt 0 ]; then start_cluster_brokers "${brokers[@]}"; fi
  for c in "${clickhouses[@]}"; do start_cluster_clickhouse "$c"; done
  for c in "${clickhouses[@]}"; do
    wait_until "ClickHouse clickhouse-$c" 60 cluster_clickhouse_answers "$c" \
      || die "clickhouse-$c did not answer within 60 s; see $CLUSTER_DIR/clickhouse-$c/log/"
  done
  if [ "$registry" = 1 ]; then start_registry; fi
  log "cluster: Kafka on $(cluster_bootstrap); ClickHouse cluster '$CLUSTER_NAME', shards $(cluster_clickhouse_shards)"
}

cluster_status() {
  local n
  status_line zookeeper "127.0.0.1:$ZOOKEEPER_PORT" "$CLUSTER_DIR/zookeeper/zookeeper.log" zookeeper_answers
  for n in $CLUSTER_BROKERS; do
    # shellcheck disable=SC2329
    probe() { with_broker_node "$n" broker_answers; }
    status_line "broker-$n" "$KAFKA_HOST:$(cluster_kafka_port "$n")" "$CLUSTER_DIR/kafka-$n/broker.log" probe
  done
  for n in $CLUSTER_CLICKHOUSES; do
    # shellcheck disable=SC2329
    probe() { cluster_clickhouse_answers "$n"; }
    status_line "clickhouse-$n" "http://127.0.0.1:$(cluster_http_port "$n") s$(cluster_shard "$n")" "$CLUSTER_DIR/clickhouse-$n/log/" probe
  done
}
