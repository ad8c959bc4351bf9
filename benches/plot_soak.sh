#!/usr/bin/env bash
# Plots a soak.csv written by benches/soak.sh: the server's RSS and the idempotency keys held
# (left axis), p50 and p99 of each 10 s (right axis), the warm-up shaded.
#
#   benches/plot_soak.sh CSV PNG TITLE [WARMUP_SECONDS]
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 CSV PNG TITLE [WARMUP_SECONDS]" >&2; exit 2; }
CSV=$1 PNG=$2 TITLE=$3 WARMUP=${4:-120}
gnuplot <<PLOT
set terminal pngcairo size 960,480 font "sans,10"
set output "$PNG"
set datafile separator ","
set title "$TITLE"
set xlabel "seconds"
set ylabel "RSS (MiB); keys held (x 10 000)"
set y2label "latency of each 10 s (ms)"
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
set key top left opaque box
set grid
set object 1 rect from 0, graph 0 to $WARMUP, graph 1 behind fillcolor rgb "#eeeeee" fillstyle solid noborder
plot "$CSV" using 1:2 skip 1 with lines lw 2 lc rgb "#1f77b4" title "server RSS (MiB)", \
     "$CSV" using 1:(\$11 / 10000) skip 1 with lines lw 1 dt 2 lc rgb "#555555" title "idempotency keys (x 10 000)", \
     "$CSV" using 1:7 skip 1 axes x1y2 with lines lw 1 lc rgb "#d62728" title "p99 (ms)", \
     "$CSV" using 1:6 skip 1 axes x1y2 with lines lw 1 lc rgb "#ff9896" title "p50 (ms)"
PLOT
