#!/usr/bin/env bash
# run.py --idle-probe bench/e2e/heap_probe.sh: WHEN PID...; asks each process preloaded with
# heap_probe.so for its heap and prints "WHEN PID rss_kib in_use=... free=... arena=...".
set -euo pipefail
when=$1
shift
for pid in "$@"; do
  rm -f "/tmp/acr-heap-$pid.txt"
  kill -PWR "$pid"
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    [ -s "/tmp/acr-heap-$pid.txt" ] && break
    sleep 0.1
  done
  rss=$(awk '/^Rss:/ {print $2}' "/proc/$pid/smaps_rollup")
  echo "$when $pid rss_kib=$rss $(cat "/tmp/acr-heap-$pid.txt" 2>/dev/null || echo no-probe)" >&2
  rm -f "/tmp/acr-heap-$pid.txt"
done
