#!/usr/bin/env bash
# Soak: is creditd steady under time? A release server in a temporary directory, an open-loop mix
# of durable debits at half its measured maximum for N minutes, and every 10 s one sample of the
# server's memory, the latency and goodput of those 10 s, and the queues that could grow.
#
#   benches/soak.sh [--minutes N] [--rate R] [--users U] [--retention S] [--out DIR]
#
#   --minutes N    length of the loaded run (default 10)
#   --rate R       operations per second; default: half of the single-debit maximum, measured
#                  first (64 connections, closed loop, a key per debit, 5 s)
#   --users U      users, created and funded first (default 100000)
#   --retention S  keep idempotency keys and closed reservations S seconds instead of the
#                  defaults (24 h and 1 h), so that a run of minutes reaches the steady state a
#                  production server reaches after a day; the samples show both tables
#   --out DIR      where soak.csv, soak.png and the logs go (default target/soak)
#
# The mix, each operation on its intended schedule (latency counts from it): 90 % single debits
# (`POST /v1/users/{id}/debit`), 5 % a reservation then its capture (two requests), 5 % a batch
# of 10 debits (`POST /v1/debits/batch`); each write with its own idempotency key, users uniform.
#
# Every 10 s (one `interval` line of `creditd loadgen --report-every 10`) a row of soak.csv:
#   t_s             seconds since the loaded run began
#   rss_mib         the server's resident memory (VmRSS in /proc/PID/status)
#   ops_per_s       operations answered in those 10 s (a reservation and its capture are one)
#   ok_per_s        of which answered 2xx (goodput)
#   debits_per_s    debits carried by those operations
#   p50_ms p99_ms max_ms   latency of those 10 s, from the intended send time
#   errors          answers 5xx, transport errors and 4xx other than 402 in those 10 s
#   wal_pending     records appended and not yet durable (creditd_wal_pending_records, 5 s)
#   idempotency_keys   keys held (creditd_idempotency_keys, refreshed every 5 s)
#   reservations_open  open holds (creditd_reservations_open, refreshed every 15 s)
#   history_lag     durable records the ledger history has not applied (creditd_history_lag_records)
#   server_cpu      cores the server kept busy over those 10 s (/proc/PID/stat)
#   load1           the machine's 1-minute load average
#   loadgen_cpu     cores the load generator kept busy over those 10 s: it shares the machine, and
#                   a generator short of CPU falls behind its schedule, which counts as latency
#   steal           cores the hypervisor gave to other guests over those 10 s (/proc/stat): on a
#                   virtual machine, a stall with steal is the host's, not the server's
#
# Verdict (after the warm-up: the first 2 minutes, or with --retention S the first S + 120 s, when
# the idempotency keys' tables have reached their size; at most the first third of the run):
#   memory   the mean RSS of the last 3 samples against the mean of the first 3 after warm-up:
#            growth under 5 % passes. The growth over the last third alone is printed too: memory
#            that rose once and then stayed flat (a table reaching its size) shows there as 0.
#   p99      steady when the median of the 10-s p99s over the last third of the measured samples
#            is at most 1.5 times the median over the first third, and no 10-s p99 passes 10 times
#            the median of all of them.
#   goodput  at least 99 % of the scheduled operations answered 2xx.
# Exit status 0 when all three pass, 1 otherwise; 2 when the run itself failed.
#
# Everything it starts (server, load generator) is stopped by PID on any exit; the data directory
# (under $SOAK_DIR, default /var/tmp) is removed unless the run failed. Needs curl and gnuplot
# (installed with apt if missing) and builds target/release/creditd if it is missing; set
# CREDITD_BIN to soak another build (an A/B of two commits).
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=10
RATE=0
USERS=100000
RETENTION=
OUT=target/soak
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) MINUTES=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --users) USERS=$2; shift 2 ;;
    --retention) RETENTION=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

[ -z "$RETENTION" ] || [[ $RETENTION =~ ^[0-9]+$ ]] ||
  { echo "--retention takes whole seconds: $RETENTION" >&2; exit 2; }
BIN=${CREDITD_BIN:-target/release/creditd}
SERVICE='Authorization: Bearer dev-service-secret-change-me'
SERVER_PID=
LOAD_PID=
DATA=
FAILED=1

cleanup() {
  local status=$?
  [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null && wait "$LOAD_PID" 2>/dev/null
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  if [ -n "$DATA" ]; then
    if [ "$FAILED" = 0 ]; then rm -rf "$DATA"; else echo "kept for inspection: $DATA" >&2; fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 2' INT TERM

need() { # command apt-package
  command -v "$1" >/dev/null && return
  echo "installing $2 with apt" >&2
  local sudo=
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need curl curl
need gnuplot gnuplot-nox
if [ ! -x "$BIN" ]; then
  [ -z "${CREDITD_BIN:-}" ] || { echo "CREDITD_BIN=$BIN is not an executable" >&2; exit 2; }
  cargo build --release
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=$(mktemp -d "${SOAK_DIR:-/var/tmp}/creditd-soak.XXXXXX")
CSV=$OUT/soak.csv

# The server: a fresh data directory, a port the kernel picks, the repository's config.toml.
export CREDITD_STORAGE__DATA_DIR=$DATA CREDITD_SERVER__LISTEN=127.0.0.1:0 CREDITD_LOG__LEVEL=warn
if [ -n "$RETENTION" ]; then
  export CREDITD_IDEMPOTENCY__TTL=$RETENTION
  export CREDITD_LIMITS__CLOSED_RESERVATION_RETENTION_SECONDS=$RETENTION
fi
"$BIN" serve >"$OUT/server.out" 2>"$OUT/server.log" &
SERVER_PID=$!
URL=
for _ in $(seq 200); do
  URL=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$OUT/server.out" | head -n 1)
  [ -n "$URL" ] && curl -sf "$URL/readyz" >/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server exited; see $OUT/server.log" >&2; exit 2; }
  sleep 0.1
done
[ -n "$URL" ] || { echo "the server did not start; see $OUT/server.log" >&2; exit 2; }

loadgen() {
  "$BIN" loadgen --url "$URL" --users "$USERS" --user-prefix soak "$@"
}

metric() { # name: the value of an unlabelled series in the last scrape
  awk -v name="$1" '$1 == name { printf "%d\n", $2; found = 1 } END { if (!found) print "" }' \
    "$OUT/metrics.txt"
}

cpu_ticks() { # PID: user + system clock ticks of the process so far
  awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

steal_ticks() { # clock ticks the hypervisor gave to other guests so far, all CPUs
  awk '$1 == "cpu" { print $9 }' /proc/stat
}

echo "machine: $(nproc) cores, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "server $URL (pid $SERVER_PID), data $DATA"
started=$(date +%s)
loadgen --setup-only --connections 64 >/dev/null
echo "set up $USERS users in $(($(date +%s) - started)) s"

if [ "$RATE" = 0 ]; then
  loadgen --skip-setup --connections 64 --duration 5 --warmup 1 --idempotency-keys \
    >"$OUT/max-rate.txt"
  maximum=$(sed -n 's/.*debits \([0-9]*\)\/s.*/\1/p' "$OUT/max-rate.txt")
  [ -n "$maximum" ] || { echo "no rate measured: $(cat "$OUT/max-rate.txt")" >&2; exit 2; }
  RATE=$((maximum / 2))
  echo "maximum single-debit rate: $maximum/s (64 connections, closed loop); soak at $RATE/s"
fi

SECONDS_TOTAL=$((MINUTES * 60))
WARMUP=120
# Keys kept S seconds and purged once a minute are most numerous at about S + 60 s, when the
# purge rebuilds each table shard at that size; memory settles after the next purge.
[ -n "$RETENTION" ] && [ $((RETENTION + 120)) -gt $WARMUP ] && WARMUP=$((RETENTION + 120))
[ $((SECONDS_TOTAL / 3)) -lt $WARMUP ] && WARMUP=$((SECONDS_TOTAL / 3))
echo "soak: $MINUTES min at $RATE operations/s, $USERS users, warm-up $WARMUP s" \
  "${RETENTION:+, idempotency keys and closed reservations kept $RETENTION s}"

# Started directly, not through the function, so that $! is the generator itself (its CPU is sampled).
"$BIN" loadgen --url "$URL" --users "$USERS" --user-prefix soak --skip-setup --connections 64 \
  --rate "$RATE" --duration "$SECONDS_TOTAL" --warmup 0 --idempotency-keys --reserve-percent 5 \
  --batch-percent 5 --mix-batch 10 --report-every 10 \
  >"$OUT/load.txt" 2>&1 &
LOAD_PID=$!

echo "t_s,rss_mib,ops_per_s,ok_per_s,debits_per_s,p50_ms,p99_ms,max_ms,errors,wal_pending,idempotency_keys,reservations_open,history_lag,server_cpu,load1,loadgen_cpu,steal" >"$CSV"
seen=0
ticks_before=$(cpu_ticks "$SERVER_PID")
load_ticks_before=$(cpu_ticks "$LOAD_PID")
steal_before=$(steal_ticks)
clock_ticks=$(getconf CLK_TCK)
printf '%6s %8s %8s %8s %8s %8s %9s %7s %10s %9s %8s %5s %7s %5s\n' \
  t_s rss_MiB ok/s p50_ms p99_ms errors wal_pend idem_k holds hist_lag cpu load1 gen_cpu steal
while :; do
  running=1
  kill -0 "$LOAD_PID" 2>/dev/null || running=0
  mapfile -t lines < <(grep '^interval ' "$OUT/load.txt" || true)
  while [ "$seen" -lt "${#lines[@]}" ]; do
    line=${lines[$seen]}
    seen=$((seen + 1))
    field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$line"; }
    t=$(field t); ops=$(field ops); debits=$(field debits); ok=$(field ok)
    errors=$(($(field other_4xx) + $(field 5xx) + $(field errors)))
    p50=$(field p50_us); p99=$(field p99_us); max=$(field max_us)
    rss_kib=$(awk '/^VmRSS/ { print $2 }' "/proc/$SERVER_PID/status")
    curl -s "$URL/metrics" >"$OUT/metrics.txt" || : >"$OUT/metrics.txt"
    ticks=$(cpu_ticks "$SERVER_PID")
    load_ticks=$(cpu_ticks "$LOAD_PID")
    steal=$(steal_ticks)
    span=10
    cores() { awk -v a="$1" -v b="$2" -v hz="$clock_ticks" -v s="$span" \
      'BEGIN { printf "%.2f", (a - b) / hz / s }'; }
    cpu=$(cores "$ticks" "$ticks_before")
    # The generator's last sample is lost once it has exited (its ticks read 0).
    gen_cpu=$([ "$load_ticks" -gt 0 ] && cores "$load_ticks" "$load_ticks_before" || echo "")
    stolen=$(cores "$steal" "$steal_before")
    ticks_before=$ticks load_ticks_before=$load_ticks steal_before=$steal
    load1=$(cut -d' ' -f1 /proc/loadavg)
    row=$(awk -v t="$t" -v rss="$rss_kib" -v ops="$ops" -v ok="$ok" -v d="$debits" \
      -v p50="$p50" -v p99="$p99" -v max="$max" -v e="$errors" \
      'BEGIN { printf "%d,%.1f,%.0f,%.0f,%.0f,%.3f,%.3f,%.3f,%d", t, rss / 1024, ops / 10,
               ok / 10, d / 10, p50 / 1000, p99 / 1000, max / 1000, e }')
    row="$row,$(metric creditd_wal_pending_records),$(metric creditd_idempotency_keys)"
    row="$row,$(metric creditd_reservations_open),$(metric creditd_history_lag_records)"
    row="$row,$cpu,$load1,$gen_cpu,$stolen"
    echo "$row" >>"$CSV"
    IFS=, read -r c_t c_rss _ c_ok _ c_p50 c_p99 _ c_err c_wal c_idem c_holds c_lag c_cpu c_load \
      c_gen c_steal <<<"$row"
    printf '%6s %8s %8s %8s %8s %8s %9s %7s %10s %9s %8s %5s %7s %5s\n' \
      "$c_t" "$c_rss" "$c_ok" "$c_p50" "$c_p99" "$c_err" "$c_wal" "$c_idem" "$c_holds" "$c_lag" \
      "$c_cpu" "$c_load" "$c_gen" "$c_steal"
  done
  [ "$running" = 1 ] || break
  sleep 1
done
wait "$LOAD_PID" || { echo "the load generator failed: $(tail -n 3 "$OUT/load.txt")" >&2; exit 2; }
LOAD_PID=
sed -n '/^open loop/,$p' "$OUT/load.txt"

# The plot: RSS and the idempotency keys held, p50 and p99 over time, the warm-up shaded.
benches/plot_soak.sh "$CSV" "$OUT/soak.png" \
  "creditd soak: $RATE operations/s for $MINUTES min, $USERS users ($(date -u +%Y-%m-%d))" "$WARMUP"

# The verdict.
awk -F, -v warmup="$WARMUP" -v rate="$RATE" '
  NR == 1 { next }
  $1 > warmup { n++; rss[n] = $2; p99[n] = $7; ok += $4 * 10; ops += $3 * 10; err += $9 }
  function median(a, from, to,    m, i, j, v, tmp) {
    m = 0
    for (i = from; i <= to; i++) tmp[++m] = a[i]
    for (i = 2; i <= m; i++) { v = tmp[i]; for (j = i - 1; j >= 1 && tmp[j] > v; j--) tmp[j + 1] = tmp[j]; tmp[j + 1] = v }
    return m % 2 ? tmp[(m + 1) / 2] : (tmp[m / 2] + tmp[m / 2 + 1]) / 2
  }
  END {
    if (n < 6) { print "verdict: too few samples after the warm-up"; exit 1 }
    first = (rss[1] + rss[2] + rss[3]) / 3; last = (rss[n - 2] + rss[n - 1] + rss[n]) / 3
    growth = (last - first) / first * 100
    third = int(n / 3)
    early = median(p99, 1, third); late = median(p99, n - third + 1, n); all = median(p99, 1, n)
    worst = 0; for (i = 1; i <= n; i++) if (p99[i] > worst) worst = p99[i]
    scheduled = rate * n * 10
    memory_ok = growth < 5
    p99_ok = late <= 1.5 * early && worst <= 10 * all
    goodput_ok = ok >= 0.99 * scheduled
    printf "memory:  %.1f MiB -> %.1f MiB after warm-up: %+.1f %% (limit 5 %%): %s\n", first, last, growth, memory_ok ? "steady" : "GROWS"
    printf "         over the last third alone: %.1f MiB -> %.1f MiB (%+.1f %%)\n", rss[n - third + 1], rss[n], (rss[n] - rss[n - third + 1]) / rss[n - third + 1] * 100
    printf "p99:     median of 10-s p99s %.2f ms (first third %.2f ms, last third %.2f ms, worst %.2f ms): %s\n", all, early, late, worst, p99_ok ? "steady" : "NOT STEADY"
    printf "goodput: %d of %d scheduled operations answered 2xx (%.2f %%), %d errors: %s\n", ok, scheduled, ok / scheduled * 100, err, goodput_ok ? "ok" : "SHORT"
    exit !(memory_ok && p99_ok && goodput_ok)
  }' "$CSV" && verdict=0 || verdict=1
echo "csv: $CSV"
echo "plot: $OUT/soak.png"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
FAILED=0
exit "$verdict"
