# shellcheck shell=bash
# Apache Kafka from Maven Central, shared by scripts/stack and scripts/kafka.
#
# The jars of kafka-runtime/pom.xml (the broker, the tools and their
# dependencies) are copied once into $KAFKA_CACHE/libs, outside the clone, with
# Maven; the broker and every tool run from that directory with the java on
# PATH. Nothing else is downloaded.

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_VERSION="4.1.1"
KAFKA_CACHE="${KAFKA_CACHE:-$HOME/.cache/context-kafka/$KAFKA_VERSION}"
KAFKA_RUNTIME_DIR="$SCRIPTS_DIR/kafka-runtime"

kafka_log() { printf '[kafka] %s\n' "$*" >&2; }

# The pom must name the version this script pins, or the cache would lie.
kafka_check_pin() {
  grep -q "<kafka.version>$KAFKA_VERSION</kafka.version>" "$KAFKA_RUNTIME_DIR/pom.xml" || {
    kafka_log "error: $KAFKA_RUNTIME_DIR/pom.xml does not pin Kafka $KAFKA_VERSION (scripts/lib/kafka.sh); change both together"
    return 1
  }
}

# Installs the jars once; a marker file records a complete copy.
ensure_kafka_jars() {
  kafka_check_pin || return 1
  local marker="$KAFKA_CACHE/.complete"
  [ -f "$marker" ] && [ "$(cat "$marker")" = "$(sha256sum <"$KAFKA_RUNTIME_DIR/pom.xml")" ] && return 0
  command -v java >/dev/null 2>&1 || { kafka_log "error: java is not on PATH (Kafka needs Java 17 or newer)"; return 1; }
  command -v mvn >/dev/null 2>&1 || { kafka_log "error: mvn is not on PATH (Maven installs Kafka from Maven Central)"; return 1; }
  kafka_log "installing Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_CACHE (once)"
  local started=$SECONDS tmp="$KAFKA_CACHE/libs.tmp"
  rm -rf "$tmp"
  mkdir -p "$KAFKA_CACHE"
  mvn -q -B -Dstyle.color=never -f "$KAFKA_RUNTIME_DIR/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >&2 || {
    kafka_log "error: Maven could not resolve Kafka $KAFKA_VERSION (see the output above)"
    return 1
  }
  rm -rf "$KAFKA_CACHE/libs"
  mv "$tmp" "$KAFKA_CACHE/libs"
  sha256sum <"$KAFKA_RUNTIME_DIR/pom.xml" >"$marker"
  kafka_log "installed $(find "$KAFKA_CACHE/libs" -name '*.jar' | wc -l) jars in $((SECONDS - started)) s"
}

# kafka_java LOG4J_CONFIG JVM_OPTS... -- MAIN_CLASS ARGS...
kafka_java() {
  local log_config="$1"; shift
  local jvm=()
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do jvm+=("$1"); shift; done
  shift
  exec java "${jvm[@]}" -Dlog4j2.configurationFile="$KAFKA_RUNTIME_DIR/$log_config" \
      -cp "$KAFKA_CACHE/libs/*" "$@"
}

# A command-line tool (MAIN_CLASS ARGS...): small heap, quick start, warnings only.
kafka_tool_java() {
  kafka_java log4j2-tools.xml -Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -- "$@"
}

# The tools scripts/kafka knows, by the names of Kafka's own bin/ scripts.
kafka_tool_class() {
  case "$1" in
    kafka-topics) echo org.apache.kafka.tools.TopicCommand ;;
    kafka-consumer-groups) echo org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    kafka-console-consumer) echo org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    kafka-console-producer) echo org.apache.kafka.tools.ConsoleProducer ;;
    kafka-get-offsets) echo org.apache.kafka.tools.GetOffsetShell ;;
    kafka-configs) echo kafka.admin.ConfigCommand ;;
    kafka-delete-records) echo org.apache.kafka.tools.DeleteRecordsCommand ;;
    kafka-transactions) echo org.apache.kafka.tools.TransactionsCommand ;;
    kafka-producer-perf-test) echo org.apache.kafka.tools.ProducerPerformance ;;
    kafka-consumer-perf-test) echo org.apache.kafka.tools.ConsumerPerformance ;;
    kafka-metadata-quorum) echo org.apache.kafka.tools.MetadataQuorumCommand ;;
    kafka-log-dirs) echo org.apache.kafka.tools.LogDirsCommand ;;
    kafka-dump-log) echo kafka.tools.DumpLogSegments ;;
    kafka-storage) echo kafka.tools.StorageTool ;;
    kafka-acls) echo org.apache.kafka.tools.AclCommand ;;
    kafka-features) echo org.apache.kafka.tools.FeatureCommand ;;
    *) return 1 ;;
  esac
}

KAFKA_TOOLS="kafka-topics kafka-consumer-groups kafka-console-consumer kafka-console-producer kafka-get-offsets kafka-configs kafka-delete-records kafka-transactions kafka-producer-perf-test kafka-consumer-perf-test kafka-metadata-quorum kafka-log-dirs kafka-dump-log kafka-storage kafka-acls kafka-features"
