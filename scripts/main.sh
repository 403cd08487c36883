#!/usr/bin/env bash
# The README's main command: set up, then run the main job (a quick CIFAR-10 sweep of
# generalized LeNets on CPU, the fitted power law with its CI, the profile table and plots),
# plus two small width-scaled VGG-16s (BatchNorm, widths 1/16 and 1/8, one seed, the same quick
# recipe) in the same results file, so that the error-vs-FLOPs plot and the closing table put
# LeNet and VGG-16 on one frontier (the paper's core claim: VGG-16 needs more operations for
# a given error). SHALLOWKERN_MAIN_VGG=0 skips the VGG-16s. Extra arguments go to `run`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
# shellcheck disable=SC1091
source scripts/setup.sh
export SHALLOWKERN_DATA="${SHALLOWKERN_DATA:-$(cd "$here/.." && pwd)/shared/datasets}"
results="${SHALLOWKERN_RESULTS:-shallowkern-quick.jsonl}"
if [ "${SHALLOWKERN_MAIN_VGG:-1}" != 0 ]; then
  # One sweep for both families (the `main` preset: the quick LeNets and the two VGG-16s,
  # longest first, so the two workers finish together), before `run`, so that run finds its
  # trials done and its plots already hold both families.
  shallowkern sweep --preset main --workers 2 --results "$results"
fi
shallowkern run --results "$results" "$@"
if [ "${SHALLOWKERN_MAIN_VGG:-1}" != 0 ]; then
  echo
  echo "== LeNet and VGG-16 on one error-vs-FLOPs frontier (all trials in $results) =="
  shallowkern report --results "$results"
fi
