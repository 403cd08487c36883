#!/bin/bash
# Measure the spinal_linear CPU benchmark grid (issue 10: 48 cases x {shallowkern, eager,
# compiled} x {fwd, fwdbwd}) in chunks of a few minutes, each through the quiet-machine wrapper
# given as $QUIET (e.g. /tmp/quiet.sh), one thread, and merge the chunks into one JSON.
# usage: QUIET=/tmp/quiet.sh scripts/bench_spinal_grid.sh OUTDIR [CHUNK...]
#   chunks: b1 b32 b256 b4096a (F 320/512) b4096b (F 3200) b4096c (F 51200, W 8/128)
#           b4096d_<provider> (F 51200, W 512, one provider per chunk)
set -u
out=${1:?OUTDIR}; shift
mkdir -p "$out"
chunks=${*:-b1 b32 b256 b4096a b4096b b4096c b4096d_shallowkern b4096d_eager b4096d_compiled}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 SHALLOWKERN_BENCH_SPINAL_FULL=1
export SHALLOWKERN_BENCH_SECONDS=${SHALLOWKERN_BENCH_SECONDS:-0.3}
for c in $chunks; do
  case $c in
    b1|b32|b256) k="$c""_" ;;
    b4096a) k="b4096_f320_ or b4096_f512_" ;;
    b4096b) k="b4096_f3200_" ;;
    b4096c) k="b4096_f51200_w8- or b4096_f51200_w128-" ;;
    b4096d_*) k="b4096_f51200_w512- and ${c#b4096d_}-" ;;
    *) echo "unknown chunk $c" >&2; exit 2 ;;
  esac
  echo "== $c ($(date -u +%H:%M:%S))"
  ${QUIET:-} python -m pytest benchmarks/test_bench_spinal_linear.py -q -p no:cacheprovider \
    -k "$k" --benchmark-json="$out/$c.json" 2>&1 | grep -E "quiet.sh|passed|failed|rror"
done
