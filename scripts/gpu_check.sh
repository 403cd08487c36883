#!/usr/bin/env bash
# One-call GPU check for a lent H100/H200 (torch + CUDA preinstalled, no network):
#   bash scripts/gpu_check.sh OUTDIR          # e.g. the device tool's $OUT
# Builds shallowkern._C in place (CUDA kernels included), prints the device, runs the GPU tests,
# compute-sanitizer (memcheck, racecheck) on a tiny script calling the CUDA op, times the
# wide_conv2d CUDA kernel against cuDNN on the LeNet conv1 grid (both register blockings),
# profiles one launch with ncu, runs the benchmarks, a shallowkern vs plain-PyTorch sweep slice
# (issue 4's speedup), and the whole test suite.
# Every stage writes OUTDIR/<stage>.log and appends "<stage> rc=<code> <seconds>s" to
# OUTDIR/summary.txt; a failing stage does not stop the next. A global budget (default 570 s,
# GPU_CHECK_BUDGET_S) keeps one call under the device tool's 10-minute limit: stages that would
# start too late are recorded as skipped. GPU_CHECK_STAGES="build tests_cuda ..." runs a subset
# (the build stays in place between calls on a warm machine).
set -u

OUT_ARG=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUT_ARG"
OUTDIR=$(cd "$OUT_ARG" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS=${MAX_JOBS:-16}
DEFAULT_STAGES="env build import host_test tests_cuda memcheck timing racecheck ncu bench speedup tests_all"
STAGES=${GPU_CHECK_STAGES:-$DEFAULT_STAGES}
BUDGET=${GPU_CHECK_BUDGET_S:-570}
START=$(date +%s)
SUMMARY="$OUTDIR/summary.txt"
echo "gpu_check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "$(git status --porcelain 2>/dev/null | wc -l) changed files" > "$SUMMARY"

want() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# stage NAME TIMEOUT_S COMMAND...: run with a timeout (capped by the budget left), log, record.
stage() {
  local name=$1 limit=$2
  shift 2
  want "$name" || return 0
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt 20 ]; then
    echo "$name skipped (budget: ${left}s left)" | tee -a "$SUMMARY"
    return 0
  fi
  [ "$limit" -gt $((left - 5)) ] && limit=$((left - 5))
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  local note=""
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && note=" (timed out)"
  echo "$name rc=$rc $(($(date +%s) - t0))s$note" | tee -a "$SUMMARY"
  tail -n 5 "$OUTDIR/$name.log"
}

# --- helper scripts (written to OUTDIR so they come back with the results) ----------------------
cat > "$OUTDIR/sanitize_case.py" <<'EOF'
# Tiny calls of the CUDA op on every kernel path, for compute-sanitizer.
import torch
import shallowkern  # noqa: F401  (registers the ops)

op = torch.ops.shallowkern._wide_conv2d_native
torch.manual_seed(0)
cases = [  # (N, C, H, W, K, R, S, stride, padding, dilation, relu, pool, indices)
    (2, 3, 12, 13, 6, 5, 5, 1, 0, 1, True, 2, True),     # 5x5 fast path, odd width
    (1, 3, 11, 11, 40, 5, 5, 1, 2, 1, False, 2, True),   # padding, K not a multiple of 16
    (1, 1, 9, 10, 20, 3, 3, 1, 1, 1, True, 1, False),    # 3x3 fast path, pool 1 (pair stores)
    (1, 4, 9, 9, 7, 3, 3, 1, 1, 1, True, 1, False),      # pool 1, odd width (scalar stores)
    (1, 2, 13, 11, 9, 4, 2, 2, 1, 2, True, 2, True),     # generic path
    (1, 16, 8, 8, 5, 3, 3, 1, 0, 1, True, 2, True),      # C = 16
    (1, 3, 40, 600, 8, 3, 3, 1, 1, 1, True, 2, True),    # wide image: column tiles
]
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for n, c, h, w, k, r, s, st, pad, dil, relu, pool, ret in cases:
        x = torch.randn(n, c, h, w, device="cuda", dtype=dtype)
        wt = torch.randn(k, c, r, s, device="cuda", dtype=dtype)
        b = torch.randn(k, device="cuda", dtype=dtype)
        out, idx = op(x, wt, b, [st, st], [pad, pad], [dil, dil], 1, relu, pool, ret)
        out2, _ = op(x, wt, None, [st, st], [pad, pad], [dil, dil], 1, relu, pool, False)
torch.cuda.synchronize()
print("sanitize_case: ok")
EOF

cat > "$OUTDIR/timing_case.py" <<'EOF'
# CUDA-event timing of the wide_conv2d CUDA kernel vs cuDNN (conv2d + relu + max_pool2d with
# indices) on LeNet conv1 shapes. argv[1]: label; argv[2]: output JSON.
import json, sys
import torch
import torch.nn.functional as F
import shallowkern  # noqa: F401

op = torch.ops.shallowkern._wide_conv2d_native
label, path = sys.argv[1], sys.argv[2]
props = torch.cuda.get_device_properties(0)
# The fp32 (TF32 off) rate, measured now: best of 20 4096^3 cuBLAS SGEMMs.
torch.backends.cuda.matmul.allow_tf32 = False
_a = torch.randn(4096, 4096, device="cuda")
FLOOR_TFLOPS = 2 * 4096**3 / min(
    __import__("triton").testing.do_bench(lambda: _a @ _a, return_mode="all")) / 1e9
print(f"fp32 SGEMM peak measured now: {FLOOR_TFLOPS:.1f} TFLOP/s", flush=True)


def bench(fn, reps=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    times.sort()
    return times[len(times) // 2]


rows = []
for dtype in (torch.float32, torch.bfloat16):
    for n in (128, 512):
        for d1 in (6, 64, 256, 1024, 2048):
            x = torch.randn(n, 3, 32, 32, device="cuda", dtype=dtype)
            w = torch.randn(d1, 3, 5, 5, device="cuda", dtype=dtype) * 0.1
            b = torch.randn(d1, device="cuda", dtype=dtype)
            native = lambda: op(x, w, b, [1, 1], [0, 0], [1, 1], 1, True, 2, True)
            torch.backends.cudnn.allow_tf32 = False
            cudnn = lambda: F.max_pool2d(F.relu(F.conv2d(x, w, b)), 2, return_indices=True)
            t_n, t_c = bench(native), bench(cudnn)
            flops = 2.0 * n * d1 * 28 * 28 * 75
            nbytes = (x.numel() + w.numel() + b.numel() + n * d1 * 196) * x.element_size() \
                + n * d1 * 196
            rows.append(dict(label=label, device=props.name, dtype=str(dtype), n=n, d1=d1,
                             native_us=t_n, cudnn_us=t_c, speedup=t_c / t_n,
                             native_tflops=flops / t_n / 1e6,
                             pct_fp32_floor=100.0 * flops / t_n / 1e6 / FLOOR_TFLOPS,
                             native_gbs=nbytes / t_n / 1e3))
            r = rows[-1]
            print(f"{label:8s} {str(dtype):15s} N={n:3d} d1={d1:4d}: native {t_n:8.1f} us "
                  f"({r['native_tflops']:5.1f} TFLOP/s, {r['pct_fp32_floor']:5.1f}% of SGEMM), "
                  f"cuDNN {t_c:8.1f} us, speedup {r['speedup']:.2f}x", flush=True)
json.dump(dict(device=props.name, torch=torch.__version__, rows=rows), open(path, "w"), indent=1)
EOF

cat > "$OUTDIR/ncu_case.py" <<'EOF'
import torch
import shallowkern  # noqa: F401
op = torch.ops.shallowkern._wide_conv2d_native
x = torch.randn(128, 3, 32, 32, device="cuda")
w = torch.randn(256, 3, 5, 5, device="cuda")
b = torch.randn(256, device="cuda")
for _ in range(3):
    op(x, w, b, [1, 1], [0, 0], [1, 1], 1, True, 2, True)
torch.cuda.synchronize()
EOF

# Issue 4's speedup on a slice: LeNet d1 in {64, 512}, 2 epochs of the lab recipe on a generated
# CIFAR-sized set (the device does not see ../shared, and CIFAR-10's 163 MB exceed one call's
# carry), shallowkern vs plain PyTorch (sweep --impl plain), then the report's speedup table.
# argv: OUTDIR PYTHON [extra sweep args]
cat > "$OUTDIR/speedup_case.sh" <<'EOF'
set -e
R="$1/speedup.jsonl"
G="--family lenet --d1 64 512 --k 2.8 --seeds 0 --dataset synthetic-50000 --recipe lab
   --set epochs=2 --results $R --no-progress ${3:-}"
$2 -m shallowkern sweep $G
$2 -m shallowkern sweep $G --impl plain
$2 -m shallowkern report --results "$R"
EOF

# --- stages --------------------------------------------------------------------------------------
stage env 60 bash -c "
  nvidia-smi; echo; nvcc --version | tail -n 2; echo
  (ncu --version | tail -n 1) 2>&1; (compute-sanitizer --version | tail -n 1) 2>&1; echo
  $PY - <<'EOF'
import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())
print('device', torch.cuda.get_device_name(0), 'capability', torch.cuda.get_device_capability(0))
p = torch.cuda.get_device_properties(0)
print('SMs', p.multi_processor_count, 'memory GiB', round(p.total_memory / 2**30, 1))
try:
    import triton; print('triton', triton.__version__)
except Exception as e:
    print('triton missing:', e)
EOF"

stage build 360 env SHALLOWKERN_CUDA_ARCH="${SHALLOWKERN_CUDA_ARCH:-90a}" \
  "$PY" setup.py build_ext --inplace

stage import 60 "$PY" -c "
import shallowkern, torch
from shallowkern import _ext
print('load_error:', _ext.load_error)
print('has_cuda_kernels:', _ext.has_cuda_kernels())
assert _ext.has_cuda_kernels(), 'shallowkern._C has no CUDA kernels'"

stage host_test 120 bash -c "
  g++ -std=c++17 -O2 -Wall -Wextra -I csrc/include -I csrc/cuda -I \${CUDA_HOME:-/usr/local/cuda}/include \
    csrc/tests/test_cuda_indexing.cpp -o '$OUTDIR/test_cuda_indexing' && '$OUTDIR/test_cuda_indexing'
  rc=\$?; rm -f '$OUTDIR/test_cuda_indexing'; exit \$rc"

stage tests_cuda 240 "$PY" -m pytest tests/cuda -q -rs --maxfail=20 -p no:cacheprovider \
  --junitxml="$OUTDIR/junit_cuda.xml"

# Both register blockings (the plan picks KT = 4 for most of these tiny shapes).
stage memcheck 240 bash -c "
  compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
    $PY '$OUTDIR/sanitize_case.py' &&
  SHALLOWKERN_WC2D_KT=16 compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
    $PY '$OUTDIR/sanitize_case.py'"

stage timing 200 bash -c "
  $PY '$OUTDIR/timing_case.py' auto '$OUTDIR/timing_auto.json' &&
  SHALLOWKERN_WC2D_KT=16 $PY '$OUTDIR/timing_case.py' kt16 '$OUTDIR/timing_kt16.json' &&
  SHALLOWKERN_WC2D_KT=4 $PY '$OUTDIR/timing_case.py' kt4 '$OUTDIR/timing_kt4.json'"

stage racecheck 200 compute-sanitizer --tool racecheck --error-exitcode 9 --print-limit 20 \
  "$PY" "$OUTDIR/sanitize_case.py"

stage ncu 200 bash -c "
  ncu --clock-control none --target-processes all -k regex:wide_conv2d_fwd --launch-skip 1 --launch-count 1 \
    --set full -f -o '$OUTDIR/ncu_lenet' $PY '$OUTDIR/ncu_case.py' &&
  ncu --import '$OUTDIR/ncu_lenet.ncu-rep' --page details > '$OUTDIR/ncu_lenet.txt'"

# The full GPU grid (benchmarks/shapes.py) is far more than one call: narrow it with
# GPU_BENCH_ARGS, e.g. '-k "n128 and (bf16 or fp32_tf32)"'.
stage bench 240 bash -c "
  if ls benchmarks/test_*.py > /dev/null 2>&1; then
    $PY -m pytest benchmarks/ -q -p no:cacheprovider --benchmark-json='$OUTDIR/bench.json' ${GPU_BENCH_ARGS:-}
    rc=\$?; [ \$rc -eq 5 ] && { echo 'no benchmarks collected'; exit 0; }; exit \$rc
  else
    echo 'benchmarks/: no test_*.py yet'
  fi"

stage speedup 240 bash "$OUTDIR/speedup_case.sh" "$OUTDIR" "$PY"

stage tests_all 300 "$PY" -m pytest tests -q -x -rs -p no:cacheprovider \
  --junitxml="$OUTDIR/junit_all.xml"

echo "total $(($(date +%s) - START))s" | tee -a "$SUMMARY"
# The device tool returns at most 8 files from $OUT: bundle the logs, keep the summary and the
# benchmark JSON beside the bundle.
bundle=$(mktemp -d)
(cd "$OUTDIR" && tar czf "$bundle/gpu_check_logs.tar.gz" --exclude=summary.txt --exclude=bench.json . \
  && find . -mindepth 1 -maxdepth 1 ! -name summary.txt ! -name bench.json -exec rm -rf {} + \
  && mv "$bundle/gpu_check_logs.tar.gz" .)
exit 0
