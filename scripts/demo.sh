#!/usr/bin/env bash
# The main job: the whole stack on local defaults with MovieLens-1M replayed.
# Kafka and Redis are already up (`make demo` runs scripts/infra.sh up first).
# Starts the streams worker and the gRPC server, loads the catalog and a synthetic follow
# graph over the users of the replayed slice, replays the slice, prints recommendations
# (one of them for a user who follows people who rated in the slice, with its social
# reasons) through the gRPC client, starts the scheduled trainer and keeps serving until
# interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${DEMO_PYTHON:-.venv/bin/python}
LOG_DIR=${DEMO_LOG_DIR:-var/log}
REPLAY_LIMIT=${DEMO_REPLAY_LIMIT:-50000}
DATA_DIR=${DEMO_DATA_DIR:-var/demo}
mkdir -p "$LOG_DIR" "$DATA_DIR"
export HF_HUB_OFFLINE=1

STOP_WAIT_S=${DEMO_STOP_WAIT_S:-8}  # then whatever is left is killed: all gone within 10 s

# Every command runs as a child this shell knows (`run` waits for it in a way a signal
# interrupts), so Ctrl-C or a TERM stops them all, wherever the script is.
pids=()
run() {
  "$@" &
  pids+=($!)
  wait "$!"
}
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "==> stopping every process the demo started (Kafka and Redis stay up: make infra-down)"
  local alive=() deadline=$((SECONDS + STOP_WAIT_S))
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null && alive+=("$pid"); done
  while ((${#alive[@]})) && ((SECONDS < deadline)); do
    sleep 0.2
    local still=()
    for pid in "${alive[@]}"; do kill -0 "$pid" 2>/dev/null && still+=("$pid"); done
    alive=("${still[@]+"${still[@]}"}")
  done
  for pid in "${alive[@]+"${alive[@]}"}"; do
    echo "    pid $pid did not stop within ${STOP_WAIT_S} s: killed"
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# the console shows the worker's and the server's /metrics from these ports
export STREAMREC_STREAMS_METRICS_HOST=127.0.0.1 STREAMREC_STREAMS_METRICS_PORT=${STREAMREC_STREAMS_METRICS_PORT:-9100} \
  STREAMREC_SERVING_METRICS_PORT=${STREAMREC_SERVING_METRICS_PORT:-9101}
echo "==> streams worker   (log: $LOG_DIR/streams.log)"
# MovieLens-1M's ratings span about three years of event time: a dedupe window that covers
# them (about 12 MB of ids for the whole set) makes a re-import end in events.dlq as
# `duplicate`; the 7-day default would call most of it `too_old` instead.
STREAMREC_STREAMS_DEDUPE_WINDOW_S=${STREAMREC_STREAMS_DEDUPE_WINDOW_S:-94608000} \
  $PY -m streams >"$LOG_DIR/streams.log" 2>&1 &
pids+=($!)
echo "==> gRPC server      (log: $LOG_DIR/serving.log)"
$PY -m serving >"$LOG_DIR/serving.log" 2>&1 &
pids+=($!)
echo "==> operator console (log: $LOG_DIR/console.log)"
$PY -m console >"$LOG_DIR/console.log" 2>&1 &
pids+=($!)
run $PY -m serving.cli.client wait --timeout 180

echo "==> MovieLens-1M catalog -> Kafka 'items'"
run $PY -m ingest catalog --source movielens
echo "==> a synthetic follow graph over the users of the first $REPLAY_LIMIT ratings -> Kafka 'relations'"
# before the replay, so the worker writes each rating into the raters' followers' feeds
run $PY -m training social-graph --ml-1m --first-events "$REPLAY_LIMIT" --follows 10 --seed 0 \
  --out "$DATA_DIR/follows.csv" --pick-user "$DATA_DIR/social_user"
run $PY -m ingest relations "$DATA_DIR/follows.csv" --no-progress
echo "==> replaying the first $REPLAY_LIMIT ratings -> Kafka 'events'"
run $PY -m ingest replay --source movielens --limit "$REPLAY_LIMIT" --speedup 0 --skip-catalog

echo "==> recommendations through the gRPC client"
run $PY -m serving.cli.client demo --wait-for-last-event --users 3 -k 10
SOCIAL_USER=$(<"$DATA_DIR/social_user")
echo "==> $SOCIAL_USER follows people who rated in the slice: their items carry it as social proof"
run $PY -m serving.cli.client recommend --user "$SOCIAL_USER" -k 10

echo "==> trainer on a schedule (log: $LOG_DIR/training.log): fine-tunes on the event log,"
echo "    promotes past the quality gate; serving swaps the new version in without restart"
STREAMREC_TRAINING_TRAIN_TIME_BUDGET_S=${DEMO_TRAIN_BUDGET_S:-300} \
STREAMREC_TRAINING_SCHEDULE_INTERVAL_S=${DEMO_TRAIN_INTERVAL_S:-3600} \
  $PY -m training schedule >"$LOG_DIR/training.log" 2>&1 &
pids+=($!)

echo
echo "streamrec is serving on 127.0.0.1:50051; try:"
echo "  $PY -m serving.cli.client recommend --user $SOCIAL_USER -k 10"
echo "  $PY -m serving.cli.client similar --item 'Toy Story (1995)' -k 10"
echo "operator console: http://127.0.0.1:${STREAMREC_CONSOLE_PORT:-8070}/"
echo "Ctrl-C stops the worker, the server, the console and the trainer."
wait
