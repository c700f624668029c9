#!/usr/bin/env bash
# Issue 15's benches, three rounds, one bench at a time (run it on an otherwise idle machine):
#   bench/run_all.sh [OUTDIR]     # about 25 minutes; each run's output in OUTDIR/<bench>_<round>.txt
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/stockwire-bench}
mkdir -p "$out"
for i in 1 2 3; do
  for b in reserve ingest routing push; do
    args=(); [ "$b" = reserve ] && args=(--workers 1)
    echo "[round $i] bench/$b.py ${args[*]:-} -> $out/${b}_$i.txt"
    timeout 1200 .venv/bin/python "bench/$b.py" "${args[@]}" > "$out/${b}_$i.txt" 2>&1 || echo "  exit $?"
  done
done
echo "[floor] bench/floor.py --seconds 5 -> $out/floor.txt"
timeout 300 .venv/bin/python bench/floor.py --seconds 5 > "$out/floor.txt" 2>&1
