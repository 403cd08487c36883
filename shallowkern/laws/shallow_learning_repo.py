"""What github.com/sleepingcat4/Shallow-learning actually computes, reproduced and corrected.

Its ``law-le.py`` (commit c881a434) prints for LeNet-5::

    Power Law for LeNet-5: d2/d1 = 10.0 , constant = -0.9242792860618816
    Conservation law for LeNet-5: depthi × mi = 232.08061813867866

from the lists (``width`` is the flattened layer size H·W·C, not a filter count)::

    lenet5_depth = [1, 6, 6, 16, 16, 120, 84, 10]
    lenet5_width = [32*32*3, 28*28*6, 14*14*6, 10*10*16, 5*5*16, 120, 84, 10]

* "power law constant" = ``log(w[-1]/w[-2]) / log(d[-1]/d[0]) = log(10/84) / log(10/1)
  = log10(10/84) = −0.924`` — the ratio of the last two FC widths; no error rate enters, so it is
  not the ρ of ε = A·d^-ρ (fit that with :func:`shallowkern.laws.fit_vs_width`).
* "conservation law" = ``np.prod(np.array(depth) * np.array(width)) ** (1/8)``.  The products
  depth_i·width_i are 3072, 28224, 7056, 25600, 6400, 14400, 7056, 100, whose exact product is
  1.018449e30 > 2^63 ≈ 9.22e18; numpy's int64 ``prod`` wraps silently (it overflows at the fifth
  factor) to 8416101803648614400 = exact mod 2^64, and 8416101803648614400^(1/8) = 232.08.  The
  intended geometric mean is exp(mean(ln(depth_i·width_i))) = 5636.28.  Even that is not the
  paper's invariant: width already contains the depth (C), so depth·width = depth²·H·W, and it
  mixes conv, pooling and FC layers.  The paper's ``√(H·W)·depth`` over the two conv layers is
  28·6 = 168 and 10·16 = 160 (see :func:`shallowkern.laws.conservation_audit`).

``law-custom.py`` has the same bugs: its product wraps to exactly 0 (the factors contain ≥ 64
factors of two), so it prints 0.0 where the geometric mean is 256954.87, and its "constant" is
log10(10/2048) = −2.311.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .conservation import conservation_audit

# Verbatim inputs of law-le.py / law-custom.py (the latter uses depth[:-1], width[:-1]).
LENET5_DEPTH: tuple[int, ...] = (1, 6, 6, 16, 16, 120, 84, 10)
LENET5_WIDTH: tuple[int, ...] = (
    32 * 32 * 3,
    28 * 28 * 6,
    14 * 14 * 6,
    10 * 10 * 16,
    5 * 5 * 16,
    120,
    84,
    10,
)
CUSTOM_DEPTH: tuple[int, ...] = (1, 32, 32, 64, 64, 128, 128, 10)
CUSTOM_WIDTH: tuple[int, ...] = (
    32 * 32 * 3,
    30 * 30 * 32,
    28 * 28 * 32,
    14 * 14 * 64,
    12 * 12 * 64,
    4 * 4 * 128,
    2048,
    10,
)


def _check(depth: Sequence[int], width: Sequence[int]) -> None:
    if len(depth) == 0 or len(depth) != len(width):
        raise ValueError(
            f"depth and width must be non-empty and of equal length ({len(depth)} != {len(width)})"
        )
    if any(int(v) != v or v <= 0 for v in (*depth, *width)):
        raise ValueError("depth and width must be positive integers")


def repo_power_law_constant(
    depth: Sequence[int] = LENET5_DEPTH, width: Sequence[int] = LENET5_WIDTH
) -> float:
    """The repo's "power law constant" ``log(w[-1]/w[-2]) / log(d[-1]/d[0])`` (LeNet-5: −0.924)."""
    _check(depth, width)
    return math.log(width[-1] / width[-2]) / math.log(depth[-1] / depth[0])


def int64_wrap(n: int) -> int:
    """Two's-complement int64 wrap-around of an exact integer: ``((n + 2^63) mod 2^64) − 2^63``."""
    return (n + 2**63) % 2**64 - 2**63


def repo_conservation_buggy(
    depth: Sequence[int] = LENET5_DEPTH, width: Sequence[int] = LENET5_WIDTH
) -> float:
    """The repo's arithmetic verbatim, with numpy int64 as on Linux/macOS:
    ``np.prod(depth * width) ** (1/n)``, whose int64 product silently wraps (232.08 for LeNet-5).
    ``nan`` if the wrapped product is negative (numpy's float power of a negative base)."""
    _check(depth, width)
    prod = np.prod(np.array(depth, dtype=np.int64) * np.array(width, dtype=np.int64))
    with np.errstate(invalid="ignore"):
        return float(prod ** (1 / len(depth)))


def repo_conservation_correct(
    depth: Sequence[int] = LENET5_DEPTH, width: Sequence[int] = LENET5_WIDTH
) -> float:
    """The intended value, the geometric mean ``exp(mean(ln(depth_i·width_i)))``: 5636.28 for
    LeNet-5."""
    _check(depth, width)
    return math.exp(math.fsum(math.log(d * w) for d, w in zip(depth, width)) / len(depth))


def sleepingcat4_report() -> dict[str, Any]:
    """The repo's printed quantities next to the correct ones, for LeNet-5 and the custom model."""
    out: dict[str, Any] = {}
    for name, depth, width in (
        ("lenet5", LENET5_DEPTH, LENET5_WIDTH),
        ("custom", CUSTOM_DEPTH[:-1], CUSTOM_WIDTH[:-1]),  # law-custom.py drops the last layer
    ):
        exact = math.prod(d * w for d, w in zip(depth, width))
        out[name] = {
            "depth": list(depth),
            "width": list(width),
            "products": [d * w for d, w in zip(depth, width)],
            "exact_product": exact,
            "int64_product": int64_wrap(exact),
            "conservation_buggy": repo_conservation_buggy(depth, width),
            "conservation_correct": repo_conservation_correct(depth, width),
        }
    out["lenet5"]["power_law_constant"] = repo_power_law_constant(LENET5_DEPTH, LENET5_WIDTH)
    out["custom"]["power_law_constant"] = repo_power_law_constant(CUSTOM_DEPTH, CUSTOM_WIDTH)
    # The paper's invariant on the repo's LeNet-5 conv layers (6 and 16 filters).
    out["lenet5"]["paper_q"] = conservation_audit(
        [("conv1", 28, 28, 6), ("conv2", 10, 10, 16)]
    ).q.tolist()
    return out


__all__ = [
    "CUSTOM_DEPTH",
    "CUSTOM_WIDTH",
    "LENET5_DEPTH",
    "LENET5_WIDTH",
    "int64_wrap",
    "repo_conservation_buggy",
    "repo_conservation_correct",
    "repo_power_law_constant",
    "sleepingcat4_report",
]
