#!/usr/bin/env bash
# Local infrastructure for development and tests: a single-node Apache Kafka (KRaft,
# broker + controller) and Redis, both on loopback, with all state under var/.
#
# Usage: scripts/infra.sh up|down|status|config  (config: print the broker's rendered settings)
#        scripts/infra.sh secure-up|secure-down|secure-status  (a second, separate pair:
#        Kafka with SASL_SSL, SCRAM users and ACLs; Redis with TLS and ACL users; all under
#        var/secure; credentials in var/secure/credentials.env, docs/security.md)
#        scripts/infra.sh certs DIR  (a CA and a server and a client certificate in DIR)
#        scripts/infra.sh redis-cluster-up|redis-cluster-down|redis-cluster-status  (a Redis
#        Cluster of 3 masters + 3 replicas on 127.0.0.1:7000-7005 under var/redis-cluster;
#        redis-cluster-kill PORT / redis-cluster-start PORT crash and restart one node)
#        scripts/infra.sh kafka-cluster-up|kafka-cluster-down|kafka-cluster-status  (a third,
#        separate Kafka: 3 KRaft nodes, replication 3, min.insync.replicas 2, under
#        var/kafka-cluster; docs/scaling.md)
#        scripts/infra.sh kafka-cluster-kill N|kafka-cluster-start N  (SIGKILL / restart node N)
#        scripts/infra.sh kafka-cluster-bootstrap  (print the cluster's bootstrap list)
# Env:   KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), REDIS_PORT (6379),
#        KAFKA_SECURE_PORT (9192), KAFKA_SECURE_CONTROLLER_PORT (9193), REDIS_TLS_PORT (6390),
#        KAFKA_CLUSTER_BASE_PORT (19092: node N's broker on +2(N-1), its controller one above),
#        KAFKA_HEAP_OPTS (-Xms256m -Xmx1g), KAFKA_CLUSTER_HEAP_OPTS (-Xms128m -Xmx512m),
#        INFRA_TIMEOUT_S (120)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_SRC="$ROOT/scripts/kafka"
VAR="$ROOT/var"
KAFKA_HOME="$VAR/kafka"
KAFKA_LIB="$KAFKA_HOME/lib"
KAFKA_DATA="$KAFKA_HOME/data"
KAFKA_LOGS="$KAFKA_HOME/logs"
KAFKA_PID="$KAFKA_HOME/kafka.pid"
KAFKA_OUT="$KAFKA_LOGS/kafka.out"
REDIS_HOME="$VAR/redis"
REDIS_PID="$REDIS_HOME/redis.pid"
REDIS_LOG="$REDIS_HOME/redis.log"

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
REDIS_PORT="${REDIS_PORT:-6379}"
KAFKA_SECURE_PORT="${KAFKA_SECURE_PORT:-9192}"
KAFKA_SECURE_CONTROLLER_PORT="${KAFKA_SECURE_CONTROLLER_PORT:-9193}"
REDIS_TLS_PORT="${REDIS_TLS_PORT:-6390}"
SECURE_HOME="$VAR/secure"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
INFRA_TIMEOUT_S="${INFRA_TIMEOUT_S:-120}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

log() { printf '[infra] %s\n' "$*"; }
die() { printf '[infra] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
  if [[ "$apt_updated" -eq 0 ]]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# pid_alive PIDFILE PATTERN: true when the pid in PIDFILE runs a command matching PATTERN.
# While a process execs, its /proc/PID/cmdline reads empty for a moment; a live pid whose
# command line does not match is looked at again for up to a second before it counts as
# someone else's.
pid_alive() {
  local pidfile="$1" pattern="$2" pid i cmdline
  [[ -s "$pidfile" ]] || return 1
  pid="$(cat "$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  for ((i = 0; i < 5; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *"$pattern"* ]] && return 0
    sleep 0.2
  done
  return 1
}

# stop_pid PIDFILE PATTERN NAME: SIGTERM, wait up to 60 s, then SIGKILL.
stop_pid() {
  local pidfile="$1" pattern="$2" name="$3" pid i
  if ! pid_alive "$pidfile" "$pattern"; then
    rm -f "$pidfile"
    log "$name not running"
    return 0
  fi
  pid="$(cat "$pidfile")"
  kill -TERM "$pid"
  for ((i = 0; i < 120; i++)); do
    pid_alive "$pidfile" "$pattern" || break
    sleep 0.5
  done
  if pid_alive "$pidfile" "$pattern"; then
    log "$name (pid $pid) ignored SIGTERM; killing"
    kill -KILL "$pid" || true
  fi
  rm -f "$pidfile"
  log "$name stopped"
}

kafka_version() {
  local jar
  jar="$(find "$KAFKA_LIB/" -maxdepth 1 -name 'kafka_2.13-*.jar' 2>/dev/null | head -n1)"
  jar="${jar##*/kafka_2.13-}"
  printf '%s' "${jar%.jar}"
}

kafka_probe() {
  "$PYTHON" "$KAFKA_SRC/probe.py" "127.0.0.1:$KAFKA_PORT" "${1:-3}"
}

# Resolve the broker jars with Maven; cached in var/kafka/lib keyed by the pom's checksum.
kafka_resolve() {
  local stamp="$KAFKA_LIB/.pom.sha256" want
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  want="$(sha256sum "$KAFKA_SRC/pom.xml" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  log "resolving Kafka jars with Maven (first run only)"
  rm -rf "$KAFKA_LIB"
  mkdir -p "$KAFKA_LIB"
  mkdir -p "$KAFKA_LOGS"
  if ! mvn -B -ntp -Dstyle.color=never -f "$KAFKA_SRC/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIB" >"$KAFKA_LOGS/mvn.out" 2>&1; then
    tail -n 40 "$KAFKA_LOGS/mvn.out" >&2
    die "Maven could not resolve the Kafka jars (full output in $KAFKA_LOGS/mvn.out)"
  fi
  printf '%s\n' "$want" >"$stamp"
}

kafka_render() {
  sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
      -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
      -e "s|@DATA_DIR@|$KAFKA_DATA|g" \
      "$KAFKA_SRC/server.properties.in"
}

kafka_configure() {
  mkdir -p "$KAFKA_DATA" "$KAFKA_LOGS"
  kafka_render >"$KAFKA_HOME/server.properties"
  if [[ ! -f "$KAFKA_DATA/meta.properties" ]]; then
    local cluster_id
    cluster_id="$(java -cp "$KAFKA_LIB/*" kafka.tools.StorageTool random-uuid)"
    log "formatting Kafka storage (cluster id $cluster_id)"
    java -Dlog4j2.configurationFile="$KAFKA_SRC/log4j2.properties" -Dkafka.logs.dir="$KAFKA_LOGS" \
      -cp "$KAFKA_LIB/*" kafka.tools.StorageTool format \
      -t "$cluster_id" -c "$KAFKA_HOME/server.properties" >"$KAFKA_LOGS/format.out" 2>&1 \
      || { cat "$KAFKA_LOGS/format.out" >&2; die "Kafka storage format failed"; }
  fi
}

# spawn_detached PIDFILE OUTFILE COMMAND...: run COMMAND in its own session, detached,
# output to OUTFILE; returns once PIDFILE holds the pid of COMMAND itself. `setsid` forks
# when its caller leads a process group (a shell with job control), so `$!` is not always
# the pid that runs COMMAND; the inner shell writes its own pid and then execs COMMAND.
spawn_detached() {
  local pidfile="$1" outfile="$2" i
  shift 2
  rm -f "$pidfile"
  # shellcheck disable=SC2016
  nohup setsid bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" \
    >"$outfile" 2>&1 </dev/null &
  for ((i = 0; i < 100; i++)); do
    [[ -s "$pidfile" ]] && return 0
    sleep 0.1
  done
  die "could not start $1 (no pid in $pidfile after 10 s; output in $outfile)"
}

# kafka_spawn HEAP_OPTS PROPERTIES LOGS_DIR PIDFILE: start a broker JVM in its own
# session, detached; returns at once.
kafka_spawn() {
  # shellcheck disable=SC2086
  spawn_detached "$4" "$3/kafka.out" java -server $1 -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_SRC/log4j2.properties" \
    -Dkafka.logs.dir="$3" \
    -cp "$KAFKA_LIB/*" kafka.Kafka "$2"
}

kafka_up() {
  if pid_alive "$KAFKA_PID" kafka.Kafka; then
    kafka_wait
    log "kafka already running (pid $(cat "$KAFKA_PID")), version $(kafka_version)"
    return 0
  fi
  if kafka_probe 1 >/dev/null 2>&1; then
    log "kafka: 127.0.0.1:$KAFKA_PORT already served by a broker not started here; using it"
    return 0
  fi
  kafka_resolve
  kafka_configure
  log "starting kafka $(kafka_version) on 127.0.0.1:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT)"
  kafka_spawn "$KAFKA_HEAP_OPTS" "$KAFKA_HOME/server.properties" "$KAFKA_LOGS" "$KAFKA_PID"
  kafka_wait
  log "kafka up: $(kafka_probe)"
}

kafka_wait() {
  local deadline=$((SECONDS + INFRA_TIMEOUT_S))
  until kafka_probe 2 >/dev/null 2>&1; do
    if ! pid_alive "$KAFKA_PID" kafka.Kafka; then
      kafka_fail "kafka process exited during startup"
    fi
    if ((SECONDS >= deadline)); then
      kafka_fail "kafka did not answer on 127.0.0.1:$KAFKA_PORT within ${INFRA_TIMEOUT_S}s"
    fi
    sleep 0.5
  done
}

# kafka_fail MESSAGE [LOGS_DIR]: show the tails of a broker's logs (default: the single
# broker's) and exit.
kafka_fail() {
  local logs="${2:-$KAFKA_LOGS}"
  {
    printf '[infra] ERROR: %s\n' "$1"
    printf -- '--- tail of %s\n' "$logs/kafka.out"
    tail -n 30 "$logs/kafka.out" 2>/dev/null || true
    printf -- '--- tail of %s\n' "$logs/server.log"
    tail -n 40 "$logs/server.log" 2>/dev/null || true
    printf -- '--- listeners on this host\n'
    ss -ltnp 2>/dev/null | grep -E ':(9[0-9]{3}|1909[0-9])\b' || true
    printf '[infra] ERROR: %s\n' "$1"
  } >&2
  exit 1
}

# wait_for MESSAGE LOG TIMEOUT_S COMMAND...: poll COMMAND until it succeeds; past the
# timeout, show the tail of LOG and fail with MESSAGE.
wait_for() {
  local message="$1" logfile="$2" deadline=$((SECONDS + $3))
  shift 3
  until "$@"; do
    if ((SECONDS >= deadline)); then
      tail -n 20 "$logfile" >&2 || true
      die "$message"
    fi
    sleep 0.2
  done
}

redis_ping() {
  [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == "PONG" ]]
}

redis_up() {
  command -v redis-server >/dev/null || { log "installing redis-server"; apt_install redis-server; }
  if pid_alive "$REDIS_PID" redis-server; then
    log "redis already running (pid $(cat "$REDIS_PID"))"
    return 0
  fi
  if redis_ping; then
    log "redis: 127.0.0.1:$REDIS_PORT already served by a server not started here; using it"
    return 0
  fi
  mkdir -p "$REDIS_HOME"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes \
    --dir "$REDIS_HOME" --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" \
    --save "" --appendonly no \
    || die "redis-server failed to start (see $REDIS_LOG)"
  wait_for "redis did not answer PING on 127.0.0.1:$REDIS_PORT" "$REDIS_LOG" 30 redis_ping
  log "redis up: $(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-) on 127.0.0.1:$REDIS_PORT"
}

status() {
  local rc=0 detail
  if detail="$(kafka_probe 2 2>&1)"; then
    if pid_alive "$KAFKA_PID" kafka.Kafka; then
      log "kafka: up (pid $(cat "$KAFKA_PID"), version $(kafka_version)) 127.0.0.1:$KAFKA_PORT $detail"
    else
      log "kafka: up (not started by this script) 127.0.0.1:$KAFKA_PORT $detail"
    fi
  else
    log "kafka: DOWN ($detail)"
    rc=1
  fi
  if command -v redis-cli >/dev/null && redis_ping; then
    log "redis: up 127.0.0.1:$REDIS_PORT"
  else
    log "redis: DOWN on 127.0.0.1:$REDIS_PORT"
    rc=1
  fi
  return "$rc"
}

# shellcheck source=scripts/secure.sh
source "$ROOT/scripts/secure.sh"
# shellcheck source=scripts/rediscluster.sh
source "$ROOT/scripts/rediscluster.sh"
# shellcheck source=scripts/kafkacluster.sh
source "$ROOT/scripts/kafkacluster.sh"

case "${1:-}" in
  secure-up)
    secure_up
    ;;
  secure-down)
    secure_down
    ;;
  secure-status)
    secure_status
    ;;
  redis-cluster-up)
    redis_cluster_up
    ;;
  redis-cluster-down)
    redis_cluster_down
    ;;
  redis-cluster-status)
    redis_cluster_status
    ;;
  redis-cluster-kill)
    [[ -n "${2:-}" ]] || die "usage: $0 redis-cluster-kill PORT"
    redis_cluster_kill "$2"
    ;;
  redis-cluster-start)
    [[ -n "${2:-}" ]] || die "usage: $0 redis-cluster-start PORT"
    redis_cluster_start_node "$2"
    ;;
  kafka-cluster-up)
    kafka_cluster_up
    ;;
  kafka-cluster-down)
    kafka_cluster_down
    ;;
  kafka-cluster-status)
    kafka_cluster_status
    ;;
  kafka-cluster-kill)
    kafka_cluster_kill "${2:-}"
    ;;
  kafka-cluster-start)
    kafka_cluster_start "${2:-}"
    ;;
  kafka-cluster-bootstrap)
    kafka_cluster_bootstrap
    ;;
  certs)
    [[ -n "${2:-}" ]] || die "usage: $0 certs DIR"
    make_certs "$2"
    ;;
  up)
    redis_up
    kafka_up
    ;;
  down)
    stop_pid "$KAFKA_PID" kafka.Kafka kafka
    stop_pid "$REDIS_PID" redis-server redis
    ;;
  status)
    status
    ;;
  config)
    kafka_render
    ;;
  *)
    echo "usage: $0 up|down|status|config|secure-up|secure-down|secure-status|certs DIR|redis-cluster-up|redis-cluster-down|redis-cluster-status|redis-cluster-kill PORT|redis-cluster-start PORT" >&2
    echo "       $0 kafka-cluster-up|kafka-cluster-down|kafka-cluster-status|kafka-cluster-bootstrap" >&2
    echo "       $0 kafka-cluster-kill N|kafka-cluster-start N  (N: 1, 2 or 3)" >&2
    exit 2
    ;;
esac
