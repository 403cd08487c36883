"""Trial functions and a sweep driver for the fault-injection and lease tests.

Run as ``python -m tests.sweep._fault_helpers RESULTS N_TRIALS WORKERS`` it is one sweep
driver (the process the tests SIGKILL). The trial functions live here, not in a test file,
because spawned workers unpickle them by name.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from shallowkern.sweep import TrialConfig, lenet_grid

from ._helpers import fake_record, fast_trial

# Seconds one fake trial takes: long enough that SIGKILLs land mid-trial and mid-append,
# short enough that a sweep of GRID_N trials ends in seconds on two busy cores.
TRIAL_S = 0.05


def grid(n: int) -> list[TrialConfig]:
    """``n`` distinct trials (d1 = 1..n, one seed)."""
    return lenet_grid(tuple(range(1, n + 1)), (2.8,), (0,), dataset="synthetic",
                      recipe="quick")


def sleepy_trial(config: dict[str, Any], data_root: str | None = None) -> dict[str, Any]:
    """``fast_trial`` after TRIAL_S seconds; records who ran it (pid, parent pid)."""
    time.sleep(TRIAL_S)
    rec = fast_trial(config)
    rec["ran_by"] = {"pid": os.getpid(), "ppid": os.getppid()}
    return rec


def diverging_trial(config: dict[str, Any], data_root: str | None = None) -> dict[str, Any]:
    """d1 == 8 diverges (NaN training loss from epoch 2 on, NaN errors); the rest are fine.

    With ``data_root`` naming a folder that holds a file ``healed``, nothing diverges (a
    retried trial after a fix)."""
    cfg = TrialConfig.from_dict(config)
    healed = data_root is not None and os.path.exists(os.path.join(data_root, "healed"))
    if cfg.d1 != 8 or healed:
        return fast_trial(config)
    nan = float("nan")
    return fake_record(cfg, nan, train_error=nan, val_error=float("inf"), diverged=True,
                       history=[{"epoch": 1, "train_loss": 2.3},
                                {"epoch": 2, "train_loss": nan},
                                {"epoch": 3, "train_loss": float("inf")}])


def main(argv: list[str]) -> int:
    from shallowkern.sweep import run_sweep

    results, n, workers = argv[0], int(argv[1]), int(argv[2])
    summary = run_sweep(grid(n), results, workers=workers, trial_fn=sleepy_trial,
                        progress=False)
    print(summary.describe(), flush=True)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
