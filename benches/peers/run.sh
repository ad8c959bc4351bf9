#!/usr/bin/env bash
# creditd side by side with what a user would pick instead, on this machine, each durable before it
# answers:
#   Redis       a Lua check-and-decrement (benches/peers/debit.lua, EVALSHA), AOF with
#               appendfsync always, driven by redis-benchmark
#   PostgreSQL  UPDATE wallets SET balance = balance - $1 WHERE user_id = $2 AND balance >= $1
#               (benches/peers/debit.sql), synchronous_commit = on, fsync = on, driven by pgbench
#   creditd     POST /v1/users/{id}/debit and POST /v1/debits/batch, fsync = "always" (the default),
#               driven by `creditd loadgen`
#
#   benches/peers/run.sh [--quick] [--out FILE]
#
# It installs what is missing with apt (redis-server, redis-tools, postgresql, curl; where a
# package starts its own service, as on a machine with systemd, that service is left alone and
# unused), builds target/release/creditd if it is missing or older than the sources, starts the
# three servers on 127.0.0.1 in one temporary directory on disk ($PEERS_DIR, default /var/tmp),
# loads the same users with the same balances into each (lg-0 … lg-(N-1), 10^12 credits each:
# nothing runs out), runs every workload against each for the same time, and stops everything it
# started, by PID, on any exit. Each workload is one unmeasured warm-up run, then one measured run:
#
#   1 conn, 10 k users     1 connection, sequential, uniform over 10 k users
#   64 conns, 10 k users   64 connections, uniform over 10 k users
#   64 conns, 1 M users    64 connections, uniform over 1 M users      (not in --quick)
#   64 conns, 1 hot user   64 connections, every debit on one user
#   batch N, 8 conns       8 connections, N debits per request (N = 100), uniform over 10 k users:
#                 creditd POST /v1/debits/batch; Redis the same script pipelined N deep
#                 (redis-benchmark -P N); PostgreSQL one UPDATE of N rows per transaction
#
# One table: debits/s, latency p50/p99/p99.9 of a request (a batch for the batch workload),
# server CPU per debit (user + system time of the server process and its children, from
# /proc/<pid>/stat before and after the measured run, divided by the debits the server applied;
# for PostgreSQL the postmaster and every backend, live or exited), and creditd / peer for
# throughput and for CPU. Full mode: 10 s per measured run, about 5 minutes with the loading of
# 1 M users; --quick: 4 s per run, 10 k users, no 1 M workload, about 1 minute (both after install
# and build). The load generators share the machine with the servers, as they would on one box.
#
# Environment: PEERS_DIR (where the temporary directory goes), PEERS_SECONDS (measured seconds per
# run), PEERS_BATCH (debits per batch, default 100). CREDITD_* variables reach the creditd server
# (e.g. CREDITD_HISTORY__ENABLED=false), except its data directory and listen address.
set -euo pipefail
CALLER_DIR=$PWD
cd "$(dirname "$0")/../.."
ROOT=$PWD
PEERS=$ROOT/benches/peers
BIN=$ROOT/target/release/creditd

QUICK=0
OUT=
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --out) [ $# -ge 2 ] || { echo "--out needs a file name" >&2; exit 2; }; OUT=$2; shift ;;
    --out=*) OUT=${1#--out=} ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
case $OUT in "" | /*) ;; *) OUT=$CALLER_DIR/$OUT ;; esac

BATCH=${PEERS_BATCH:-100}
for value in "$BATCH" "${PEERS_SECONDS:-1}"; do
  [[ $value =~ ^[1-9][0-9]*$ ]] || { echo "PEERS_BATCH and PEERS_SECONDS are positive integers" >&2; exit 2; }
done
BATCH_CONNECTIONS=8
AMOUNT=1
FUNDING=1000000000000 # what `creditd loadgen --setup-only` gives each user
if [ "$QUICK" = 1 ]; then
  SECONDS_PER_RUN=${PEERS_SECONDS:-4}
  WARMUP_SECONDS=1
  USERS=10000
else
  SECONDS_PER_RUN=${PEERS_SECONDS:-10}
  WARMUP_SECONDS=2
  USERS=1000000
fi
# name | connections | users | distribution (uniform|hot) | debits per request
WORKLOADS=("1 conn, 10 k users|1|10000|uniform|1" "64 conns, 10 k users|64|10000|uniform|1")
[ "$QUICK" = 1 ] || WORKLOADS+=("64 conns, 1 M users|64|1000000|uniform|1")
WORKLOADS+=("64 conns, 1 hot user|64|1|hot|1"
  "batch $BATCH, $BATCH_CONNECTIONS conns|$BATCH_CONNECTIONS|10000|uniform|$BATCH")
STARTED_AT=$(date +%s)

say() { printf '[%3ds] %s\n' $(($(date +%s) - STARTED_AT)) "$*" >&2; }
die() { printf 'peers: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools: install what is missing, then insist.

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  die "need root or sudo to install packages: $*"; fi; }

pg_tool() { # the newest PostgreSQL server binaries, which Debian keeps off PATH
  local name=$1 dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$dir/$name" ] && { echo "$dir/$name"; return; }
  done
  command -v "$name" || true
}

install_missing() {
  local packages=()
  command -v redis-server >/dev/null || packages+=(redis-server)
  command -v redis-benchmark >/dev/null && command -v redis-cli >/dev/null || packages+=(redis-tools)
  [ -n "$(pg_tool postgres)" ] && [ -n "$(pg_tool pgbench)" ] && command -v psql >/dev/null ||
    packages+=(postgresql)
  command -v curl >/dev/null || packages+=(curl)
  command -v setpriv >/dev/null || packages+=(util-linux)
  if [ ${#packages[@]} -gt 0 ]; then
    say "installing ${packages[*]} with apt"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${packages[@]}" >&2
  fi
  local tool
  for tool in redis-server redis-benchmark redis-cli psql curl setpriv timeout awk sort; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt could not install it)"
  done
  POSTGRES=$(pg_tool postgres)
  INITDB=$(pg_tool initdb)
  PGBENCH=$(pg_tool pgbench)
  for tool in POSTGRES INITDB PGBENCH; do
    [ -n "${!tool}" ] && [ -x "${!tool}" ] ||
      die "PostgreSQL's ${tool,,} is missing (looked in /usr/lib/postgresql/*/bin and PATH)"
  done
}

build_creditd() {
  if [ -x "$BIN" ] && [ -z "$(find src Cargo.toml Cargo.lock -newer "$BIN" -print -quit)" ]; then
    return
  fi
  command -v cargo >/dev/null || die "$BIN is missing or stale and cargo is not installed"
  say "building creditd (cargo build --release)"
  cargo build --release --quiet || die "cargo build --release failed"
}

# ---------------------------------------------------------------------------------------------
# Processes: everything started here is stopped by PID on exit, whatever the exit.

WORK=
CLIENT_PID=
CREDITD_PID=
REDIS_PID=
PG_PID=
FAILED=0

stop_pid() { # pid first-signal
  local pid=$1 signal=$2 waited=0
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill "-$signal" "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ $waited -lt 150 ]; do sleep 0.1; waited=$((waited + 1)); done
  if kill -0 "$pid" 2>/dev/null; then
    say "pid $pid did not stop in 15 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

exec 8>&1 9>&2 # the script's own output, for the exit (a signal can come while a client's is redirected)
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  exec 1>&8 2>&9
  stop_pid "$CLIENT_PID" TERM
  # PostgreSQL: SIGINT is its fast shutdown (backends are told to exit, then the postmaster).
  stop_pid "$PG_PID" INT
  stop_pid "$REDIS_PID" TERM
  stop_pid "$CREDITD_PID" TERM
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$status" != 0 ] || [ "$FAILED" != 0 ]; then
      # Keep the logs of a failure, drop the data.
      rm -rf "$WORK/creditd/data" "$WORK/redis/data" "$WORK/pg/data"
      echo "peers: logs kept in $WORK" >&2
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A load generator runs in the background while the script waits for it, so that a signal to the
# script stops it at once rather than when the client is done.
client() {
  local status=0
  "$@" &
  CLIENT_PID=$!
  wait "$CLIENT_PID" || status=$?
  CLIENT_PID=
  return "$status"
}

free_port() {
  local port _
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  die "no free port found"
}

wait_until() { # seconds description pid command...: until the command succeeds, while pid lives
  local limit=$1 what=$2 pid=$3 tries=0
  shift 3
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || die "$what: the server exited (its log is under $WORK)"
    tries=$((tries + 1))
    [ $tries -lt $((limit * 10)) ] || die "$what did not come up in $limit s"
    sleep 0.1
  done
}

# User + system clock ticks of a process and its children: the live ones, and through cutime and
# cstime those that exited and were reaped (PostgreSQL backends end with their connections).
cpu_ticks() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" '
    { pid = $1; sub(/^.*\) /, "") }   # the name may hold spaces: fields from the state on
    pid == root || $2 == root { total += $12 + $13 + $14 + $15 }
    END { printf "%d\n", total }'
}
children() { { cat /proc/[0-9]*/stat 2>/dev/null || true; } |
  awk -v root="$1" '{ sub(/^.*\) /, "") } $2 == root { n++ } END { print n + 0 }'; }
TICKS_PER_SECOND=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------------------------
# The three servers.

start_creditd() {
  local dir=$WORK/creditd
  mkdir -p "$dir/data"
  # CREDITD_* from the caller's environment pass through; these two are the script's.
  CREDITD_STORAGE__DATA_DIR=$dir/data CREDITD_SERVER__LISTEN=127.0.0.1:0 \
    CREDITD_LOG__LEVEL=${CREDITD_LOG__LEVEL:-warn} \
    "$BIN" serve --config "$ROOT/config.toml" >"$dir/server.log" 2>&1 &
  CREDITD_PID=$!
  wait_until 20 "creditd (listening line)" "$CREDITD_PID" grep -q '^listening on http://' "$dir/server.log"
  CREDITD_URL=$(sed -n 's/^listening on \(http:\/\/[^ ]*\).*/\1/p' "$dir/server.log" | head -1)
  wait_until 60 "creditd /readyz" "$CREDITD_PID" curl -sf "$CREDITD_URL/readyz"
}

start_redis() {
  local dir=$WORK/redis
  mkdir -p "$dir/data"
  REDIS_PORT=$(free_port)
  # AOF only, fsynced before every answer; no RDB snapshots and no AOF rewrite (a fork in the
  # middle of a measured run would be measured).
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$dir/data" --daemonize no \
    --appendonly yes --appendfsync always --save '' --auto-aof-rewrite-percentage 0 \
    --logfile "$dir/server.log" >/dev/null 2>&1 &
  REDIS_PID=$!
  wait_until 20 "redis-server" "$REDIS_PID" redis-cli -p "$REDIS_PORT" ping
  [ "$(redis-cli -p "$REDIS_PORT" config get appendfsync | tail -1)" = always ] ||
    die "redis is not on appendfsync always"
  REDIS_SHA=$(redis-cli -p "$REDIS_PORT" script load "$(cat "$PEERS/debit.lua")")
}

# PostgreSQL will not run as root: as root, its commands run as the postgres user (setpriv execs,
# so a background server's PID is the postmaster's).
AS_POSTGRES=()
[ "$(id -u)" != 0 ] || AS_POSTGRES=(setpriv --reuid=postgres --regid=postgres --init-groups)

start_postgres() {
  local dir=$WORK/pg
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "PostgreSQL will not run as root and there is no postgres user"
    chown postgres: "$dir"
  fi
  "${AS_POSTGRES[@]}" "$INITDB" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale \
    --no-instructions >"$dir/initdb.log" 2>&1 || die "initdb failed: $(tail -3 "$dir/initdb.log")"
  PG_PORT=$(free_port)
  "${AS_POSTGRES[@]}" "$POSTGRES" -D "$dir/data" -c listen_addresses=127.0.0.1 -c port="$PG_PORT" \
    -c unix_socket_directories="$dir" -c fsync=on -c synchronous_commit=on \
    -c shared_buffers=256MB -c max_connections=100 >"$dir/server.log" 2>&1 &
  PG_PID=$!
  wait_until 30 "postgres" "$PG_PID" psql_peers -c 'select 1'
  local postmaster
  postmaster=$(head -1 "$dir/data/postmaster.pid")
  if [ "$postmaster" != "$PG_PID" ]; then
    PG_PID=$postmaster # so that the exit stops it
    die "the postmaster is not the process started (PID $postmaster): it cannot be measured"
  fi
  [ "$(psql_peers -tAc 'show synchronous_commit')/$(psql_peers -tAc 'show fsync')" = on/on ] ||
    die "postgres is not on synchronous_commit = on, fsync = on"
}
psql_peers() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@" postgres; }

load_users() {
  say "loading $USERS users into creditd"
  client "$BIN" loadgen --url "$CREDITD_URL" --setup-only --users "$USERS" --connections 64 \
    >"$WORK/creditd/setup.log" 2>&1 || die "creditd set-up failed: $(tail -3 "$WORK/creditd/setup.log")"
  say "loading $USERS users into Redis and PostgreSQL"
  # redis-benchmark writes __rand_int__ as 12 digits: the keys are lg-000000000042.
  awk -v n="$USERS" -v balance="$FUNDING" 'BEGIN { for (i = 0; i < n; i++) {
      key = sprintf("lg-%012d", i)
      printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(key), key, length(balance), balance } }' |
    redis-cli -p "$REDIS_PORT" --pipe >"$WORK/redis/setup.log" 2>&1 ||
    die "loading Redis failed: $(tail -3 "$WORK/redis/setup.log")"
  [ "$(redis-cli -p "$REDIS_PORT" dbsize)" = "$USERS" ] || die "Redis holds $(redis-cli -p "$REDIS_PORT" dbsize) keys, not $USERS"
  psql_peers -c "CREATE TABLE wallets (user_id text PRIMARY KEY, balance bigint NOT NULL)" \
    -c "INSERT INTO wallets SELECT 'lg-' || i, $FUNDING FROM generate_series(0, $USERS - 1) AS i" \
    -c "VACUUM ANALYZE wallets" -c "CHECKPOINT" >"$WORK/pg/setup.log" 2>&1 ||
    die "loading PostgreSQL failed: $(tail -3 "$WORK/pg/setup.log")"
  creditd_caught_up 300
}

# ---------------------------------------------------------------------------------------------
# Server-side counts: what each server says it applied, to check the clients' counts and to divide
# CPU by.

creditd_metric() { curl -sf "$CREDITD_URL/metrics" | awk -v name="$1" '$1 == name { printf "%d\n", $2 }'; }
creditd_applied() { local n; n=$(creditd_metric 'creditd_debits_total{outcome="ok"}'); echo "${n:-0}"; }
# The history store follows the log on its own thread: wait until it has applied what the load
# wrote, so that its work is counted in the run that caused it. No gauge: history is off.
creditd_caught_up() {
  local limit=$1 tries=0 lag
  while :; do
    lag=$(creditd_metric creditd_history_lag_records)
    [ -z "$lag" ] || [ "$lag" = 0 ] && return 0
    tries=$((tries + 1))
    [ $tries -lt $((limit * 20)) ] || { say "creditd's history still $lag records behind"; return 0; }
    sleep 0.05
  done
}
redis_applied() { redis-cli -p "$REDIS_PORT" info commandstats |
  awk -F'[:=,]' '/^cmdstat_decrby:/ { n = $3 } END { printf "%d\n", n }'; }
pg_balance() { psql_peers -tAc "SELECT sum(balance) FROM wallets"; }

# ---------------------------------------------------------------------------------------------
# One measured run per system. Each sets R_RATE (debits/s), R_P50, R_P99, R_P999 (µs),
# R_CPU (µs per debit) and R_NOTE; a run that fails leaves R_RATE empty and says why in R_NOTE.

LIMIT_SECONDS=$((SECONDS_PER_RUN * 5 + 60)) # a client that runs past this is stopped

cpu_per_debit() { # ticks-before ticks-after debits
  awk -v a="$1" -v b="$2" -v n="$3" -v hz="$TICKS_PER_SECOND" \
    'BEGIN { if (n > 0) printf "%.1f\n", (b - a) * 1e6 / hz / n; else print "" }'
}
check_counts() { # client-count server-count
  awk -v c="$1" -v s="$2" 'BEGIN { d = c - s; if (d < 0) d = -d; if (c > 0 && d > 0.001 * c)
    printf "client counted %d debits, server applied %d", c, s }'
}

run_creditd() { # name connections users distribution batch
  local log=$WORK/creditd/$RUN_ID.log args before after applied_before applied_after
  args=(loadgen --url "$CREDITD_URL" --skip-setup --users "$3" --connections "$2"
    --distribution "$4" --batch "$5" --amount "$AMOUNT" --warmup 0)
  client timeout "$LIMIT_SECONDS" "$BIN" "${args[@]}" --duration "$WARMUP_SECONDS" >"$log.warmup" 2>&1 ||
    { R_NOTE="warm-up failed: $(tail -1 "$log.warmup")"; return; }
  creditd_caught_up 60
  applied_before=$(creditd_applied)
  before=$(cpu_ticks "$CREDITD_PID")
  client timeout "$LIMIT_SECONDS" "$BIN" "${args[@]}" --duration "$SECONDS_PER_RUN" >"$log" 2>&1 ||
    { R_NOTE="loadgen failed: $(tail -1 "$log")"; return; }
  creditd_caught_up 60
  after=$(cpu_ticks "$CREDITD_PID")
  applied_after=$(creditd_applied)
  # requests: R in S s = …; status: 2xx A 402 B …; latency µs: p50 X p90 Y p99 Z p99.9 W max M
  local ok seconds failed
  ok=$(awk '$1 == "status:" { print $3 }' "$log")
  failed=$(awk '$1 == "status:" { print $5 + $8 + $10 + $13 }' "$log")
  seconds=$(awk '$1 == "requests:" { print $4 }' "$log")
  read -r R_P50 R_P99 R_P999 < <(awk '$1 == "latency" { print $4, $8, $10 }' "$log")
  [ -n "$ok" ] && [ -n "$seconds" ] || { R_NOTE="unreadable loadgen output: $log"; return; }
  R_RATE=$(awk -v n="$ok" -v b="$5" -v s="$seconds" 'BEGIN { printf "%.0f\n", n * b / s }')
  R_CPU=$(cpu_per_debit "$before" "$after" $((applied_after - applied_before)))
  R_NOTE=$(check_counts $((ok * $5)) $((applied_after - applied_before)))
  [ "$failed" = 0 ] || R_NOTE="${R_NOTE:+$R_NOTE; }$failed requests not 2xx"
}

redis_bench() { # log connections users distribution batch requests
  local key=lg-000000000000 random=()
  [ "$4" = hot ] || { key=lg-__rand_int__; random=(-r "$3"); }
  local status=0
  client timeout "$LIMIT_SECONDS" redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$2" -n "$6" \
    -P "$5" "${random[@]}" evalsha "$REDIS_SHA" 1 "$key" "$AMOUNT" >"$1.raw" 2>&1 || status=$?
  tr '\r' '\n' <"$1.raw" >"$1" # progress lines end in carriage returns
  rm -f "$1.raw"
  [ "$status" = 0 ] && grep -q 'throughput summary' "$1"
}
redis_rate() { awk '/throughput summary:/ { print $3 }' "$1"; }

run_redis() { # name connections users distribution batch
  local log=$WORK/redis/$RUN_ID.log requests rate seconds before after applied_before applied_after
  shift # redis_bench takes connections users distribution batch
  # redis-benchmark runs a number of requests, not a time: warm up with growing counts until one
  # run lasts half the warm-up, then size the measured run from the rate the last one reached.
  requests=$((500 * $1 * $4))
  while :; do
    redis_bench "$log.warmup" "$@" "$requests" || { R_NOTE="warm-up failed: $(tail -1 "$log.warmup")"; return; }
    rate=$(redis_rate "$log.warmup")
    seconds=$(awk -v n="$requests" -v r="$rate" 'BEGIN { printf "%.3f\n", n / r }')
    awk -v s="$seconds" -v w="$WARMUP_SECONDS" 'BEGIN { exit !(s >= w / 2) }' && break
    requests=$(awk -v n="$requests" -v s="$seconds" -v w="$WARMUP_SECONDS" \
      'BEGIN { f = w / (s > 0.01 ? s : 0.01); if (f > 10) f = 10; printf "%d\n", n * f + 1 }')
  done
  requests=$(awk -v r="$rate" -v s="$SECONDS_PER_RUN" 'BEGIN { printf "%d\n", r * s }')
  applied_before=$(redis_applied)
  before=$(cpu_ticks "$REDIS_PID")
  redis_bench "$log" "$@" "$requests" || { R_NOTE="redis-benchmark failed: $(tail -1 "$log")"; return; }
  after=$(cpu_ticks "$REDIS_PID")
  applied_after=$(redis_applied)
  R_RATE=$(redis_rate "$log" | awk '{ printf "%.0f\n", $1 }')
  # Summary: "avg min p50 p95 p99 max" in ms on the line after its header; p99.9 from the
  # percentile lines ("99.902% <= 1.503 milliseconds"): the smallest value at or past 99.9 %.
  read -r R_P50 R_P99 < <(awk 'p { printf "%.0f %.0f\n", $3 * 1000, $5 * 1000; exit }
    /avg +min +p50 +p95 +p99 +max/ { p = 1 }' "$log")
  R_P999=$(awk '/^[0-9.]+% <= [0-9.]+ milliseconds/ { q = $1; sub(/%/, "", q)
      if (q + 0 >= 99.9 && (best == "" || $3 + 0 < best)) best = $3 + 0 }
    END { if (best != "") printf "%.0f\n", best * 1000 }' "$log")
  R_CPU=$(cpu_per_debit "$before" "$after" $((applied_after - applied_before)))
  R_NOTE=$(check_counts "$requests" $((applied_after - applied_before)))
}

# N debits in one statement: the drawn users summed (a user drawn twice is debited twice), their
# rows locked in key order (so that two batches wait for each other instead of deadlocking), then
# one conditional UPDATE, committed once.
batch_script() { # N
  local n=$1 i
  for i in $(seq "$n"); do echo "\\set u$i random(0, :users - 1)"; done
  printf 'WITH d AS (SELECT user_id, sum(amount)::bigint AS amount FROM (VALUES '
  for i in $(seq "$n"); do
    [ "$i" = 1 ] || printf ', '
    printf "('lg-' || :u%d, (:amount)::bigint)" "$i"
  done
  printf ') AS v (user_id, amount) GROUP BY user_id), '
  printf 'l AS MATERIALIZED (SELECT w.user_id FROM wallets AS w JOIN d USING (user_id) ORDER BY w.user_id FOR UPDATE OF w) '
  printf 'UPDATE wallets AS w SET balance = w.balance - d.amount FROM d JOIN l USING (user_id) '
  printf 'WHERE w.user_id = d.user_id AND w.balance >= d.amount;\n'
}

run_postgres() { # name connections users distribution batch
  local log=$WORK/pg/$RUN_ID.log script=$PEERS/debit.sql threads=2 args before after
  local balance_before balance_after baseline
  if [ "$5" -gt 1 ]; then
    script=$WORK/pg/batch-$5.sql
    batch_script "$5" >"$script"
  fi
  [ "$2" -ge "$threads" ] || threads=$2
  # A deadlock (there should be none) is retried, and counted.
  args=(-h 127.0.0.1 -p "$PG_PORT" -U postgres -n -M prepared -c "$2" -j "$threads"
    -D users="$3" -D amount="$AMOUNT" --max-tries=100 -f "$script" postgres)
  client timeout "$LIMIT_SECONDS" "$PGBENCH" "${args[@]}" -T "$WARMUP_SECONDS" >"$log.warmup" 2>&1 ||
    { R_NOTE="warm-up failed: $(tail -1 "$log.warmup")"; return; }
  rm -f "$WORK/pg/$RUN_ID".latency*
  baseline=$(children "$PG_PID")
  balance_before=$(pg_balance)
  before=$(cpu_ticks "$PG_PID")
  client timeout "$LIMIT_SECONDS" "$PGBENCH" "${args[@]}" -T "$SECONDS_PER_RUN" -l \
    --log-prefix="$WORK/pg/$RUN_ID.latency" >"$log" 2>&1 || { R_NOTE="pgbench failed: $(tail -1 "$log")"; return; }
  # The backends end after pgbench: wait until they are gone (their CPU is then the
  # postmaster's cutime and cstime).
  local tries=0
  while [ "$(children "$PG_PID")" -gt "$baseline" ] && [ $tries -lt 100 ]; do sleep 0.05; tries=$((tries + 1)); done
  after=$(cpu_ticks "$PG_PID")
  balance_after=$(pg_balance)
  local applied=$(((balance_before - balance_after) / AMOUNT)) transactions
  transactions=$(awk '/number of transactions actually processed:/ { print $NF }' "$log")
  R_RATE=$(awk -v b="$5" '/^tps = / { printf "%.0f\n", $3 * b }' "$log")
  # Per-transaction log: client, transaction, latency µs, …
  read -r R_P50 R_P99 R_P999 < <(cat "$WORK/pg/$RUN_ID".latency* | awk '{ print $3 }' | sort -n |
    awk '{ v[NR] = $1 } END { if (NR) { printf "%d %d %d\n", v[int(NR * 0.5 + 0.999999)],
      v[int(NR * 0.99 + 0.999999)], v[int(NR * 0.999 + 0.999999)] } }')
  rm -f "$WORK/pg/$RUN_ID".latency*
  R_CPU=$(cpu_per_debit "$before" "$after" "$applied")
  R_NOTE=$(check_counts $((transactions * $5)) "$applied")
  local failed
  failed=$(awk '/number of failed transactions:/ { print $5 }' "$log")
  [ "${failed:-0}" = 0 ] || R_NOTE="${R_NOTE:+$R_NOTE; }$failed transactions failed"
  local retried
  retried=$(awk '/number of transactions retried:/ { print $5 }' "$log")
  [ "${retried:-0}" = 0 ] || R_NOTE="${R_NOTE:+$R_NOTE; }$retried transactions retried (deadlocks)"
}

# ---------------------------------------------------------------------------------------------
# The table.

ROWS=()    # workload|system|rate|p50|p99|p99.9|cpu|note
run_workload() {
  local spec=$1 name connections users distribution batch system
  IFS='|' read -r name connections users distribution batch <<<"$spec"
  for system in creditd redis postgres; do
    RUN_ID=$(echo "$name" | tr -c 'a-zA-Z0-9\n' '-')
    R_RATE='' R_P50='' R_P99='' R_P999='' R_CPU='' R_NOTE=''
    say "$name: $system"
    "run_$system" "$name" "$connections" "$users" "$distribution" "$batch"
    [ -n "$R_RATE" ] || FAILED=1
    [ -z "$R_NOTE" ] || say "  $system: $R_NOTE"
    ROWS+=("$name|$system|$R_RATE|$R_P50|$R_P99|$R_P999|$R_CPU|$R_NOTE")
  done
}

declare -A LABEL=([creditd]=creditd [redis]="Redis + Lua" [postgres]=PostgreSQL)

render() { # text | markdown
  printf '%s\n' "${ROWS[@]}" | awk -F'|' -v format="$1" -v label_c="${LABEL[creditd]}" \
    -v label_r="${LABEL[redis]}" -v label_p="${LABEL[postgres]}" '
    function rate(x) { return x == "" ? "failed" : x >= 1e6 ? sprintf("%.2f M", x / 1e6) : x >= 1e3 ? sprintf("%.1f k", x / 1e3) : sprintf("%.0f", x) }
    function us(x) { return x == "" ? "–" : x >= 10000 ? sprintf("%.1f ms", x / 1000) : x >= 1000 ? sprintf("%.2f ms", x / 1000) : sprintf("%d µs", x) }
    function num(x) { return x == "" ? "–" : x }
    function ratio(a, b) { return (a == "" || b == "" || b == 0) ? "–" : sprintf("%.2f×", a / b) }
    function row(c1, c2, c3, c4, c5, c6, c7, c8, c9) {
      if (format == "markdown") printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", c1, c2, c3, c4, c5, c6, c7, c8, c9
      else printf "%-21s %-12s %9s %8s %8s %8s %8s %9s %8s\n", c1, c2, c3, c4, c5, c6, c7, c8, c9
    }
    BEGIN {
      label["creditd"] = label_c; label["redis"] = label_r; label["postgres"] = label_p
      row("workload", "system", "debits/s", "p50", "p99", "p99.9", "CPU µs", "rate c/p", "CPU c/p")
      if (format == "markdown") print "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    }
    { n++; w[n] = $1; s[n] = $2; r[n] = $3; p50[n] = $4; p99[n] = $5; p999[n] = $6; cpu[n] = $7; note[n] = $8
      if ($2 == "creditd") { cr[$1] = $3; ccpu[$1] = $7 } }
    END {
      for (i = 1; i <= n; i++) {
        peer = s[i] != "creditd"
        row(w[i], label[s[i]], rate(r[i]), us(p50[i]), us(p99[i]), us(p999[i]), num(cpu[i]),
          peer ? ratio(cr[w[i]], r[i]) : "", peer ? ratio(ccpu[w[i]], cpu[i]) : "")
      }
      print ""
      print "CPU µs: server CPU (user + system) per debit. c/p: creditd divided by the peer: a rate above 1"
      print "and a CPU below 1 are creditd ahead. Latency is per request (per batch for batches)."
      for (i = 1; i <= n; i++) if (note[i] != "") printf "%s, %s: %s\n", w[i], label[s[i]], note[i]
    }'
}

# ---------------------------------------------------------------------------------------------

install_missing
build_creditd
BASE=${PEERS_DIR:-/var/tmp}
mkdir -p "$BASE"
WORK=$(mktemp -d "$BASE/creditd-peers.XXXXXX")
chmod 755 "$WORK" # PostgreSQL runs as its own user and must reach its directory
if [ "$(stat -f -c %T "$WORK")" = tmpfs ]; then
  say "WARNING: $WORK is on tmpfs, where fsync costs nothing: set PEERS_DIR to a directory on disk"
fi
say "working in $WORK ($(if [ "$QUICK" = 1 ]; then echo quick; else echo full; fi) mode, ${SECONDS_PER_RUN} s per run)"
start_creditd
start_redis
start_postgres
load_users
for spec in "${WORKLOADS[@]}"; do run_workload "$spec"; done

ELAPSED=$(($(date +%s) - STARTED_AT))
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
HEADER="$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($CPU_MODEL), $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r), data on $(findmnt -no FSTYPE -T "$BASE" 2>/dev/null || stat -f -c %T "$BASE") ($BASE), load average $(cut -d' ' -f1-3 /proc/loadavg)
creditd $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(redis-server --version | awk '{ print $1, $2, $3 }'), $("$POSTGRES" --version)
benches/peers/run.sh$(if [ "$QUICK" = 1 ]; then echo " --quick"; fi): ${SECONDS_PER_RUN} s per measured run after ${WARMUP_SECONDS} s of warm-up, $USERS users loaded, batches of $BATCH on $BATCH_CONNECTIONS connections, ${ELAPSED} s in all"
echo
echo "$HEADER"
echo
render text
if [ -n "$OUT" ]; then
  {
    echo "$HEADER" | sed 's/$/  /'
    echo
    render markdown
  } >"$OUT"
  say "table written to $OUT"
fi
[ "$FAILED" = 0 ] || die "some runs failed (see above)"
