"""The conservation law of Meir et al. (2023) and a scan over the depth ratio k = d2/d1.

The law says the quantity ``q_i = √(H_i·W_i) · depth_i`` (linear size of the output feature
map times the number of filters) should be the same for every conv layer.  For a LeNet-5 on
32×32 inputs, conv1 (5×5, valid) outputs 28×28 maps and conv2 (after 2×2 pooling, 5×5 valid)
outputs 10×10 maps, so ``28·d1 = 10·d2`` and the conserving ratio is ``k = d2/d1 = 28/10 = 2.8``
(the classic 6/16 LeNet has k = 2.67: q = 168 vs 160, a 4.8 % deviation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._data import parse_records


@dataclass(frozen=True, eq=False)
class ConservationAudit:
    """Per-layer ``q = √(H·W)·depth``, ``ratios = q / q[0]``, ``max_rel_dev = max |ratio − 1|``
    and ``conserving_ratio[i] = √(H_0·W_0) / √(H_i·W_i)`` — the depth_i/depth_0 that would make
    layer i conserve q (for LeNet's conv2 this is the optimal k = 2.8)."""

    names: tuple[str, ...]
    H: np.ndarray
    W: np.ndarray
    depth: np.ndarray
    q: np.ndarray
    ratios: np.ndarray
    max_rel_dev: float
    conserving_ratio: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "H": self.H.tolist(),
            "W": self.W.tolist(),
            "depth": self.depth.tolist(),
            "q": self.q.tolist(),
            "ratios": self.ratios.tolist(),
            "max_rel_dev": self.max_rel_dev,
            "conserving_ratio": self.conserving_ratio.tolist(),
        }


def conservation_audit(layers: Sequence[Any]) -> ConservationAudit:
    """Audit ``q = √(H·W)·depth`` over conv layers.

    ``layers``: sequence of ``(name, H, W, depth)`` tuples or dicts with those keys, in network
    order (ratios are relative to the first).
    """
    if not isinstance(layers, Sequence) or isinstance(layers, str) or len(layers) == 0:
        raise ValueError("layers must be a non-empty sequence of (name, H, W, depth)")
    rows = []
    for i, layer in enumerate(layers):
        if isinstance(layer, Mapping):
            try:
                rows.append((layer["name"], layer["H"], layer["W"], layer["depth"]))
            except KeyError as exc:
                raise ValueError(f"layers[{i}] is missing key {exc}") from None
        elif isinstance(layer, Sequence) and len(layer) == 4:
            rows.append(tuple(layer))
        else:
            raise ValueError(f"layers[{i}] must be (name, H, W, depth), got {layer!r}")
    names = tuple(str(r[0]) for r in rows)
    try:
        H, W, depth = (np.array([r[k] for r in rows], dtype=float) for k in (1, 2, 3))
    except (TypeError, ValueError):
        raise ValueError("layers: H, W and depth must be numbers") from None
    for arr, nm in ((H, "H"), (W, "W"), (depth, "depth")):
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"layers: {nm} must be finite and > 0")
    side = np.sqrt(H * W)
    q = side * depth
    ratios = q / q[0]
    return ConservationAudit(
        names, H, W, depth, q, ratios, float(np.max(np.abs(ratios - 1.0))), side[0] / side
    )


def _conv_out(n: int, kernel: int) -> int:
    return n - kernel + 1


def lenet_layers(
    d1: float,
    k: float | None = None,
    *,
    d2: float | None = None,
    input_size: int = 32,
    kernel: int = 5,
    pool: int = 2,
) -> list[tuple[str, int, int, float]]:
    """The two conv layers of a generalized LeNet-5: ``[(conv1, 28, 28, d1), (conv2, 10, 10, d2)]``
    for 32×32 inputs, 5×5 valid convolutions and 2×2 pooling.

    Give either ``k`` (then d2 = k·d1) or ``d2``.
    """
    if (k is None) == (d2 is None):
        raise ValueError("give exactly one of k and d2")
    if not d1 > 0:
        raise ValueError(f"d1 must be > 0, got {d1!r}")
    if d2 is None:
        if not k > 0:
            raise ValueError(f"k must be > 0, got {k!r}")
        d2 = k * d1
    m1 = _conv_out(input_size, kernel)
    m2 = _conv_out(m1 // pool, kernel)
    if m2 <= 0:
        raise ValueError(f"input_size={input_size} too small for two {kernel}x{kernel} convs")
    return [("conv1", m1, m1, d1), ("conv2", m2, m2, d2)]


def lenet_optimal_k(input_size: int = 32, kernel: int = 5, pool: int = 2) -> float:
    """k = d2/d1 that conserves q in a LeNet: √(map1)/√(map2) = 28/10 = 2.8 for CIFAR-10."""
    layers = lenet_layers(1.0, 1.0, input_size=input_size, kernel=kernel, pool=pool)
    return float(conservation_audit(layers).conserving_ratio[1])


@dataclass(frozen=True, eq=False)
class KScan:
    """Errors at several k for a fixed d1.

    ``best_k`` is the measured k with the lowest mean error; ``k_star = exp(−b/2a)`` is the vertex
    of the weighted parabola ``ε ≈ a·(ln k)² + b·ln k + c`` (``nan`` if it is not convex, a ≤ 0),
    ``vertex_in_range`` says whether it lies inside the scanned k.
    """

    k: np.ndarray
    mean_error: np.ndarray
    best_k: float
    k_star: float
    coeffs: tuple[float, float, float]
    vertex_in_range: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k.tolist(),
            "mean_error": self.mean_error.tolist(),
            "best_k": self.best_k,
            "k_star": self.k_star,
            "coeffs": list(self.coeffs),
            "vertex_in_range": self.vertex_in_range,
        }


def k_scan(k: Any, err: Any = None, seeds: Any = None, *, n_test: int = 10000) -> KScan:
    """Find the best depth ratio k = d2/d1 from errors measured at several k (fixed d1).

    ``k``/``err``/``seeds`` follow :func:`~shallowkern.laws.fit.fit_power_law` (dict key
    ``"k"``); at least 3 distinct k are needed for the parabola.  Weights are 1/σ of each mean
    (seed variance floored at binomial noise), as in the power-law fits.
    """
    g = parse_records(k, err, seeds, x_label="k", n_test=n_test, min_distinct=3)
    L = np.log(g.x)
    a, b, c = np.polyfit(L, g.mean, 2, w=1.0 / np.sqrt(g.var_mean))
    k_star = float(np.exp(-b / (2 * a))) if a > 0 else float("nan")
    return KScan(
        k=g.x,
        mean_error=g.mean,
        best_k=float(g.x[np.argmin(g.mean)]),
        k_star=k_star,
        coeffs=(float(a), float(b), float(c)),
        vertex_in_range=bool(np.isfinite(k_star) and g.x[0] <= k_star <= g.x[-1]),
    )


__all__ = [
    "ConservationAudit",
    "KScan",
    "conservation_audit",
    "k_scan",
    "lenet_layers",
    "lenet_optimal_k",
]
