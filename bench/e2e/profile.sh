#!/usr/bin/env bash
# Profiles acr-egress under the end-to-end bench's load (bench/e2e/PROFILE.md shows the tops):
#   perf record (user-space call graphs) during the rate phase (sni, connect) and a 1 GiB bulk
#   tunnel (sni); callgrind on a short sni rate run; heaptrack on a short sni and connect rate
#   run and on a start with a single tunnel (the baseline subtracted to get allocations per
#   tunnel). Needs root and scripts/install-deps --bench; the Release build in build/bench.
# Usage: bench/e2e/profile.sh [OUT_DIR]   (default /tmp/acr-egress-profile)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/acr-egress-profile}
mkdir -p "$out"
run=(bench/e2e/run.py --rounds 1 --warmup 0)

echo "== perf: sni and connect rate, sni bulk (1 GiB)"
"${run[@]}" --peers "acr-egress sni" --phases rate,bulk --duration 10 \
  --perf "$out/perf" >"$out/perf-sni.md"
"${run[@]}" --peers "acr-egress connect" --phases rate --duration 10 \
  --perf "$out/perf" >"$out/perf-connect.md"
for f in "$out"/perf-*.data; do
  perf report -i "$f" --stdio --no-children --sort symbol --percent-limit 1.5 -g none \
    2>/dev/null >"${f%.data}.self.txt" || true
  perf report -i "$f" --stdio --children --sort symbol --percent-limit 4 -g none \
    2>/dev/null >"${f%.data}.children.txt" || true
done

echo "== callgrind: sni rate, 8 tunnels in flight for 4 s"
"${run[@]}" --peers "acr-egress sni" --phases rate --duration 4 --concurrency 8 \
  --wrap "valgrind --tool=callgrind --callgrind-out-file=$out/callgrind-sni.out" \
  >"$out/callgrind-sni.md"
# (head closes the pipe early: SIGPIPE is not a failure here)
(callgrind_annotate --inclusive=no "$out/callgrind-sni.out" 2>/dev/null || true) | head -60 \
  >"$out/callgrind-sni.self.txt"
(callgrind_annotate --inclusive=yes "$out/callgrind-sni.out" 2>/dev/null || true) | head -60 \
  >"$out/callgrind-sni.incl.txt"

echo "== heaptrack: baseline (one tunnel), sni and connect rate (3 s)"
"${run[@]}" --peers "acr-egress sni" --phases none \
  --wrap "heaptrack -o $out/heaptrack-base" >"$out/heaptrack-base.md"
for role in sni connect; do
  "${run[@]}" --peers "acr-egress $role" --phases rate --duration 3 \
    --wrap "heaptrack -o $out/heaptrack-$role" >"$out/heaptrack-$role.md"
done
for f in "$out"/heaptrack-*.zst "$out"/heaptrack-*.gz; do
  [ -e "$f" ] || continue
  heaptrack_print -f "$f" --print-peaks=0 --print-allocators=1 --print-temporary=0 \
    --print-leaks=0 --peak-limit=15 --sub-peak-limit=2 2>/dev/null >"${f%.*}.txt" || true
done
echo "profiles in $out"
