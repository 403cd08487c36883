"""Pareto frontier of test error vs FLOPs across model families, and FLOPs-to-reach-error.

A point (F, ε) *dominates* (F', ε') when F ≤ F' and ε ≤ ε' with at least one strict — fewer
operations and lower error are both better.  The frontier is the set of non-dominated points,
listed by increasing FLOPs (hence strictly decreasing error).

"FLOPs needed to reach error e" is read off a family's frontier by linear interpolation in
(ln ε, ln F) — the natural coordinates if ε ∝ F^-ρ locally — or from its power-law fit,
``F(e) = (A / (e − ε∞))^(1/ρ)``.  The ratio of two families at the same e (e.g. VGG-16 vs a
wide LeNet, Meir et al. 2023) is the operations-per-error comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .fit import fit_vs_flops


@dataclass(frozen=True)
class FrontierPoint:
    family: str
    flops: float
    error: float


@dataclass(frozen=True, eq=False)
class ParetoFrontier:
    """Non-dominated points per family and over all families, each sorted by FLOPs."""

    per_family: dict[str, tuple[FrontierPoint, ...]]
    overall: tuple[FrontierPoint, ...]

    def to_dict(self) -> dict[str, Any]:
        as_list = lambda pts: [[p.family, p.flops, p.error] for p in pts]  # noqa: E731
        return {
            "per_family": {k: as_list(v) for k, v in self.per_family.items()},
            "overall": as_list(self.overall),
        }


def _columns(
    records: Any, x_key: str
) -> tuple[list[str], np.ndarray, np.ndarray, list[Any] | None]:
    """(family, flops, error, seed) columns from a list of dicts or a dict of columns."""
    if isinstance(records, Mapping):
        cols = records
        missing = [k for k in ("family", x_key, "error") if k not in cols]
        if missing:
            raise ValueError(f"records has no column(s) {missing}")
        fam, fl, er, sd = cols["family"], cols[x_key], cols["error"], cols.get("seed")
    else:
        if not isinstance(records, (list, tuple)) or not all(
            isinstance(r, Mapping) for r in records
        ):
            raise ValueError("records must be a list of dicts or a dict of columns")
        for i, r in enumerate(records):
            missing = [k for k in ("family", x_key, "error") if k not in r]
            if missing:
                raise ValueError(f"records[{i}] has no key(s) {missing}")
        fam = [r["family"] for r in records]
        fl = [r[x_key] for r in records]
        er = [r["error"] for r in records]
        sd = [r["seed"] for r in records] if records and all("seed" in r for r in records) else None
    fam = [str(f) for f in fam]
    fl_a, er_a = np.asarray(fl, dtype=float), np.asarray(er, dtype=float)
    if len(fam) == 0:
        raise ValueError("records is empty: need at least one result")
    if not (len(fam) == fl_a.size == er_a.size) or fl_a.ndim != 1 or er_a.ndim != 1:
        raise ValueError(f"records: 'family', {x_key!r} and 'error' have mismatched lengths")
    if not np.all(np.isfinite(fl_a)) or np.any(fl_a <= 0):
        raise ValueError(f"records[{x_key!r}] must be finite and > 0")
    if not np.all(np.isfinite(er_a)) or np.any(er_a <= 0) or np.any(er_a >= 1):
        raise ValueError("records['error'] must be error rates in (0, 1)")
    return fam, fl_a, er_a, (list(sd) if sd is not None else None)


def _aggregate(fam: list[str], fl: np.ndarray, er: np.ndarray) -> list[tuple[str, float, float]]:
    """Mean error per (family, flops): seeds of one configuration are one point."""
    acc: dict[tuple[str, float], list[float]] = {}
    for f, x, e in zip(fam, fl.tolist(), er.tolist()):
        acc.setdefault((f, x), []).append(e)
    return [(f, x, float(np.mean(v))) for (f, x), v in acc.items()]


def _sweep(points: list[tuple[str, float, float]]) -> tuple[FrontierPoint, ...]:
    """Non-dominated subset: sort by (flops, error), keep each point that lowers the best error.

    A point with equal FLOPs but higher error, or more FLOPs and no lower error, is dominated;
    exact duplicates keep only the first.
    """
    out, best = [], np.inf
    for f, x, e in sorted(points, key=lambda p: (p[1], p[2])):
        if e < best:
            out.append(FrontierPoint(f, x, e))
            best = e
    return tuple(out)


def pareto_frontier(
    records: Any, *, x_key: str = "flops", aggregate: bool = True
) -> ParetoFrontier:
    """Non-dominated (FLOPs, error) points per family and overall.

    Args:
        records: list of dicts with keys ``family``, ``x_key`` and ``error`` (optional ``seed``),
            or a dict of equal-length columns with those keys.
        x_key: cost column, ``"flops"`` or e.g. ``"macs"``.
        aggregate: average the errors of records sharing (family, cost) — several seeds of one
            configuration — before computing dominance (otherwise each seed is its own point).
    """
    fam, fl, er, _ = _columns(records, x_key)
    pts = _aggregate(fam, fl, er) if aggregate else list(zip(fam, fl.tolist(), er.tolist()))
    families = list(dict.fromkeys(fam))
    per_family = {f: _sweep([p for p in pts if p[0] == f]) for f in families}
    return ParetoFrontier(per_family, _sweep(pts))


def _interp_frontier(pts: tuple[FrontierPoint, ...], error: float, extrapolate: bool) -> float:
    """ln F as a piecewise-linear function of ln ε along the frontier."""
    le = np.log([p.error for p in pts])[::-1]  # increasing
    lf = np.log([p.flops for p in pts])[::-1]
    t = np.log(error)
    if le[0] <= t <= le[-1]:
        return float(np.exp(np.interp(t, le, lf)))
    if not extrapolate or le.size < 2:
        return float("nan")
    i = (0, 1) if t < le[0] else (-2, -1)  # extend the end segment
    slope = (lf[i[1]] - lf[i[0]]) / (le[i[1]] - le[i[0]])
    return float(np.exp(lf[i[0]] + slope * (t - le[i[0]])))


def flops_to_reach(
    records: Any,
    error: float,
    *,
    method: str = "frontier",
    x_key: str = "flops",
    extrapolate: bool = False,
    aggregate: bool = True,
    floor: bool = False,
    n_test: int = 10000,
) -> dict[str, float]:
    """FLOPs each family needs to reach test error ``error``.

    ``method="frontier"``: log-log interpolation along the family's Pareto frontier; ``nan`` if
    ``error`` lies outside the frontier's error range unless ``extrapolate=True`` (then the end
    segment is extended); ``aggregate`` as in :func:`pareto_frontier`.

    ``method="fit"``: invert a power-law fit ``ε = A·F^-ρ [+ ε∞]`` (``floor``) to all of the
    family's records (seeds give the weights); ``inf`` if ``error`` is below the floor.
    """
    if not (np.isfinite(error) and 0 < error < 1):
        raise ValueError(f"error must be a target error rate in (0, 1), got {error!r}")
    if method == "frontier":
        front = pareto_frontier(records, x_key=x_key, aggregate=aggregate)
        return {f: _interp_frontier(pts, error, extrapolate) for f, pts in front.per_family.items()}
    if method == "fit":
        fam, fl, er, sd = _columns(records, x_key)
        fam_a = np.array(fam)
        out = {}
        for f in dict.fromkeys(fam):
            m = fam_a == f
            seeds = None if sd is None else [s for s, keep in zip(sd, m) if keep]
            try:
                fit = fit_vs_flops(fl[m], er[m], seeds, floor=floor, n_test=n_test, x_label=x_key)
            except ValueError as exc:
                raise ValueError(f"family {f!r}: {exc}") from None
            out[f] = fit.x_for_error(error)
        return out
    raise ValueError(f"method must be 'frontier' or 'fit', got {method!r}")


def ops_ratio(records: Any, error: float, numerator: str, denominator: str, **kwargs: Any) -> float:
    """``flops_to_reach[numerator] / flops_to_reach[denominator]`` at the same error, e.g. how
    many times more operations VGG-16 needs than a wide LeNet for error ``error``."""
    need = flops_to_reach(records, error, **kwargs)
    for name, arg in ((numerator, "numerator"), (denominator, "denominator")):
        if name not in need:
            raise ValueError(f"{arg}: unknown family {name!r}; have {sorted(need)}")
    return need[numerator] / need[denominator]


__all__ = ["FrontierPoint", "ParetoFrontier", "flops_to_reach", "ops_ratio", "pareto_frontier"]
