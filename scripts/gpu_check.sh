#!/usr/bin/env bash
# The GPU device check (issue 13): one call of about 7 minutes on a bare H200, at most 4 files back.
#   bash scripts/gpu_check.sh OUT                   # first call: env, roofline, Triton GPU tests
#                                                   # (background), build, CUDA tests, op checks,
#                                                   # memcheck, benchmark slice, [racecheck, ncu]
#   bash scripts/gpu_check.sh OUT --plan followup   # second call: tuned benchmarks, training
#   bash scripts/gpu_check.sh OUT --list            # the plan, caps and budget
#   bash scripts/gpu_check.sh OUT --dry-run         # no GPU: exercise the check's own logic
# OUT gets summary.txt (read first; written as it goes), results.json, rows.jsonl and
# gpu_check.tar.gz (all logs). See scripts/gpu_check/check.py for the budget rules.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/gpu_check/check.py" "$@"
