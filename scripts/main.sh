#!/usr/bin/env bash
# The README's main command: set up, then run the main job (a quick CIFAR-10 sweep of
# generalized LeNets on CPU, the fitted power law with its CI, the profile table and plots).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
# shellcheck disable=SC1091
source scripts/setup.sh
export SHALLOWKERN_DATA="${SHALLOWKERN_DATA:-$(cd "$here/.." && pwd)/shared/datasets}"
shallowkern run "$@"
