#!/usr/bin/env bash
# What the history costs durable debits over HTTP: the same load against a server with the history
# on and one with it off, in alternating rounds, on fresh data directories, with the history's lag
# sampled every 100 ms while the load runs and after it stops.
#
#   benches/history_onoff.sh [ROUNDS] [SECONDS]        (defaults: 3 rounds of 6 s per workload)
#
# Workloads, each run against "on" then "off" in every round (closed loop unless a rate is given):
#   single   POST /v1/users/{id}/debit, 64 connections, 10 000 users
#   batch    POST /v1/debits/batch, 100 debits per request, 8 connections
#   batch-open  the same batches in open loop at $OPEN_RATE requests/s (default 1000: 100 k
#            debits/s), a load the machine sustains, to show whether the lag stays bounded
# Prints one line per run: throughput, p50/p99, the largest lag seen while loaded, the lag when the
# load stopped and how long the history took to catch up after it. Needs a release build
# (`cargo build --release`); uses the real disk under target/ (or $CREDITD_BENCH_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECONDS_PER_RUN=${2:-6}
OPEN_RATE=${OPEN_RATE:-1000}
BIN=target/release/creditd
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
BASE=${CREDITD_BENCH_DIR:-$PWD/target}/history-onoff
PORT=${PORT:-18190}
ADMIN='Authorization: Bearer dev-admin-secret-change-me'
SERVER_PID=
trap '[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; true' EXIT

lag() {
  curl -s "http://127.0.0.1:$PORT/metrics" | awk '$1 == "creditd_history_lag_records" { print int($2) }'
}

run() { # name history(on|off) loadgen-args...
  local name=$1 history=$2
  shift 2
  local dir="$BASE/$name-$history"
  rm -rf "$dir"
  mkdir -p "$dir"
  local enabled=true
  [ "$history" = off ] && enabled=false
  CREDITD_STORAGE__DATA_DIR="$dir" CREDITD_SERVER__LISTEN="127.0.0.1:$PORT" \
    CREDITD_HISTORY__ENABLED=$enabled CREDITD_LOG__LEVEL=warn \
    "$BIN" serve >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
    sleep 0.1
  done
  "$BIN" loadgen --url "http://127.0.0.1:$PORT" --setup-only --users 10000 >/dev/null
  # Let the history apply the set-up before measuring.
  sleep 1
  local max=0 sample
  "$BIN" loadgen --url "http://127.0.0.1:$PORT" --skip-setup --users 10000 \
    --duration "$SECONDS_PER_RUN" --warmup 1 "$@" >"$dir/load.txt" 2>&1 &
  local load=$!
  if [ "$history" = on ]; then
    while kill -0 "$load" 2>/dev/null; do
      sample=$(lag)
      [ -n "$sample" ] && [ "$sample" -gt "$max" ] && max=$sample
      sleep 0.1
    done
  fi
  wait "$load"
  local at_end=- caught=-
  if [ "$history" = on ]; then
    at_end=$(lag)
    local started=$(date +%s%N)
    while [ "$(lag)" != 0 ]; do sleep 0.05; done
    caught=$(( ($(date +%s%N) - started) / 1000000 ))ms
  fi
  local summary
  summary=$(grep -E '^requests:' "$dir/load.txt" | sed 's/^requests: //')
  local latency
  latency=$(grep -E '^latency' "$dir/load.txt" | awk '{ print $3, $4, $7, $8 }')
  printf '%-11s %-3s | %s | %s | lag max %s, at end %s, caught up in %s\n' \
    "$name" "$history" "$summary" "$latency" "$max" "$at_end" "$caught"
  kill "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

echo "machine: $(nproc) cores, $(uname -r); ${SECONDS_PER_RUN}s per run, $ROUNDS rounds"
for round in $(seq "$ROUNDS"); do
  echo "-- round $round"
  for history in on off; do run single "$history" --connections 64; done
  for history in on off; do run batch "$history" --connections 8 --batch 100; done
  for history in on off; do
    run batch-open "$history" --connections 8 --batch 100 --rate "$OPEN_RATE"
  done
done
