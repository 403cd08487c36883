#!/usr/bin/env bash
# Sets up a virtual environment (.venv) with shallowkern installed for development.
# Usage: source scripts/setup.sh   (or bash scripts/setup.sh)
# torch is pinned to 2.13.0 (a CPU-only machine takes the CPU wheel; an unpinned torch would
# pull a multi-GB CUDA build) and the package builds with --no-build-isolation against it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SHALLOWKERN_VENV:-$here/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0" "triton==3.7.1" numpy scipy matplotlib \
    tqdm pytest pytest-benchmark hypothesis pybind11 ninja setuptools wheel
MAX_JOBS="${MAX_JOBS:-2}" python -m pip install -q --no-build-isolation -e "$here"
python -c "import shallowkern._ext as e; print('shallowkern installed; native extension:', 'loaded' if e.available() else 'MISSING (' + str(e.load_error) + ')')"
