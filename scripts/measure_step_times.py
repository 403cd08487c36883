"""Measure one training step (batch 100, the lab optimiser, synthetic CIFAR-sized data) of every
network of a sweep preset, one thread, and print the table ``shallowkern.sweep.presets.
MEASURED_STEP_MS`` holds (what ``sweep --dry-run`` turns into a time estimate).

    OMP_NUM_THREADS=1 python scripts/measure_step_times.py [--preset study] [--steps 8]

Run it on an otherwise idle machine (the study's machine: one sweep worker = one thread); the
median of ``--steps`` timed steps after three warm-up steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # scripts/_repro.py
from _repro import call_times  # noqa: E402


def step_ms(cfg, steps: int) -> float:
    model = cfg.family_spec.build_model(cfg.params, in_channels=3, input_size=32, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    x, y = torch.randn(100, 3, 32, 32), torch.randint(0, 10, (100,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return statistics.median(call_times(step, steps, warmup=3)) * 1e3


def main() -> None:
    from shallowkern.sweep.presets import get_preset, step_key

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="study")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    seen: dict[str, float] = {}
    for cfg in get_preset(args.preset):
        key = step_key(cfg)
        if key not in seen:
            seen[key] = step_ms(cfg, args.steps)
            print(f"    {key!r}: {seen[key]:.1f},", flush=True)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
          f"load average {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
