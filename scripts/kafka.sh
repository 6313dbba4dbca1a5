#!/usr/bin/env bash
# The Apache Kafka broker of baton's tests and benchmarks: one node in KRaft
# mode (combined broker and controller), run from the jars Maven Central
# serves, with the machine's Java 17.
#
#   scripts/kafka.sh install              resolve the pinned version into the cache
#   scripts/kafka.sh start [DIR]          format DIR, start in the background, wait until ready
#   scripts/kafka.sh stop [DIR]           stop the broker started in DIR
#   scripts/kafka.sh run DIR PORT CPORT   run in the foreground (what the test support calls)
#
# The version is the one pinned in scripts/kafka/pom.xml; the jars go to
# ${BATON_CACHE:-~/.cache/baton}/kafka-<version>/libs, and Maven's local
# repository makes later installs offline. Environment:
#   BATON_KAFKA_POM     the pom to resolve (default: scripts/kafka/pom.xml)
#   BATON_KAFKA_HOME    an installed broker (default: the cache directory above)
#   BATON_KAFKA_PROPS   extra server.properties lines, appended as they are
#   BATON_KAFKA_SASL_SSL_PORT  also listen for SASL_SSL clients on this port
#   BATON_KAFKA_SCRAM   SCRAM credentials created when formatting, e.g.
#                       SCRAM-SHA-512=[name=baton,password=...]
#   BATON_KAFKA_HEAP    the broker's heap (default 768m; at most 1g)
#   BATON_KAFKA_WATCH_STDIN=1   `run` stops the broker when its standard input
#                       closes (the test process that started it has ended)
#   BATON_KAFKA_EPHEMERAL=1     `run` removes DIR when the broker has stopped
#                               (unless DIR/keep exists: an outage, started again)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" 2>/dev/null && pwd || pwd)"
pom="${BATON_KAFKA_POM:-$here/kafka/pom.xml}"
cache="${BATON_CACHE:-$HOME/.cache/baton}"

die() {
  echo "kafka.sh: $*" >&2
  exit 1
}

version() {
  [ -f "$pom" ] || die "no pom at $pom (set BATON_KAFKA_POM)"
  sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom" | head -n1
}

home() {
  if [ -n "${BATON_KAFKA_HOME:-}" ]; then
    echo "$BATON_KAFKA_HOME"
  else
    echo "$cache/kafka-$(version)"
  fi
}

need_java() {
  command -v java >/dev/null 2>&1 || die "Java 17 or newer is needed to run Apache Kafka: install a JDK (Debian: apt-get install openjdk-17-jre-headless)"
}

install() {
  local h
  h="$(home)"
  if [ -f "$h/libs/.complete" ]; then
    return 0
  fi
  need_java
  command -v mvn >/dev/null 2>&1 || die "Maven is needed to install Apache Kafka from Maven Central: install it (Debian: apt-get install maven)"
  echo "Installing Apache Kafka $(version) into $h"
  local tmp="$h/libs.partial"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >&2 ||
    die "Maven could not resolve Apache Kafka $(version) (see its output above)"
  ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "Maven resolved no kafka_2.13 jar into $tmp"
  rm -rf "$h/libs"
  mv "$tmp" "$h/libs"
  touch "$h/libs/.complete"
}

# Writes server.properties and the log configuration of a broker in $1 on
# ports $2 (clients) and $3 (controller), and formats its storage once.
prepare() {
  local dir="$1" port="$2" cport="$3" h
  h="$(home)"
  [ -f "$h/libs/.complete" ] || die "Apache Kafka is not installed in $h: run \`bash scripts/kafka.sh install\`"
  need_java
  mkdir -p "$dir"
  # An optional SASL_SSL listener (its TLS and SASL settings come in
  # BATON_KAFKA_PROPS; its SCRAM users in BATON_KAFKA_SCRAM).
  local sasl="" sasl_map=""
  if [ -n "${BATON_KAFKA_SASL_SSL_PORT:-}" ]; then
    sasl=",SASL_SSL://127.0.0.1:$BATON_KAFKA_SASL_SSL_PORT"
    sasl_map=",SASL_SSL:SASL_SSL"
  fi
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport$sasl
advertised.listeners=PLAINTEXT://127.0.0.1:$port$sasl
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT$sasl_map
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
# Groups form at once, and a member that vanished is noticed within seconds.
group.initial.rebalance.delay.ms=0
group.consumer.min.session.timeout.ms=2000
group.consumer.session.timeout.ms=6000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=1000
group.classic.min.session.timeout.ms=2000
# The cleaner looks for compactable segments often (compaction tests).
log.cleaner.backoff.ms=500
log.retention.check.interval.ms=1000
EOF
  if [ -n "${BATON_KAFKA_PROPS:-}" ]; then
    printf '%s\n' "$BATON_KAFKA_PROPS" >>"$dir/server.properties"
  fi
  cat >"$dir/log4j2.yaml" <<EOF
Configuration:
  Appenders:
    File:
      name: file
      fileName: "$dir/broker.log"
      PatternLayout: { pattern: "[%d] %p %m (%c)%n" }
  Loggers:
    Root: { level: WARN, AppenderRef: [{ ref: file }] }
    Logger:
      - { name: kafka.server.KafkaRaftServer, level: INFO, additivity: false, AppenderRef: [{ ref: file }] }
EOF
  if [ ! -f "$dir/data/meta.properties" ]; then
    local id
    id="$(java -cp "$h/libs/*" kafka.tools.StorageTool random-uuid)"
    local scram=()
    [ -z "${BATON_KAFKA_SCRAM:-}" ] || scram=(--add-scram "$BATON_KAFKA_SCRAM")
    java -cp "$h/libs/*" kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" "${scram[@]}" >"$dir/format.log" 2>&1 ||
      die "formatting $dir/data failed: $(tail -n 3 "$dir/format.log")"
  fi
}

run() {
  local dir="$1" port="$2" cport="$3" h
  prepare "$dir" "$port" "$cport"
  h="$(home)"
  local heap="${BATON_KAFKA_HEAP:-768m}"
  java -Xms256m "-Xmx$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true "-Dlog4j2.configurationFile=$dir/log4j2.yaml" \
    -cp "$h/libs/*" kafka.Kafka "$dir/server.properties" </dev/null >>"$dir/stdout.log" 2>&1 &
  local java_pid=$!
  local watcher=""
  trap 'kill -TERM "$java_pid" 2>/dev/null || true' TERM INT HUP
  if [ "${BATON_KAFKA_WATCH_STDIN:-0}" = 1 ]; then
    # Standard input closes when the process that started us ends, however it
    # ends. (A background job's standard input would be /dev/null: fd 3 keeps ours.)
    exec 3<&0
    { cat <&3 >/dev/null || true; kill -TERM "$java_pid" 2>/dev/null || true; } &
    watcher=$!
  fi
  local rc=0
  while kill -0 "$java_pid" 2>/dev/null; do
    wait "$java_pid" || rc=$?
  done
  [ -n "$watcher" ] && kill "$watcher" 2>/dev/null || true
  if [ "${BATON_KAFKA_EPHEMERAL:-0}" = 1 ] && [ ! -e "$dir/keep" ]; then
    rm -rf "$dir"
  fi
  return "$rc"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local dir="${1:-$cache/kafka-run}"
  install
  local port cport
  port="${BATON_KAFKA_PORT:-$(free_port)}"
  cport="$(free_port)"
  mkdir -p "$dir"
  : >"$dir/broker.log"
  nohup bash "$here/kafka.sh" run "$dir" "$port" "$cport" >/dev/null 2>&1 &
  echo $! >"$dir/broker.pid"
  local deadline=$((SECONDS + 60))
  until grep -q "Kafka Server started" "$dir/broker.log" 2>/dev/null; do
    if ! kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null; then
      die "the broker stopped while starting; see $dir/broker.log and $dir/stdout.log"
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "the broker was not ready within 60 s; see $dir/broker.log"
    sleep 0.2
  done
  echo "127.0.0.1:$port" >"$dir/bootstrap"
  echo "Apache Kafka $(version) ready at 127.0.0.1:$port (data in $dir)"
}

stop() {
  local dir="${1:-$cache/kafka-run}"
  [ -f "$dir/broker.pid" ] || die "no broker started in $dir"
  local pid
  pid="$(cat "$dir/broker.pid")"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
  rm -f "$dir/broker.pid"
}

case "${1:-}" in
  install) install ;;
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  run)
    [ $# -eq 4 ] || die "usage: kafka.sh run DIR PORT CONTROLLER_PORT"
    run "$2" "$3" "$4"
    ;;
  version) version ;;
  *) die "usage: kafka.sh install | start [DIR] | stop [DIR] | run DIR PORT CONTROLLER_PORT | version" ;;
esac
