"""Stratified bootstrap confidence intervals and the held-out extrapolation check.

Resampling is *within* each x (stratified): the set of widths is a design choice, not a random
draw, so only the seeds at each width are resampled with replacement.  Each replicate recomputes
the per-x means and floored variances (hence the weights) and is refitted; percentile intervals
``[q_{(1−level)/2}, q_{(1+level)/2}]`` of the replicate parameters are reported.

A width measured with a single seed contributes no resampling variability (its mean is the same
in every replicate); with very few seeds per width the percentile bootstrap under-covers (the
bootstrap variance of a mean of n seeds is (n−1)/n of the usual estimate), so prefer ≥ 4 seeds.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._data import Grouped, parse_records
from .fit import (
    DEFAULT_N_GRID,
    DEFAULT_RHO_BOUNDS,
    PowerLawFit,
    _check_fit_options,
    _check_level,
    fit_grouped,
)

_PARAMS = ("A", "rho", "eps_inf")


@dataclass(frozen=True, eq=False)
class BootstrapCI:
    """Point fit on all data plus percentile intervals ``ci[name] = (lo, hi)`` for A, ρ, ε∞."""

    fit: PowerLawFit
    level: float
    ci: dict[str, tuple[float, float]]
    samples: np.ndarray  # (n_boot − n_failed, 3): A, rho, eps_inf of each replicate
    n_boot: int
    n_failed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "fit": self.fit.to_dict(),
            "level": self.level,
            "ci": {k: list(v) for k, v in self.ci.items()},
            "n_boot": self.n_boot,
            "n_failed": self.n_failed,
        }


@dataclass(frozen=True, eq=False)
class HoldoutResult:
    """Fit without the largest x, then predict it.

    ``rel_error = (predicted − observed) / observed``.  ``interval`` is a bootstrap *prediction*
    interval for the observed mean at ``x_held``: replicate predictions ``A_b·x^-ρ_b + ε∞_b``
    plus a normal draw with the held-out mean's variance (seed variance floored at binomial
    noise, over the number of seeds), so it covers the observation's own noise as well.
    """

    x_held: float
    observed: float
    predicted: float
    rel_error: float
    interval: tuple[float, float]
    in_interval: bool
    level: float
    fit: PowerLawFit
    n_boot: int
    n_failed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "x_held": self.x_held,
            "observed": self.observed,
            "predicted": self.predicted,
            "rel_error": self.rel_error,
            "interval": list(self.interval),
            "in_interval": self.in_interval,
            "level": self.level,
            "fit": self.fit.to_dict(),
            "n_boot": self.n_boot,
            "n_failed": self.n_failed,
        }


def _check_n_boot(n_boot: Any) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2, got {n_boot!r}")
    return int(n_boot)


def _replicate_params(
    g: Grouped, n_boot: int, rng: np.random.Generator, fit_kw: dict
) -> tuple[np.ndarray, int]:
    """(A, ρ, ε∞) of ``n_boot`` stratified resamples of ``g``; failed refits are dropped."""
    if all(s.size == 1 for s in g.samples):
        warnings.warn(
            "every x has a single seed: a seed bootstrap has no variability to resample and the "
            "interval collapses to the point fit",
            RuntimeWarning,
            stacklevel=3,
        )
    # Draw all replicates per stratum at once: (n_boot, n_j) resampled errors.
    means = np.empty((n_boot, g.x.size))
    var_mean = np.empty((n_boot, g.x.size))
    for j, s in enumerate(g.samples):
        r = s[rng.integers(0, s.size, size=(n_boot, s.size))]
        m = r.mean(axis=1)
        seed_var = r.var(axis=1, ddof=1) if s.size > 1 else np.zeros(n_boot)
        means[:, j] = m
        var_mean[:, j] = np.maximum(seed_var, m * (1 - m) / g.n_test) / s.size
    out, failed = [], 0
    for b in range(n_boot):
        try:
            f = fit_grouped(g, mean=means[b], var_mean=var_mean[b], **fit_kw)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            failed += 1
            continue
        if np.isfinite([f.A, f.rho, f.eps_inf]).all():
            out.append((f.A, f.rho, f.eps_inf))
        else:
            failed += 1
    if not out:
        raise RuntimeError("all bootstrap refits failed")
    return np.array(out), failed


def _percentile(a: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(a, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    x: Any,
    err: Any = None,
    seeds: Any = None,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    rng: int | np.random.Generator | None = None,
    floor: bool = False,
    n_test: int = 10000,
    weighted: bool = True,
    x_label: str = "x",
    rho_bounds: tuple[float, float] = DEFAULT_RHO_BOUNDS,
    n_grid: int = DEFAULT_N_GRID,
) -> BootstrapCI:
    """Percentile bootstrap CIs for (A, ρ, ε∞), resampling seeds within each x.

    Arguments as :func:`~shallowkern.laws.fit.fit_power_law`; ``rng`` is a seed or a
    ``numpy.random.Generator`` (pass one for reproducible intervals).
    """
    _check_level(level)
    n_boot = _check_n_boot(n_boot)
    _check_fit_options(rho_bounds, n_grid)
    g = parse_records(x, err, seeds, x_label=x_label, n_test=n_test, min_distinct=3 if floor else 2)
    fit_kw = dict(
        floor=floor, weighted=weighted, x_label=x_label, rho_bounds=rho_bounds, n_grid=n_grid
    )
    point = fit_grouped(g, **fit_kw)
    params, failed = _replicate_params(g, n_boot, np.random.default_rng(rng), fit_kw)
    ci = {name: _percentile(params[:, i], level) for i, name in enumerate(_PARAMS)}
    params.setflags(write=False)
    return BootstrapCI(point, float(level), ci, params, n_boot, failed)


def holdout_check(
    x: Any,
    err: Any = None,
    seeds: Any = None,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    rng: int | np.random.Generator | None = None,
    floor: bool = False,
    n_test: int = 10000,
    weighted: bool = True,
    x_label: str = "x",
    rho_bounds: tuple[float, float] = DEFAULT_RHO_BOUNDS,
    n_grid: int = DEFAULT_N_GRID,
) -> HoldoutResult:
    """Extrapolation test: fit on all but the largest x, predict the mean error there.

    Needs one more distinct x than the fit itself (3 for the plain law, 4 with a floor).
    """
    _check_level(level)
    n_boot = _check_n_boot(n_boot)
    _check_fit_options(rho_bounds, n_grid)
    need = 3 if floor else 2
    g_all = parse_records(x, err, seeds, x_label=x_label, n_test=n_test, min_distinct=need + 1)
    held = g_all.x.size - 1  # np.unique sorts, so the largest x is last
    g = Grouped(
        g_all.x[:held],
        g_all.samples[:held],
        g_all.mean[:held],
        g_all.var_mean[:held],
        g_all.n_test,
        g_all.n_obs - g_all.samples[held].size,
    )
    fit_kw = dict(
        floor=floor, weighted=weighted, x_label=x_label, rho_bounds=rho_bounds, n_grid=n_grid
    )
    fit = fit_grouped(g, **fit_kw)
    gen = np.random.default_rng(rng)
    params, failed = _replicate_params(g, n_boot, gen, fit_kw)
    x_h = float(g_all.x[held])
    pred_b = params[:, 0] * x_h ** (-params[:, 1]) + params[:, 2]
    pred_b = pred_b + gen.normal(0.0, np.sqrt(g_all.var_mean[held]), size=pred_b.size)
    lo, hi = _percentile(pred_b, level)
    observed, predicted = float(g_all.mean[held]), float(fit.predict(x_h))
    return HoldoutResult(
        x_held=x_h,
        observed=observed,
        predicted=predicted,
        rel_error=(predicted - observed) / observed,
        interval=(lo, hi),
        in_interval=bool(lo <= observed <= hi),
        level=float(level),
        fit=fit,
        n_boot=n_boot,
        n_failed=failed,
    )


__all__ = ["BootstrapCI", "HoldoutResult", "bootstrap_ci", "holdout_check"]
