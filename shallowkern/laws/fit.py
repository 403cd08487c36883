"""Power-law fits of test error against width (or FLOPs/MACs).

Two models, both fitted to the per-x *mean* error ε̄_j over seeds:

* plain law ``ε = A·x^-ρ``: weighted linear least squares in log-log space,
  ``ln ε̄_j = ln A − ρ ln x_j``, with weights ``w_j = ε̄_j² / Var(ε̄_j)`` (delta method:
  ``Var(ln ε̄) ≈ Var(ε̄)/ε̄²``).
* law with a floor ``ε = A·x^-ρ + ε∞`` (ε∞ ≥ 0, A ≥ 0): weighted least squares in linear space,
  ``w_j = 1 / Var(ε̄_j)``, by variable projection — for fixed ρ the model is linear in (A, ε∞),
  so a grid over ρ solves a 2-variable non-negative least-squares problem per point, and the best
  grid point seeds a bounded ``scipy.optimize.least_squares`` refinement of all three.

``Var(ε̄_j) = max(s_j², ε̄_j(1−ε̄_j)/n_test) / n_j``: the seed variance floored at the binomial
noise of an n_test-image test set, so a width measured with a single seed still gets a weight.

x is rescaled by its geometric mean before fitting (FLOPs are ~1e9, so x^-ρ would otherwise
span many orders of magnitude and wreck the conditioning); A and the covariance are mapped back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, stats

from ._data import Grouped, parse_records

DEFAULT_RHO_BOUNDS = (1e-3, 5.0)
DEFAULT_N_GRID = 200


@dataclass(frozen=True, eq=False)
class PowerLawFit:
    """Result of :func:`fit_power_law`.

    ``residuals``, ``weights`` and ``r2`` live in the space that was fitted: ``ln ε`` for the
    plain law, ``ε`` for the law with a floor (see ``space``).  ``cov`` is the covariance of the
    parameters named in ``cov_names`` — ``(ln A, ρ)`` for the plain law, ``(A, ρ, ε∞)`` with a
    floor — computed with the weights taken as absolute inverse variances.
    """

    A: float
    rho: float
    eps_inf: float
    r2: float
    residuals: np.ndarray
    n_points: int  # distinct x values fitted
    n_obs: int  # individual (x, seed) records behind them
    weights: np.ndarray
    x: np.ndarray
    mean_error: np.ndarray
    var_mean: np.ndarray
    floor: bool
    weighted: bool
    x_label: str
    n_test: int
    cov: np.ndarray = field(repr=False)
    cov_names: tuple[str, ...] = field(repr=False)

    @property
    def space(self) -> str:
        return "linear" if self.floor else "log"

    @property
    def n_params(self) -> int:
        return 3 if self.floor else 2

    def predict(self, x: Any) -> Any:
        """Model error ``A·x^-ρ + ε∞`` at x (> 0); scalar in, float out."""
        xa = np.asarray(x, dtype=float)
        if np.any(~np.isfinite(xa)) or np.any(xa <= 0):
            raise ValueError(f"x ({self.x_label}) must be finite and > 0")
        out = self.A * xa ** (-self.rho) + self.eps_inf
        return float(out) if out.ndim == 0 else out

    def x_for_error(self, error: Any) -> Any:
        """Inverse model: the x at which the fitted law reaches ``error``.

        ``x = (A / (e − ε∞))^(1/ρ)``; ``inf`` where ``e ≤ ε∞`` (the floor is never crossed) and
        ``nan`` if the fit does not decrease (ρ ≤ 0 or A ≤ 0).
        """
        e = np.asarray(error, dtype=float)
        if np.any(~np.isfinite(e)) or np.any(e <= 0):
            raise ValueError("error must be finite and > 0")
        if self.rho <= 0 or self.A <= 0:
            out = np.full(e.shape, np.nan)
        else:
            gap = e - self.eps_inf
            with np.errstate(divide="ignore", invalid="ignore"):
                out = np.where(
                    gap > 0, (self.A / np.where(gap > 0, gap, 1.0)) ** (1 / self.rho), np.inf
                )
        return float(out) if out.ndim == 0 else out

    def chi2(self) -> float:
        """Σ_j (ε̄_j − model(x_j))² / Var(ε̄_j) in *linear* space.

        Unlike ``residuals`` this is comparable between the plain and the floor fit of the same
        data (use ``chi2() + 2·n_params`` as an AIC-style score).
        """
        return float(np.sum((self.mean_error - self.predict(self.x)) ** 2 / self.var_mean))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of every field (arrays become lists)."""
        return {
            "A": self.A,
            "rho": self.rho,
            "eps_inf": self.eps_inf,
            "r2": self.r2,
            "residuals": self.residuals.tolist(),
            "n_points": self.n_points,
            "n_obs": self.n_obs,
            "weights": self.weights.tolist(),
            "x": self.x.tolist(),
            "mean_error": self.mean_error.tolist(),
            "var_mean": self.var_mean.tolist(),
            "floor": self.floor,
            "space": self.space,
            "weighted": self.weighted,
            "x_label": self.x_label,
            "n_test": self.n_test,
            "cov": self.cov.tolist(),
            "cov_names": list(self.cov_names),
        }


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=float)
    a.setflags(write=False)
    return a


def _weighted_r2(y: np.ndarray, resid: np.ndarray, w: np.ndarray) -> float:
    ss_res = float(np.sum(w * resid**2))
    ss_tot = float(np.sum(w * (y - np.average(y, weights=w)) ** 2))
    if ss_tot <= 0.0:  # constant data: R² is undefined; call a perfect fit 1
        return 1.0 if ss_res <= 1e-300 else 0.0
    return 1.0 - ss_res / ss_tot


def _fit_loglog(x, mean, var_mean, weighted):
    """Weighted least squares of ln ε̄ = ln A − ρ ln x; returns (A, ρ, resid, w, r2, cov)."""
    log_xref = float(np.mean(np.log(x)))
    u = np.log(x) - log_xref  # centred: decorrelates intercept and slope
    y = np.log(mean)
    w = mean**2 / var_mean if weighted else np.ones_like(mean)
    X = np.column_stack([np.ones_like(u), -u])
    sw = np.sqrt(w)
    beta, *_ = np.linalg.lstsq(X * sw[:, None], y * sw, rcond=None)
    resid = y - X @ beta
    cov_c = np.linalg.inv(X.T @ (w[:, None] * X))
    # ln A = ln A_c + ρ·ln x_ref  ->  linear map of the centred covariance
    T = np.array([[1.0, log_xref], [0.0, 1.0]])
    log_a, rho = T @ beta
    return float(np.exp(log_a)), float(rho), resid, w, _weighted_r2(y, resid, w), T @ cov_c @ T.T


def _nnls2_grid(
    B: np.ndarray, y: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """min_{a,c ≥ 0} Σ w (y − a·b − c)² for every row b of B, vectorised over rows.

    The problem is a convex QP on the quadrant, so its minimum is the best *feasible* one of:
    the unconstrained stationary point, the minimum on each axis (a only / c only), and the
    origin.  Equivalent to ``scipy.optimize.nnls`` on ``[√w·b, √w]`` (checked in the tests), but
    one vectorised pass instead of one nnls call per grid point, which matters in the bootstrap.
    """
    sbb, sb1, s11 = (w * B * B).sum(1), (w * B).sum(1), w.sum()
    sby, s1y = (w * B * y).sum(1), (w * y).sum()
    det = sbb * s11 - sb1**2
    with np.errstate(divide="ignore", invalid="ignore"):
        a_free = np.where(det > 1e-12 * sbb * s11, (s11 * sby - sb1 * s1y) / det, -1.0)
        c_free = np.where(det > 1e-12 * sbb * s11, (sbb * s1y - sb1 * sby) / det, -1.0)
    free_ok = (a_free >= 0) & (c_free >= 0)
    G = B.shape[0]
    cands_a = np.stack(
        [np.where(free_ok, a_free, 0.0), np.maximum(sby / sbb, 0.0), np.zeros(G), np.zeros(G)]
    )
    cands_c = np.stack(
        [np.where(free_ok, c_free, 0.0), np.zeros(G), np.full(G, max(s1y / s11, 0.0)), np.zeros(G)]
    )
    # cost of every candidate, computed from residuals (no cancellation-prone expansion)
    resid = y[None, None, :] - cands_a[..., None] * B[None] - cands_c[..., None]
    cost = (w * resid**2).sum(-1)
    best = cost.argmin(0)
    idx = np.arange(G)
    return cands_a[best, idx], cands_c[best, idx], cost[best, idx]


def _fit_floor(x, mean, var_mean, weighted, rho_bounds, n_grid):
    """Variable projection for ε̄ = A·x^-ρ + ε∞; returns (A, ρ, ε∞, resid, w, r2, cov)."""
    lo, hi = rho_bounds
    log_xref = float(np.mean(np.log(x)))
    u = np.log(x) - log_xref
    y = mean
    w = 1.0 / var_mean if weighted else np.ones_like(mean)
    sw = np.sqrt(w)

    grid = np.linspace(lo, hi, n_grid)
    a_g, c_g, cost_g = _nnls2_grid(np.exp(-np.outer(grid, u)), y, w)
    g = int(np.argmin(cost_g))
    p0 = np.array([a_g[g], grid[g], c_g[g]])

    def resid_fn(p):
        return sw * (p[0] * np.exp(-p[1] * u) + p[2] - y)

    def jac_fn(p):
        b = np.exp(-p[1] * u)
        return sw[:, None] * np.column_stack([b, -p[0] * u * b, np.ones_like(u)])

    # Local refinement from the best grid point; keep the grid point if it is not improved on
    # (the grid solution is already a global optimum up to grid resolution).
    res = optimize.least_squares(
        resid_fn,
        p0,
        jac=jac_fn,
        bounds=([0.0, lo, 0.0], [np.inf, hi, np.inf]),
        method="trf",
        x_scale="jac",
        xtol=1e-12,
        ftol=1e-12,
        gtol=1e-12,
    )
    p = res.x if 2 * res.cost <= cost_g[g] else p0
    a_c, rho, eps_inf = (float(v) for v in p)
    r = resid_fn(p) / sw  # unweighted residuals in linear space
    J = jac_fn(p)
    cov_c = np.linalg.pinv(J.T @ J)
    A = a_c * np.exp(rho * log_xref)
    # A = A_c·x_ref^ρ: propagate to (A, ρ, ε∞)
    T = np.array([[np.exp(rho * log_xref), A * log_xref, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return A, rho, eps_inf, r, w, _weighted_r2(y, r, w), T @ cov_c @ T.T


def _check_fit_options(rho_bounds: tuple[float, float], n_grid: int) -> None:
    lo, hi = rho_bounds
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo < hi):
        raise ValueError(f"rho_bounds must be finite with 0 <= lo < hi, got {rho_bounds!r}")
    if int(n_grid) < 2:
        raise ValueError(f"n_grid must be >= 2, got {n_grid!r}")


def fit_grouped(
    g: Grouped,
    *,
    floor: bool = False,
    weighted: bool = True,
    x_label: str = "x",
    rho_bounds: tuple[float, float] = DEFAULT_RHO_BOUNDS,
    n_grid: int = DEFAULT_N_GRID,
    mean: np.ndarray | None = None,
    var_mean: np.ndarray | None = None,
) -> PowerLawFit:
    """Fit an already-validated :class:`Grouped`; ``mean``/``var_mean`` override its statistics
    (the bootstrap passes resampled ones without re-validating)."""
    mean = g.mean if mean is None else mean
    var_mean = g.var_mean if var_mean is None else var_mean
    if floor:
        A, rho, eps_inf, r, w, r2, cov = _fit_floor(
            g.x, mean, var_mean, weighted, rho_bounds, int(n_grid)
        )
        names: tuple[str, ...] = ("A", "rho", "eps_inf")
    else:
        A, rho, r, w, r2, cov = _fit_loglog(g.x, mean, var_mean, weighted)
        eps_inf, names = 0.0, ("log_A", "rho")
    return PowerLawFit(
        A=A,
        rho=rho,
        eps_inf=eps_inf,
        r2=r2,
        residuals=_frozen(r),
        n_points=int(g.x.size),
        n_obs=g.n_obs,
        weights=_frozen(w),
        x=_frozen(g.x),
        mean_error=_frozen(mean),
        var_mean=_frozen(var_mean),
        floor=bool(floor),
        weighted=bool(weighted),
        x_label=x_label,
        n_test=g.n_test,
        cov=_frozen(cov),
        cov_names=names,
    )


def fit_power_law(
    x: Any,
    err: Any = None,
    seeds: Any = None,
    *,
    floor: bool = False,
    n_test: int = 10000,
    weighted: bool = True,
    x_label: str = "x",
    rho_bounds: tuple[float, float] = DEFAULT_RHO_BOUNDS,
    n_grid: int = DEFAULT_N_GRID,
) -> PowerLawFit:
    """Fit ``ε = A·x^-ρ`` (or ``A·x^-ρ + ε∞`` with ``floor=True``) to per-seed test errors.

    Args:
        x: positive abscissa per record (width d, FLOPs, MACs, ...), or a list of dicts with keys
            ``x_label`` (or ``"x"``), ``"error"`` and optionally ``"seed"`` (then leave ``err``
            None).
        err: per-seed test error rates in (0, 1), same length as x.
        seeds: optional seed ids; only used to reject duplicated (x, seed) records.
        floor: fit the irreducible-error floor ε∞ ≥ 0 (needs ≥ 3 distinct x).
        n_test: test-set size for the binomial variance floor p(1−p)/n_test.
        weighted: inverse-variance weights (default) or unit weights.
        x_label: name of x, used in messages, dict keys and ``to_dict``.
        rho_bounds, n_grid: ρ search interval and grid size for the floor fit (ρ is bounded to
            keep the floor fit identifiable; the plain fit leaves ρ free).
    """
    _check_fit_options(rho_bounds, n_grid)
    g = parse_records(x, err, seeds, x_label=x_label, n_test=n_test, min_distinct=3 if floor else 2)
    return fit_grouped(
        g, floor=floor, weighted=weighted, x_label=x_label, rho_bounds=rho_bounds, n_grid=n_grid
    )


def fit_vs_width(width: Any, err: Any = None, seeds: Any = None, **kwargs: Any) -> PowerLawFit:
    """:func:`fit_power_law` with x = width d (dict key ``"width"``): ``ε = A·d^-ρ [+ ε∞]``."""
    return fit_power_law(width, err, seeds, x_label="width", **kwargs)


def fit_vs_flops(
    flops: Any, err: Any = None, seeds: Any = None, *, x_label: str = "flops", **kwargs: Any
) -> PowerLawFit:
    """:func:`fit_power_law` with x = FLOPs (or ``x_label="macs"``): ``ε = A·F^-ρ [+ ε∞]``."""
    return fit_power_law(flops, err, seeds, x_label=x_label, **kwargs)


def analytic_ci(
    fit: PowerLawFit, level: float = 0.95, *, absolute_sigma: bool | None = None
) -> dict[str, tuple[float, float]]:
    """Wald intervals for A, ρ, ε∞ from the fit's covariance (cheap alternative to bootstrap).

    ``absolute_sigma=True`` (default for weighted fits) trusts the weights as inverse variances:
    ``θ ± z·√C_θθ`` with ``C = (XᵀWX)⁻¹``.  ``False`` (forced for unweighted fits) rescales C by
    ``χ²/(n − p)`` and uses Student-t quantiles, which needs n > p points.  For the plain law the
    interval for ln A is exponentiated, so the A interval is asymmetric; with a floor, A and ε∞
    are clipped at 0.
    """
    _check_level(level)
    if absolute_sigma is None:
        absolute_sigma = fit.weighted
    cov = fit.cov
    if absolute_sigma and fit.weighted:
        q = stats.norm.ppf(0.5 + level / 2)
    else:
        dof = fit.n_points - fit.n_params
        if dof <= 0:
            raise ValueError(
                "absolute_sigma=False needs more points than parameters "
                f"({fit.n_points} <= {fit.n_params})"
            )
        cov = cov * float(np.sum(fit.weights * fit.residuals**2)) / dof
        q = stats.t.ppf(0.5 + level / 2, dof)
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    if fit.floor:
        half = dict(zip(("A", "rho", "eps_inf"), q * se))
        out = {
            "A": (max(fit.A - half["A"], 0.0), fit.A + half["A"]),
            "rho": (fit.rho - half["rho"], fit.rho + half["rho"]),
            "eps_inf": (max(fit.eps_inf - half["eps_inf"], 0.0), fit.eps_inf + half["eps_inf"]),
        }
        return {k: (float(lo), float(hi)) for k, (lo, hi) in out.items()}
    log_a = np.log(fit.A)
    return {
        "A": (float(np.exp(log_a - q * se[0])), float(np.exp(log_a + q * se[0]))),
        "rho": (float(fit.rho - q * se[1]), float(fit.rho + q * se[1])),
        "eps_inf": (0.0, 0.0),
    }


def _check_level(level: float) -> None:
    if not (isinstance(level, (float, int)) and 0 < level < 1):
        raise ValueError(f"level must be in (0, 1), got {level!r}")


__all__ = [
    "PowerLawFit",
    "analytic_ci",
    "fit_power_law",
    "fit_vs_flops",
    "fit_vs_width",
]
