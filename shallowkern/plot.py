"""Plots of sweep results (matplotlib, Agg backend: no display needed).

* ``plot_error_vs_width`` — per-seed errors and their means vs width on log-log axes, the fitted
  law, and its bootstrap confidence band (pointwise percentiles of the replicate laws).
* ``plot_error_vs_flops`` — mean error vs forward FLOPs per image for each family, with each
  family's Pareto frontier (``shallowkern.laws.pareto_frontier``).
* ``plot_k_scan`` — mean error vs the depth ratio k = d2/d1 at fixed d1, the fitted parabola in
  ln k (``shallowkern.laws.k_scan``) and the conservation-law optimum k = 2.8.

Each function writes ``<stem>.<fmt>`` for every format and returns the paths.
``make_plots(records, fit, out_dir)`` writes every plot a results file supports (what
``shallowkern plot`` and ``shallowkern run`` do).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["make_plots", "plot_error_vs_flops", "plot_error_vs_width", "plot_k_scan"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install matplotlib "
                          "(or pip install 'shallowkern[plot]')") from None
    matplotlib.use("Agg")  # before pyplot is imported: never try to open a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, stem: Path, formats: Sequence[str]) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(path, dpi=150, bbox_inches="tight")
        out.append(path)
    _pyplot().close(fig)
    return out


def _plain_log_ticks(ax, x: Sequence[float] | None, y: bool = True) -> None:
    """Readable ticks on log axes spanning less than a decade, where matplotlib would label only
    minor ticks in 10^x notation: x ticks at the data, ~5 y ticks with 2 significant digits."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:.3g}")
    if x is not None:
        ax.xaxis.set_major_locator(FixedLocator(sorted(set(float(v) for v in x))))
        ax.xaxis.set_major_formatter(fmt)
        ax.xaxis.set_minor_formatter(NullFormatter())
    if not y:
        return
    lo, hi = ax.get_ylim()
    ticks = sorted({float(f"{v:.2g}") for v in np.geomspace(lo, hi, 6)[1:-1]})
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(NullFormatter())


def _means(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    xu = np.unique(xa)
    mean = np.array([ya[xa == v].mean() for v in xu])
    std = np.array([ya[xa == v].std(ddof=1) if (xa == v).sum() > 1 else 0.0 for v in xu])
    return xu, mean, std


def plot_error_vs_width(width: Sequence[float], error: Sequence[float], boot: Any,
                        stem: str | Path, *, formats: Sequence[str] = ("png", "svg"),
                        xlabel: str = "d1", title: str = "", metric: str = "test_error"
                        ) -> list[Path]:
    """Error vs width, log-log, with the fit of ``boot`` (a ``laws.BootstrapCI``) and its band."""
    plt = _pyplot()
    fit = boot.fit
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter(width, error, s=12, color="0.6", label="seeds", zorder=2)
    xu, mean, std = _means(width, error)
    ax.errorbar(xu, mean, yerr=std, fmt="o", color="C0", capsize=3, label="mean ± std", zorder=3)
    lo_x, hi_x = xu.min(), xu.max()
    grid = np.geomspace(lo_x / 1.3, hi_x * 1.3, 100)
    s = boot.samples  # (n, 3): A, rho, eps_inf of each replicate
    curves = s[:, :1] * grid[None, :] ** (-s[:, 1:2]) + s[:, 2:3]
    lo, hi = np.quantile(curves, [(1 - boot.level) / 2, (1 + boot.level) / 2], axis=0)
    ax.fill_between(grid, lo, hi, color="C1", alpha=0.25,
                    label=f"{round(100 * boot.level)}% CI (bootstrap)")
    ci = boot.ci["rho"]
    label = (f"fit: {fit.A:.3g}·x^-{fit.rho:.3f}" + (f" + {fit.eps_inf:.3g}" if fit.floor else "")
             + f"\nρ = {fit.rho:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
    ax.plot(grid, fit.predict(grid), color="C1", label=label, zorder=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax, xu)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title or f"{metric.replace('_', ' ')} vs {xlabel}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(stem), formats)


def plot_error_vs_flops(records: list[dict[str, Any]], stem: str | Path, *,
                        formats: Sequence[str] = ("png", "svg"), metric: str = "test_error"
                        ) -> list[Path]:
    """Mean error vs FLOPs per image, one colour per ``family``, with its Pareto frontier.

    ``records``: dicts with ``family``, ``flops`` (forward, per image), ``error`` and ``seed``.
    """
    from .laws import pareto_frontier

    plt = _pyplot()
    front = pareto_frontier(records, x_key="flops")
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, fam in enumerate(front.per_family):
        rows = [r for r in records if r["family"] == fam]
        xu, mean, _ = _means([r["flops"] for r in rows], [r["error"] for r in rows])
        ax.scatter(xu, mean, color=f"C{i}", s=18, label=fam)
        pts = front.per_family[fam]
        # Staircase: with at least F FLOPs the best error reachable is that of the last
        # frontier point at or below F; extend it to the family's largest model.
        fx = [p.flops for p in pts] + [float(xu.max())]
        fy = [p.error for p in pts] + [pts[-1].error]
        ax.step(fx, fy, where="post", color=f"C{i}", alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax, None)
    ax.set_xlabel("forward FLOPs per image")
    ax.set_ylabel(f"mean {metric.replace('_', ' ')}")
    ax.set_title("error vs FLOPs (lines: Pareto frontier per family)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(stem), formats)


def plot_k_scan(scans: dict[int, list[tuple[float, float, Any]]], stem: str | Path, *,
                formats: Sequence[str] = ("png", "svg"), n_test: int = 10000,
                metric: str = "test_error") -> list[Path]:
    """Error vs k = d2/d1 for each d1 in ``scans`` ({d1: [(k, error, seed), ...]}, >= 3 k each),
    with the fitted parabola in ln k, its vertex k*, and the conservation optimum 2.8."""
    from .laws import k_scan, lenet_optimal_k

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, (d1, rows) in enumerate(sorted(scans.items())):
        k, err, seeds = zip(*rows)
        seeds_ok = None if any(s is None for s in seeds) else list(seeds)
        scan = k_scan(list(k), list(err), seeds_ok, n_test=n_test)
        ax.plot(scan.k, scan.mean_error, "o", color=f"C{i}", label=f"d1={d1}")
        grid = np.geomspace(scan.k.min(), scan.k.max(), 100)
        a, b, c = scan.coeffs
        ax.plot(grid, a * np.log(grid) ** 2 + b * np.log(grid) + c, color=f"C{i}", alpha=0.7)
        if scan.vertex_in_range:
            ax.axvline(scan.k_star, color=f"C{i}", ls=":", alpha=0.7)
    k_opt = lenet_optimal_k()
    ax.axvline(k_opt, color="k", ls="--", label=f"conservation k = {k_opt:.1f}")
    ax.set_xscale("log")
    _plain_log_ticks(ax, [k for rows in scans.values() for k, _, _ in rows], y=False)
    ax.set_xlabel("k = d2 / d1")
    ax.set_ylabel(f"mean {metric.replace('_', ' ')}")
    ax.set_title("conservation-law k-scan (dotted: fitted optimum)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(stem), formats)


def make_plots(records: Sequence[dict[str, Any]], fit: dict[str, Any], out_dir: str | Path, *,
               formats: Sequence[str] = ("png", "svg"), metric: str = "test_error",
               notes: list[str] | None = None) -> list[Path]:
    """Every plot the done ``records`` support, next to ``fit`` (``reports.compute_fit``):
    error vs width with the fit, error vs FLOPs per family series, and the k-scan where a
    family with a fit group (LeNet's k) was run at >= 3 values of it at one width. Only usable
    records (not diverged, finite error) are drawn. Returns the files written; why a plot was
    skipped is appended to ``notes``."""
    from .reports.records import errors, family_of, group_value, n_test, series_label, usable
    from .reports.records import value, x_of

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out-dir {out_dir} is a file, not a folder")
    formats = tuple(formats)
    written: list[Path] = []
    by_width, _, _, recs = fit["_objects"]
    written += plot_error_vs_width(
        [x_of(r, "width") for r in recs], errors(recs, metric), by_width,
        out_dir / "error_vs_width", formats=formats, xlabel=fit["x"], title=fit["selection"],
        metric=metric)
    ok = [r for r in usable(records, metric) if 0 < r[metric] < 1
          and isinstance(r.get("flops"), (int, float)) and r["flops"] > 0]
    groups: dict[str, set] = {}
    for r in ok:
        groups.setdefault(str(value(r, "family")), set()).add(group_value(r))
    written += plot_error_vs_flops(
        [{"family": series_label(r, len(groups[str(value(r, "family"))]) > 1),
          "flops": float(r["flops"]), "error": float(r[metric]), "seed": value(r, "seed")}
         for r in ok], out_dir / "error_vs_flops", formats=formats, metric=metric)
    scans: dict[int, list[tuple[float, float, Any]]] = {}
    for r in ok:
        fam = family_of(r)
        if fam is not None and fam.fit_group == "k" and group_value(r) is not None:
            scans.setdefault(int(value(r, fam.width_param)), []).append(
                (float(group_value(r)), float(r[metric]), value(r, "seed")))
    scans = {w: v for w, v in scans.items() if len({round(k, 3) for k, _, _ in v}) >= 3}
    if scans:
        written += plot_k_scan(scans, out_dir / "k_scan", formats=formats, n_test=n_test(ok),
                               metric=metric)
    elif notes is not None and any(getattr(family_of(r), "fit_group", None) == "k" for r in ok):
        notes.append("no k-scan plot (needs >= 3 values of k at one d1, e.g. the paper preset)")
    return written
