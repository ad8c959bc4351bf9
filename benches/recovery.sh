#!/usr/bin/env bash
# Recovery at scale: how long a server takes to be ready again after `kill -9`, on a data
# directory of millions of wallets and a log of up to a hundred million records.
#
#   benches/recovery.sh [--users N] [--records M] [--keep]
#
#   --users N     wallets (users, one wallet each; default 10000000)
#   --records M   log records in all (default 100000000): N user creations, N grants, then
#                 random debits of 1 credit
#   --keep        keep the data directory (under $RECOVERY_DIR, default /var/tmp) afterwards
#
# Steps:
#   1. Build the directory with the engine directly (`benches/recovery_data.rs`, built with
#      `cargo build --release --bench recovery_data`: two threads, no HTTP, `fsync = "never"`, no
#      snapshot), then `sync` it.
#   2. Log only (b): start `creditd serve` on it with snapshots pushed out of reach
#      (`snapshot.every_records` 10^12, `snapshot.every` 100000 d), so the whole log replays; time
#      from the start of the process to the first `/readyz` 200, first with the directory's files
#      dropped from the page cache (cold, `dd iflag=nocache`), then again (warm). `kill -9` each.
#   3. Recent snapshot (a): start it with the default snapshot settings; it snapshots at once (the
#      log holds more than `snapshot.every_records` records since the last snapshot); wait for the
#      snapshot (its time and size are printed), add a tail of debits over HTTP (`creditd loadgen` for 5 s, open loop), `kill -9`,
#      and time the next start.
# Each start reports: time to ready, the CPU time (user + system) the server had used by then
# (on a shared machine the steadier figure), what recovery itself logged (records replayed, its
# seconds and rate), the resident memory once ready and its peak (VmRSS, VmHWM). The history store is
# switched off for every start (`CREDITD_HISTORY__ENABLED=false`): it is not on the way to ready
# but would share the two cores while it catches up on a hundred million records.
#
# Everything it starts is stopped by PID on any exit; the data directory is removed unless --keep.
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=10000000
RECORDS=100000000
KEEP=0
while [ $# -gt 0 ]; do
  case $1 in
    --users) USERS=$2; shift 2 ;;
    --records) RECORDS=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

BIN=target/release/creditd
SERVER_PID=
DATA=
cleanup() {
  local status=$?
  [ -n "$SERVER_PID" ] && kill -9 "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  if [ -n "$DATA" ] && [ "$KEEP" = 0 ]; then rm -rf "$DATA"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 2' INT TERM

[ -x "$BIN" ] || cargo build --release
PARENT=${RECOVERY_DIR:-/var/tmp}
# About 70 bytes a record in the log and 40 bytes a wallet in a snapshot, with room to spare.
need_bytes=$((RECORDS * 80 + USERS * 100))
free_bytes=$(df --output=avail -B1 "$PARENT" | tail -n 1)
if [ "$need_bytes" -gt "$free_bytes" ]; then
  echo "needs about $((need_bytes >> 30)) GiB under $PARENT, $((free_bytes >> 30)) GiB free" >&2
  exit 2
fi
DATA=$(mktemp -d "$PARENT/creditd-recovery.XXXXXX")
LOGS=target/recovery
mkdir -p "$LOGS"

echo "machine: $(nproc) cores, $(uname -r), $(free -g | awk '/^Mem/ { print $2 }') GiB," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "data: $DATA ($(df --output=fstype "$PARENT" | tail -n 1))"

# The generator, built with the release profile (the one target/release/creditd shares).
GENERATOR=$(cargo build -q --release --bench recovery_data --message-format=json |
  sed -n 's/.*"executable":"\([^"]*recovery_data[^"]*\)".*/\1/p' | tail -n 1)
[ -x "$GENERATOR" ] || { echo "could not build benches/recovery_data.rs" >&2; exit 2; }
started=$(date +%s%N)
"$GENERATOR" --bench --data-dir "$DATA" --users "$USERS" --records "$RECORDS" 2>&1 | sed 's/^/  /'
sync -f "$DATA/wal" 2>/dev/null || sync
built_ms=$((($(date +%s%N) - started) / 1000000))
log_bytes=$(du -sb "$DATA/wal" | cut -f1)
echo "built in $((built_ms / 1000)) s: $USERS wallets, $RECORDS records," \
  "log $((log_bytes >> 20)) MiB in $(ls "$DATA/wal" | grep -c '\.log$') segments"

drop_cache() {
  find "$DATA" -type f -print0 |
    xargs -0 -I{} dd if={} iflag=nocache count=0 status=none 2>/dev/null || true
}

# Starts the server, waits for /readyz 200, prints one result line. $1: a label; the rest are
# VAR=value settings for the server.
RESULTS=()
start() {
  local label=$1
  shift
  local out="$LOGS/$label.out" log="$LOGS/$label.log"
  local t0
  t0=$(date +%s%N)
  env "$@" CREDITD_STORAGE__DATA_DIR="$DATA" CREDITD_SERVER__LISTEN=127.0.0.1:0 \
    CREDITD_HISTORY__ENABLED=false CREDITD_LOG__LEVEL=info CREDITD_LOG__FORMAT=text \
    "$BIN" serve >"$out" 2>"$log" &
  SERVER_PID=$!
  URL=
  while :; do
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server exited: $(tail -n 3 "$log")" >&2; exit 2; }
    [ -n "$URL" ] || URL=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$out" | head -n 1)
    [ -n "$URL" ] && curl -sf -o /dev/null "$URL/readyz" && break
    sleep 0.02
  done
  local ready_ms=$((($(date +%s%N) - t0) / 1000000))
  local rss hwm cpu
  cpu=$(awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.1f", ($12 + $13) / hz }' \
    "/proc/$SERVER_PID/stat")
  rss=$(awk '/^VmRSS/ { print int($2 / 1024) }' "/proc/$SERVER_PID/status")
  hwm=$(awk '/^VmHWM/ { print int($2 / 1024) }' "/proc/$SERVER_PID/status")
  local line records seconds rate snapshot
  line=$(grep -a ' recovered' "$log" | tail -n 1 | sed 's/\x1b\[[0-9;]*m//g')
  records=$(sed -n 's/.*records=\([0-9]*\).*/\1/p' <<<"$line")
  seconds=$(sed -n 's/.*seconds="\{0,1\}\([0-9.]*\).*/\1/p' <<<"$line")
  rate=$(sed -n 's/.*records_per_second="\{0,1\}\([0-9]*\).*/\1/p' <<<"$line")
  snapshot=$(sed -n 's/.*snapshot=\(Some([^)]*)\|None\).*/\1/p' <<<"$line")
  [ "$snapshot" = None ] && snapshot=none || snapshot=yes
  local row
  row=$(printf '| %s | %s | %.2f s | %s s | %s | %s s | %s | %s MiB | %s MiB |' "$label" \
    "$snapshot" "$(awk -v ms="$ready_ms" 'BEGIN { print ms / 1000 }')" "$cpu" "$records" "$seconds" \
    "$(awk -v r="$rate" 'BEGIN { printf "%.2f M/s", r / 1e6 }')" "$rss" "$hwm")
  RESULTS+=("$row")
  echo "$row"
}

crash() {
  kill -9 "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

metric() { # the value of an unlabelled series
  curl -s "$URL/metrics" | awk -v name="$1" '$1 == name { print $2 }'
}

echo "| start | snapshot | time to ready | server CPU | records replayed | recovery (logged) | replay rate | RSS ready | RSS peak |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
NO_SNAPSHOTS=(CREDITD_SNAPSHOT__EVERY_RECORDS=1000000000000 CREDITD_SNAPSHOT__EVERY=100000d)
drop_cache
start "log only, cold cache" "${NO_SNAPSHOTS[@]}"
crash
start "log only, warm cache" "${NO_SNAPSHOTS[@]}"
crash

# The first snapshot starts at once: the log holds more than `snapshot.every_records` records
# (the default, 1 000 000, or fewer for a small run) since the last one.
every=1000000
[ "$RECORDS" -gt $((2 * every)) ] || every=$((RECORDS / 2))
start "log only, then a snapshot" CREDITD_SNAPSHOT__EVERY_RECORDS=$every
for _ in $(seq 600); do
  count=$(metric creditd_snapshot_duration_seconds_count)
  [ -n "$count" ] && [ "${count%.*}" -ge 1 ] && break
  sleep 0.5
done
snapshot_seconds=$(metric creditd_snapshot_duration_seconds_sum)
# The old segments are removed just after the snapshot is counted.
sleep 2
snapshot_bytes=$(du -sb "$DATA/snapshots" | cut -f1)
echo "snapshot of $USERS wallets: ${snapshot_seconds} s to write, $((snapshot_bytes >> 20)) MiB" \
  "(the snapshots directory); log left: $(($(du -sb "$DATA/wal" | cut -f1) >> 20)) MiB in" \
  "$(ls "$DATA/wal" | grep -c '\.log$') segments"
"$BIN" loadgen --url "$URL" --skip-setup --user-prefix rec --users "$USERS" --connections 32 \
  --rate 5000 --duration 5 --warmup 0 >"$LOGS/tail-load.txt"
grep '^requests' "$LOGS/tail-load.txt" | sed 's/^/  tail: /'
crash
start "recent snapshot + 5 s tail"
crash
drop_cache
start "recent snapshot + tail, cold cache"
crash
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
