# The Redis Cluster of scripts/infra.sh (sourced by it): six redis-server nodes on
# loopback, 127.0.0.1:$REDIS_CLUSTER_PORT.. (7000-7005; 7000-7002 masters at creation,
# one replica each), append-only, each with its own dir under var/redis-cluster/. A small
# cluster-node-timeout lets a replica take over within seconds of its master's death.
#
#   redis-cluster-up              start the nodes, create the cluster once, wait for cluster_state:ok
#   redis-cluster-down            stop every node (their data stays; up starts them again)
#   redis-cluster-status          each node's role and the cluster's state
#   redis-cluster-kill PORT       SIGKILL one node (a failover test's crash)
#   redis-cluster-start PORT      start that node again (it rejoins, as a replica if replaced)
# Env: REDIS_CLUSTER_PORT (7000), REDIS_CLUSTER_NODES (6), REDIS_CLUSTER_NODE_TIMEOUT_MS (2000)

REDIS_CLUSTER_HOME="$VAR/redis-cluster"
REDIS_CLUSTER_PORT="${REDIS_CLUSTER_PORT:-7000}"
REDIS_CLUSTER_NODES="${REDIS_CLUSTER_NODES:-6}"
REDIS_CLUSTER_NODE_TIMEOUT_MS="${REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000}"

redis_cluster_ports() {
  local i
  for ((i = 0; i < REDIS_CLUSTER_NODES; i++)); do printf '%s\n' "$((REDIS_CLUSTER_PORT + i))"; done
}

redis_cluster_node_ping() {
  [[ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" == "PONG" ]]
}

redis_cluster_ok() {
  redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null | grep -q '^cluster_state:ok'
}

# redis_cluster_start_node PORT: start the node of PORT unless it runs.
redis_cluster_start_node() {
  local port="$1" dir="$REDIS_CLUSTER_HOME/$1"
  [[ "$port" =~ ^[0-9]+$ ]] || die "not a port: $port"
  if pid_alive "$dir/redis.pid" "redis-server 127.0.0.1:$port"; then
    return 0
  fi
  redis_cluster_node_ping "$port" && die "127.0.0.1:$port is served by a Redis not started here"
  mkdir -p "$dir"
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --dir "$dir" \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    --cluster-enabled yes --cluster-config-file nodes.conf \
    --cluster-node-timeout "$REDIS_CLUSTER_NODE_TIMEOUT_MS" \
    --appendonly yes --save "" \
    || die "redis-server on port $port failed to start (see $dir/redis.log)"
  wait_for "redis cluster node $port did not answer PING" "$dir/redis.log" 30 \
    redis_cluster_node_ping "$port"
}

# True for a master, or a replica whose link to its master is up.
redis_cluster_synced() {
  local info
  info="$(redis-cli -h 127.0.0.1 -p "$1" info replication 2>/dev/null | tr -d '\r')" || return 1
  grep -q '^role:master$' <<<"$info" || grep -q '^master_link_status:up$' <<<"$info"
}

redis_cluster_up() {
  command -v redis-server >/dev/null || { log "installing redis-server"; apt_install redis-server; }
  local port seeds=()
  for port in $(redis_cluster_ports); do
    redis_cluster_start_node "$port"
    seeds+=("127.0.0.1:$port")
  done
  local first="$REDIS_CLUSTER_PORT"
  # A node that knows no other has never joined a cluster: create it once.
  if [[ "$(redis-cli -h 127.0.0.1 -p "$first" cluster info | grep '^cluster_known_nodes:' | tr -dc 0-9)" == 1 ]]; then
    log "creating the redis cluster on ${seeds[*]}"
    redis-cli --cluster create "${seeds[@]}" --cluster-replicas 1 --cluster-yes \
      >"$REDIS_CLUSTER_HOME/create.out" 2>&1 \
      || { cat "$REDIS_CLUSTER_HOME/create.out" >&2; die "redis-cli --cluster create failed"; }
  fi
  for port in $(redis_cluster_ports); do
    wait_for "redis cluster node $port is not in cluster_state:ok" \
      "$REDIS_CLUSTER_HOME/$port/redis.log" "$INFRA_TIMEOUT_S" redis_cluster_ok "$port"
    # A replica still syncing cannot take over: a master failing now would stay down.
    wait_for "redis cluster replica $port is not in sync with its master" \
      "$REDIS_CLUSTER_HOME/$port/redis.log" "$INFRA_TIMEOUT_S" redis_cluster_synced "$port"
  done
  log "redis cluster up on ${seeds[*]} (URL redis+cluster://$(IFS=,; echo "${seeds[*]}"))"
}

redis_cluster_down() {
  local port
  for port in $(redis_cluster_ports); do
    stop_pid "$REDIS_CLUSTER_HOME/$port/redis.pid" "redis-server 127.0.0.1:$port" "redis cluster node $port"
  done
}

redis_cluster_status() {
  local port rc=0 role
  for port in $(redis_cluster_ports); do
    if redis_cluster_node_ping "$port"; then
      role="$(redis-cli -h 127.0.0.1 -p "$port" role | head -n1)"
      log "redis cluster node $port: up, $role, $(redis-cli -h 127.0.0.1 -p "$port" cluster info | grep '^cluster_state:' | tr -d '\r')"
    else
      log "redis cluster node $port: DOWN"
      rc=1
    fi
  done
  return "$rc"
}

redis_cluster_kill() {
  local port="$1" pidfile="$REDIS_CLUSTER_HOME/$1/redis.pid"
  pid_alive "$pidfile" "redis-server 127.0.0.1:$port" || die "redis cluster node $port is not running"
  kill -KILL "$(cat "$pidfile")"
  rm -f "$pidfile"
  log "redis cluster node $port killed"
}
