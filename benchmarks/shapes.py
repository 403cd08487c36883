"""Benchmark shapes, all from the real models (CONVENTIONS.md §6): one data file for every bench.

Generalized LeNet-5 on 32x32x3 (Meir et al. 2023): conv1 (3 -> d1, 5x5, 32x32 -> 28x28 -> pool
14x14), conv2 (d1 -> d2 = k*d1, 5x5, 14x14 -> 10x10 -> pool 5x5).
"""

from __future__ import annotations

BATCHES = (128, 512)
CONV1_D1 = (6, 64, 256, 1024, 2048)
CONV2_GRID = tuple((d1, round(k * d1)) for d1 in (16, 64, 256, 512) for k in (2.0, 2.8, 4.0))

# CPU (2 cores here): the sizes the CPU target names (d1 >= 64), at a batch that keeps
# a run to seconds.
CPU_BATCH = 32
CPU_CONV1_D1 = (6, 64, 256)
CPU_CONV2_GRID = ((16, 45), (64, 179), (256, 717))  # 717: the compute-bound (vendor conv) side

LENET_TRAIN_D1 = (64, 512)


def conv1(n: int, d1: int) -> dict:
    return dict(name=f"conv1_n{n}_d{d1}", n=n, c=3, hw=32, k=d1, r=5)


def conv2(n: int, d1: int, d2: int) -> dict:
    return dict(name=f"conv2_n{n}_d{d1}x{d2}", n=n, c=d1, hw=14, k=d2, r=5)


def gpu_shapes() -> list[dict]:
    return [conv1(n, d) for n in BATCHES for d in CONV1_D1] + \
           [conv2(n, a, b) for n in BATCHES for a, b in CONV2_GRID]


def cpu_shapes() -> list[dict]:
    return [conv1(CPU_BATCH, d) for d in CPU_CONV1_D1] + \
           [conv2(CPU_BATCH, a, b) for a, b in CPU_CONV2_GRID]
