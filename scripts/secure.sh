# The secured pair of scripts/infra.sh (sourced by it): a Kafka broker whose only client
# listener is SASL_SSL (SCRAM users, ACLs) and a Redis that speaks only TLS (ACL users).
# Both run beside the plain pair, on their own ports, with all state under var/secure.

SECURE_CERTS="$SECURE_HOME/certs"
SECURE_KAFKA="$SECURE_HOME/kafka"
SECURE_KAFKA_PID="$SECURE_KAFKA/kafka.pid"
SECURE_REDIS="$SECURE_HOME/redis"
SECURE_REDIS_PID="$SECURE_REDIS/redis.pid"
SECURE_CREDENTIALS="$SECURE_HOME/credentials.env"
SECURE_USERS=(admin streams serving training ingest)

# make_certs DIR: a CA, a server certificate for localhost/127.0.0.1 and a client one.
make_certs() {
  local dir="$1" name
  mkdir -p "$dir"
  [[ -s "$dir/ca.pem" && -s "$dir/server.pem" && -s "$dir/client.pem" ]] && return 0
  command -v openssl >/dev/null || apt_install openssl
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=streamrec-local-ca" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  for name in server client; do
    openssl req -newkey rsa:2048 -nodes -subj "/CN=streamrec-$name" \
      -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,DNS:kafka,DNS:redis,DNS:serving,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' \
      >"$dir/$name.ext"
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
      -CAcreateserial -days 3650 -extfile "$dir/$name.ext" -out "$dir/$name.pem" 2>/dev/null
    rm -f "$dir/$name.csr" "$dir/$name.ext"
  done
  cat "$dir/server.key" "$dir/server.pem" >"$dir/server.keystore.pem"  # Kafka's PEM keystore
  chmod 600 "$dir"/*.key "$dir/server.keystore.pem"
  log "certificates in $dir"
}

# A random password per user, made once, kept in credentials.env (mode 600).
secure_credentials() {
  mkdir -p "$SECURE_HOME"
  if [[ ! -s "$SECURE_CREDENTIALS" ]]; then
    local user
    (umask 077; for user in "${SECURE_USERS[@]}"; do
      printf '%s_PASSWORD=%s\n' "${user^^}" "$(openssl rand -hex 16)"
    done >"$SECURE_CREDENTIALS")
  fi
  # shellcheck disable=SC1090
  source "$SECURE_CREDENTIALS"
}

secure_kafka_render() {
  sed -e "s|@KAFKA_PORT@|$KAFKA_SECURE_PORT|g" \
      -e "s|@CONTROLLER_PORT@|$KAFKA_SECURE_CONTROLLER_PORT|g" \
      -e "s|@DATA_DIR@|$SECURE_KAFKA/data|g" \
      -e "s|@CERT_DIR@|$SECURE_CERTS|g" \
      -e "s|@ADMIN_PASSWORD@|$ADMIN_PASSWORD|g" \
      "$KAFKA_SRC/secure.properties.in"
}

secure_kafka_up() {
  if pid_alive "$SECURE_KAFKA_PID" "$SECURE_KAFKA/server.properties"; then
    log "secured kafka already running (pid $(cat "$SECURE_KAFKA_PID"))"
    return 0
  fi
  kafka_resolve
  mkdir -p "$SECURE_KAFKA/data" "$SECURE_KAFKA/logs"
  (umask 077; secure_kafka_render >"$SECURE_KAFKA/server.properties")
  if [[ ! -f "$SECURE_KAFKA/data/meta.properties" ]]; then
    local cluster_id user var scram=()
    cluster_id="$(java -cp "$KAFKA_LIB/*" kafka.tools.StorageTool random-uuid)"
    for user in "${SECURE_USERS[@]}"; do  # SCRAM users exist before the broker first starts
      var="${user^^}_PASSWORD"
      scram+=(--add-scram "SCRAM-SHA-512=[name=$user,password=${!var}]")
      scram+=(--add-scram "SCRAM-SHA-256=[name=$user,password=${!var}]")
    done
    log "formatting secured Kafka storage (cluster id $cluster_id) with SCRAM users ${SECURE_USERS[*]}"
    java -Dlog4j2.configurationFile="$KAFKA_SRC/log4j2.properties" \
      -Dkafka.logs.dir="$SECURE_KAFKA/logs" -cp "$KAFKA_LIB/*" kafka.tools.StorageTool format \
      -t "$cluster_id" -c "$SECURE_KAFKA/server.properties" "${scram[@]}" \
      >"$SECURE_KAFKA/logs/format.out" 2>&1 \
      || { cat "$SECURE_KAFKA/logs/format.out" >&2; die "secured Kafka storage format failed"; }
  fi
  log "starting secured kafka on SASL_SSL 127.0.0.1:$KAFKA_SECURE_PORT (controller $KAFKA_SECURE_CONTROLLER_PORT)"
  # shellcheck disable=SC2086
  spawn_detached "$SECURE_KAFKA_PID" "$SECURE_KAFKA/logs/kafka.out" \
    java -server $KAFKA_HEAP_OPTS -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_SRC/log4j2.properties" \
    -Dkafka.logs.dir="$SECURE_KAFKA/logs" \
    -cp "$KAFKA_LIB/*" kafka.Kafka "$SECURE_KAFKA/server.properties"
}

# The Redis ACL users (docs/security.md): the default user is off.
secure_redis_acl() {
  cat <<ACL
user default off
user admin on >$ADMIN_PASSWORD ~* &* +@all
user streams on >$STREAMS_PASSWORD resetchannels ~sr:* -@all +@read +@write +@transaction +@scripting +@connection -@dangerous
user serving on >$SERVING_PASSWORD resetchannels %R~sr:* -@all +@read +@transaction +@scripting +@connection -@dangerous
ACL
}

secure_redis_up() {
  command -v redis-server >/dev/null || { log "installing redis-server"; apt_install redis-server; }
  if pid_alive "$SECURE_REDIS_PID" redis-server; then
    log "secured redis already running (pid $(cat "$SECURE_REDIS_PID"))"
    return 0
  fi
  mkdir -p "$SECURE_REDIS"
  (umask 077; secure_redis_acl >"$SECURE_REDIS/users.acl")
  redis-server --bind 127.0.0.1 --port 0 --tls-port "$REDIS_TLS_PORT" \
    --tls-cert-file "$SECURE_CERTS/server.pem" --tls-key-file "$SECURE_CERTS/server.key" \
    --tls-ca-cert-file "$SECURE_CERTS/ca.pem" --tls-auth-clients optional \
    --aclfile "$SECURE_REDIS/users.acl" --daemonize yes \
    --dir "$SECURE_REDIS" --pidfile "$SECURE_REDIS_PID" --logfile "$SECURE_REDIS/redis.log" \
    --save "" --appendonly no \
    || die "secured redis-server failed to start (see $SECURE_REDIS/redis.log)"
  wait_for "secured redis did not answer PING on TLS 127.0.0.1:$REDIS_TLS_PORT" \
    "$SECURE_REDIS/redis.log" 30 secure_redis_ping
  log "secured redis up: TLS 127.0.0.1:$REDIS_TLS_PORT"
}

secure_redis_ping() {
  [[ "$(REDISCLI_AUTH="$ADMIN_PASSWORD" redis-cli --tls --cacert "$SECURE_CERTS/ca.pem" \
    -h 127.0.0.1 -p "$REDIS_TLS_PORT" --user admin ping 2>/dev/null)" == "PONG" ]]
}

# Wait for the broker over SASL_SSL as the admin, then grant every deployable its ACLs.
secure_kafka_grant() {
  STREAMREC_ADMIN_PASSWORD="$ADMIN_PASSWORD" "$PYTHON" "$KAFKA_SRC/acls.py" \
    --bootstrap "127.0.0.1:$KAFKA_SECURE_PORT" --cafile "$SECURE_CERTS/ca.pem" \
    --timeout "$INFRA_TIMEOUT_S" grant \
    || { tail -n 40 "$SECURE_KAFKA/logs/server.log" >&2 || true; die "secured kafka did not take the ACLs"; }
}

secure_up() {
  make_certs "$SECURE_CERTS"
  secure_credentials
  secure_redis_up
  secure_kafka_up
  secure_kafka_grant
  log "secured kafka up: SASL_SSL 127.0.0.1:$KAFKA_SECURE_PORT; credentials in $SECURE_CREDENTIALS"
}

secure_down() {
  stop_pid "$SECURE_KAFKA_PID" "$SECURE_KAFKA/server.properties" "secured kafka"
  stop_pid "$SECURE_REDIS_PID" redis-server "secured redis"
}

secure_status() {
  local rc=0
  if pid_alive "$SECURE_KAFKA_PID" "$SECURE_KAFKA/server.properties"; then
    log "secured kafka: up (pid $(cat "$SECURE_KAFKA_PID")) SASL_SSL 127.0.0.1:$KAFKA_SECURE_PORT"
  else
    log "secured kafka: DOWN"; rc=1
  fi
  secure_credentials
  if secure_redis_ping; then
    log "secured redis: up TLS 127.0.0.1:$REDIS_TLS_PORT"
  else
    log "secured redis: DOWN"; rc=1
  fi
  return "$rc"
}
