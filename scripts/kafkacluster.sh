# The 3-node Kafka cluster of scripts/infra.sh (sourced by it): three KRaft nodes on
# loopback, each a broker and a controller (the three are the quorum's voters), built from
# the same Maven-resolved jars as the single broker, with replication 3 and
# min.insync.replicas 2 as defaults. It runs beside the single broker on :9092, on its own
# ports, with all state under var/kafka-cluster/node{1,2,3}.
#
# Node N listens on 127.0.0.1:(KAFKA_CLUSTER_BASE_PORT + 2(N-1)) for clients and on the
# next port for the controller quorum: by default brokers 19092, 19094, 19096 and
# controllers 19093, 19095, 19097.

KAFKA_CLUSTER_HOME="$VAR/kafka-cluster"
KAFKA_CLUSTER_BASE_PORT="${KAFKA_CLUSTER_BASE_PORT:-19092}"
KAFKA_CLUSTER_HEAP_OPTS="${KAFKA_CLUSTER_HEAP_OPTS:--Xms128m -Xmx512m}"
KAFKA_CLUSTER_NODES=(1 2 3)

kafka_cluster_broker_port() { printf '%s' $((KAFKA_CLUSTER_BASE_PORT + 2 * ($1 - 1))); }
kafka_cluster_controller_port() { printf '%s' $((KAFKA_CLUSTER_BASE_PORT + 2 * ($1 - 1) + 1)); }
kafka_cluster_dir() { printf '%s' "$KAFKA_CLUSTER_HOME/node$1"; }
kafka_cluster_pidfile() { printf '%s' "$KAFKA_CLUSTER_HOME/node$1/kafka.pid"; }
# What identifies node N's process (its own properties file) for pid_alive.
kafka_cluster_pattern() { printf '%s' "$KAFKA_CLUSTER_HOME/node$1/server.properties"; }

# The bootstrap list of all nodes, as clients take it: host:port,host:port,host:port.
kafka_cluster_bootstrap() {
  local node servers=()
  for node in "${KAFKA_CLUSTER_NODES[@]}"; do
    servers+=("127.0.0.1:$(kafka_cluster_broker_port "$node")")
  done
  (IFS=,; printf '%s\n' "${servers[*]}")
}

kafka_cluster_check_node() {
  [[ "${1:-}" =~ ^[1-3]$ ]] || die "node must be 1, 2 or 3 (got '${1:-}')"
}

kafka_cluster_render() {
  local node="$1" voters=() n
  for n in "${KAFKA_CLUSTER_NODES[@]}"; do
    voters+=("$n@127.0.0.1:$(kafka_cluster_controller_port "$n")")
  done
  sed -e "s|@NODE_ID@|$node|g" \
      -e "s|@VOTERS@|$(IFS=,; printf '%s' "${voters[*]}")|g" \
      -e "s|@BROKER_PORT@|$(kafka_cluster_broker_port "$node")|g" \
      -e "s|@CONTROLLER_PORT@|$(kafka_cluster_controller_port "$node")|g" \
      -e "s|@DATA_DIR@|$(kafka_cluster_dir "$node")/data|g" \
      "$KAFKA_SRC/cluster.properties.in"
}

# Render every node's settings and format the storage of those never formatted, all with
# the one cluster id kept in var/kafka-cluster/cluster.id.
kafka_cluster_configure() {
  local node dir cluster_id
  mkdir -p "$KAFKA_CLUSTER_HOME"
  if [[ ! -s "$KAFKA_CLUSTER_HOME/cluster.id" ]]; then
    java -cp "$KAFKA_LIB/*" kafka.tools.StorageTool random-uuid >"$KAFKA_CLUSTER_HOME/cluster.id"
  fi
  cluster_id="$(cat "$KAFKA_CLUSTER_HOME/cluster.id")"
  for node in "${KAFKA_CLUSTER_NODES[@]}"; do
    dir="$(kafka_cluster_dir "$node")"
    mkdir -p "$dir/data" "$dir/logs"
    kafka_cluster_render "$node" >"$dir/server.properties"
    [[ -f "$dir/data/meta.properties" ]] && continue
    log "formatting kafka cluster node $node storage (cluster id $cluster_id)"
    java -Dlog4j2.configurationFile="$KAFKA_SRC/log4j2.properties" -Dkafka.logs.dir="$dir/logs" \
      -cp "$KAFKA_LIB/*" kafka.tools.StorageTool format \
      -t "$cluster_id" -c "$dir/server.properties" >"$dir/logs/format.out" 2>&1 \
      || { cat "$dir/logs/format.out" >&2; die "kafka cluster node $node storage format failed"; }
  done
}

# Start node N's JVM unless it runs; returns at once (a node waits for a quorum to serve).
kafka_cluster_spawn() {
  local node="$1" dir port
  dir="$(kafka_cluster_dir "$node")"
  port="$(kafka_cluster_broker_port "$node")"
  if pid_alive "$(kafka_cluster_pidfile "$node")" "$(kafka_cluster_pattern "$node")"; then
    return 0
  fi
  if kafka_probe_at "$port" 1 >/dev/null 2>&1; then
    die "127.0.0.1:$port already serves a broker that is not kafka cluster node $node"
  fi
  log "starting kafka cluster node $node on 127.0.0.1:$port (controller $(kafka_cluster_controller_port "$node"))"
  kafka_spawn "$KAFKA_CLUSTER_HEAP_OPTS" "$dir/server.properties" "$dir/logs" \
    "$(kafka_cluster_pidfile "$node")"
}

kafka_probe_at() {
  "$PYTHON" "$KAFKA_SRC/probe.py" "127.0.0.1:$1" "${2:-3}"
}

# True when node N answers metadata that lists every node of the cluster.
kafka_cluster_node_ready() {
  local detail
  detail="$(kafka_probe_at "$(kafka_cluster_broker_port "$1")" 2 2>/dev/null)" || return 1
  [[ "$(grep -o '[0-9]*@127' <<<"$detail" | wc -l)" -ge "${#KAFKA_CLUSTER_NODES[@]}" ]]
}

# Wait until each of the given nodes serves metadata listing all nodes.
kafka_cluster_wait() {
  local deadline=$((SECONDS + INFRA_TIMEOUT_S)) node pending
  while true; do
    pending=()
    for node in "$@"; do
      if ! pid_alive "$(kafka_cluster_pidfile "$node")" "$(kafka_cluster_pattern "$node")"; then
        kafka_fail "kafka cluster node $node exited during startup" "$(kafka_cluster_dir "$node")/logs"
      fi
      kafka_cluster_node_ready "$node" || pending+=("$node")
    done
    ((${#pending[@]} == 0)) && return 0
    if ((SECONDS >= deadline)); then
      kafka_fail "kafka cluster node(s) ${pending[*]} not serving all nodes within ${INFRA_TIMEOUT_S}s" \
        "$(kafka_cluster_dir "${pending[0]}")/logs"
    fi
    sleep 0.5
  done
}

kafka_cluster_up() {
  local node
  kafka_resolve
  kafka_cluster_configure
  for node in "${KAFKA_CLUSTER_NODES[@]}"; do
    kafka_cluster_spawn "$node"  # all before waiting: a node serves once a quorum is up
  done
  kafka_cluster_wait "${KAFKA_CLUSTER_NODES[@]}"
  log "kafka cluster up ($(kafka_version)): $(kafka_cluster_bootstrap)"
}

kafka_cluster_down() {
  local node pidfile
  # every node asked to stop at once: one by one, the last would wait out its controlled
  # shutdown with no quorum left to grant it
  for node in "${KAFKA_CLUSTER_NODES[@]}"; do
    pidfile="$(kafka_cluster_pidfile "$node")"
    if pid_alive "$pidfile" "$(kafka_cluster_pattern "$node")"; then
      kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    fi
  done
  for node in "${KAFKA_CLUSTER_NODES[@]}"; do
    stop_pid "$(kafka_cluster_pidfile "$node")" "$(kafka_cluster_pattern "$node")" \
      "kafka cluster node $node"
  done
}

# SIGKILL node N, as in a crash: no controlled shutdown, no leadership handed over.
kafka_cluster_kill() {
  local node="$1" pidfile pid
  kafka_cluster_check_node "$node"
  pidfile="$(kafka_cluster_pidfile "$node")"
  if ! pid_alive "$pidfile" "$(kafka_cluster_pattern "$node")"; then
    log "kafka cluster node $node not running"
    return 0
  fi
  pid="$(cat "$pidfile")"
  kill -KILL "$pid"
  while [[ -e "/proc/$pid" ]] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
    sleep 0.1
  done
  rm -f "$pidfile"
  log "kafka cluster node $node killed (pid $pid)"
}

# (Re)start node N and wait until it serves metadata listing all nodes.
kafka_cluster_start() {
  local node="$1"
  kafka_cluster_check_node "$node"
  [[ -f "$(kafka_cluster_dir "$node")/data/meta.properties" ]] \
    || die "kafka cluster node $node was never set up; run kafka-cluster-up"
  kafka_cluster_spawn "$node"
  kafka_cluster_wait "$node"
  log "kafka cluster node $node up on 127.0.0.1:$(kafka_cluster_broker_port "$node")"
}

kafka_cluster_status() {
  local rc=0 node port detail
  for node in "${KAFKA_CLUSTER_NODES[@]}"; do
    port="$(kafka_cluster_broker_port "$node")"
    if ! pid_alive "$(kafka_cluster_pidfile "$node")" "$(kafka_cluster_pattern "$node")"; then
      log "kafka cluster node $node: DOWN (127.0.0.1:$port)"
      rc=1
    elif detail="$(kafka_probe_at "$port" 2 2>&1)"; then
      log "kafka cluster node $node: up (pid $(cat "$(kafka_cluster_pidfile "$node")")) 127.0.0.1:$port $detail"
    else
      log "kafka cluster node $node: starting (pid $(cat "$(kafka_cluster_pidfile "$node")")) $detail"
      rc=1
    fi
  done
  log "kafka cluster bootstrap: $(kafka_cluster_bootstrap)"
  return "$rc"
}
