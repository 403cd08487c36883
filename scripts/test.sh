#!/usr/bin/env bash
# The README's test command: set up (scripts/setup.sh), then run every check that needs no GPU:
#   1. pytest tests/      (ops against references, Triton under TRITON_INTERPRET=1, Triton and
#                          nvcc sm_90 compile checks, data, laws, profile, sweep, CLI)
#   2. ctest              (C++ tests of csrc/ through CMake)
#   3. sanitizers: the extension's CPU sources built with ASan + UBSan (-O1, build/asan) and the
#      native op tests, the fuzzer (>= 1,000 calls per raw op) and the sanitizer canaries run
#      against it (python -m tests.sanitize); any sanitizer report fails the run
#   4. pytest benchmarks/ once as a smoke run (--benchmark-disable)
# Fails on any failure and when pytest runs no test.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
# shellcheck disable=SC1091
source scripts/setup.sh
export SHALLOWKERN_DATA="${SHALLOWKERN_DATA:-$(cd "$here/.." && pwd)/shared/datasets}"
python -c "import shallowkern._ext as e, sys; sys.exit(0 if e.available() else 'native extension did not build')"

echo "== pytest tests/"
# The full fuzzer (>= 1,000 calls per raw op) runs in the sanitizer step below; here 300 per spec.
SHALLOWKERN_FUZZ_CASES="${SHALLOWKERN_FUZZ_CASES:-300}" python -m pytest tests -q -p no:cacheprovider

echo "== ctest (CMake build of csrc/)"
cmake -S . -B build/cmake -G Ninja -DPython_EXECUTABLE="$(command -v python)" >build-cmake.log 2>&1 \
    || { cat build-cmake.log; exit 1; }
cmake --build build/cmake -j "${MAX_JOBS:-2}" >>build-cmake.log 2>&1 || { cat build-cmake.log; exit 1; }
ctest --test-dir build/cmake --output-on-failure

echo "== sanitizers (ASan + UBSan build of the CPU kernels in build/asan)"
MAX_JOBS="${MAX_JOBS:-2}" python -m tests.sanitize -q -x \
    tests/ops/test_wide_conv2d_native.py tests/fuzz tests/sanitize

echo "== pytest benchmarks/ (smoke run)"
python -m pytest benchmarks -q -p no:cacheprovider --benchmark-disable
