#!/bin/bash
# One piece of the afcc_conv2d CPU benchmark grid, one thread, with the load recorded.
#   /tmp/quiet.sh bash scripts/afcc_bench_piece.sh OUT.json SECONDS -k "w0.125_conv9"
# writes pytest-benchmark's JSON to OUT.json and OUT.json.load (load average before / after);
# scripts/afcc_bench_table.py merges pieces and renders the docs/afcc.md table.
set -euo pipefail
out=$1 seconds=$2
shift 2
cd "$(dirname "$0")/.."
. .venv/bin/activate 2>/dev/null || true
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%H:%M:%S)" | tee "$out.load"
OMP_NUM_THREADS=1 SHALLOWKERN_BENCH_SECONDS=$seconds python -m pytest \
  benchmarks/test_bench_afcc_conv2d.py -p no:cacheprovider -q --benchmark-json="$out" \
  --benchmark-columns=median,rounds "$@" | grep -E "passed|failed|error" || true
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%H:%M:%S)" | tee -a "$out.load"
