"""Power-law fits of sweep records: error vs width (seed bootstrap CI, held-out check) and vs
forward FLOPs per image, on the usable records of one family / dataset / fit group / impl."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..models.registry import get_family
from .records import ReportError, errors, n_test, select, usable, value, x_of

__all__ = ["compute_fit", "describe_fit", "write_json"]


def compute_fit(records: Sequence[dict[str, Any]], *, family: str = "lenet",
                dataset: str | None = None, group: Any = None, impl: str = "shallowkern",
                metric: str = "test_error", floor: bool = False, n_boot: int = 1000,
                level: float = 0.95, source: str = "") -> dict[str, Any]:
    """Fit ``metric = A * width^-rho (+ eps_inf)`` and the same law vs FLOPs.

    ``records`` are done records (``load_records``); diverged and invalid ones are left out
    here (``usable``), never averaged. Returns a JSON-ready dict (keys starting with ``_`` hold
    the fit objects for ``describe_fit`` and plots).
    """
    from ..laws import bootstrap_ci, holdout_check

    fam = get_family(family)
    ok = usable(records, metric)
    if not ok:
        raise ReportError(f"no record has a usable {metric!r} (all diverged or invalid)")
    recs, desc = select(ok, fam.name, dataset=dataset, group=group, impl=impl)
    err = errors(recs, metric)
    seeds = [int(value(r, "seed") or 0) for r in recs]
    width = [x_of(r, "width") for r in recs]
    flops = [x_of(r, "flops") for r in recs]
    kw = dict(n_boot=n_boot, level=level, rng=0, floor=floor, n_test=n_test(recs))
    distinct = len(set(width))
    need = 3 if floor else 2
    if distinct < need:
        raise ReportError(f"{desc}: {distinct} distinct width(s) {sorted(set(width))}; a "
                          f"power-law fit{' with a floor' if floor else ''} needs at least "
                          f"{need}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # single-seed widths: noted below
            by_width = bootstrap_ci(width, err, seeds, x_label="width", **kw)
            by_flops = bootstrap_ci(flops, err, seeds, x_label="flops", **kw)
            holdout = (holdout_check(width, err, seeds, x_label="width", **kw)
                       if distinct > need else None)
    except ValueError as exc:
        raise ReportError(f"{desc}: {exc}") from None
    skipped = len([r for r in records if value(r, "family") == fam.name]) - len(
        [r for r in ok if value(r, "family") == fam.name])
    return {
        "results": source, "selection": desc, "family": fam.name, "metric": metric,
        "x": fam.x_label, "n_records": len(recs), "n_unusable": skipped,
        "widths": sorted(set(width)), "seeds_per_width": min(width.count(w) for w in set(width)),
        "width_fit": by_width.to_dict(), "flops_fit": by_flops.to_dict(),
        "holdout": holdout.to_dict() if holdout else None,
        "_objects": (by_width, by_flops, holdout, recs),
    }


def describe_fit(fit: dict[str, Any]) -> str:
    """The fit as the lines ``shallowkern fit`` prints."""
    bw, bf, ho, _ = fit["_objects"]
    pct = round(100 * bw.level)
    xn = fit["x"]
    f = bw.fit
    law = f"{fit['metric']} = A * {xn}^-rho" + (" + eps_inf" if f.floor else "")
    lines = [
        f"{fit['selection']}: {fit['n_records']} trials, {len(fit['widths'])} widths "
        f"({', '.join(f'{w:g}' for w in fit['widths'])}), >= {fit['seeds_per_width']} seed(s) each",
        f"  {law}",
        f"    rho = {f.rho:.3f}  [{bw.ci['rho'][0]:.3f}, {bw.ci['rho'][1]:.3f}] {pct}% CI "
        f"(bootstrap over seeds, {bw.n_boot} resamples)",
        f"    A   = {f.A:.3g}  [{bw.ci['A'][0]:.3g}, {bw.ci['A'][1]:.3g}]",
    ]
    if f.floor:
        lines.append(f"    eps_inf = {f.eps_inf:.3g}  [{bw.ci['eps_inf'][0]:.3g}, "
                     f"{bw.ci['eps_inf'][1]:.3g}]")
    lines.append(f"    weighted R^2 = {f.r2:.3f}")
    if fit["seeds_per_width"] < 2:
        lines.append("    note: a width with one seed adds no bootstrap variability; the CI is "
                     "too narrow")
    if fit.get("n_unusable"):
        lines.append(f"    note: {fit['n_unusable']} {fit['family']} trial(s) diverged or have "
                     "no usable error; left out")
    if ho is not None:
        lines.append(
            f"  held-out check: fitted without {xn}={ho.x_held:g}, predicts {ho.predicted:.4f}, "
            f"observed {ho.observed:.4f} ({100 * ho.rel_error:+.1f}%), {pct}% prediction interval "
            f"[{ho.interval[0]:.4f}, {ho.interval[1]:.4f}] -> "
            f"{'inside' if ho.in_interval else 'OUTSIDE'}")
    else:
        lines.append("  held-out check: skipped (needs one more width than the fit)")
    lines.append(f"  vs forward FLOPs per image: rho_F = {bf.fit.rho:.3f}  "
                 f"[{bf.ci['rho'][0]:.3f}, {bf.ci['rho'][1]:.3f}] {pct}% CI")
    return "\n".join(lines)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return float(v)


def write_json(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` (without its ``_`` keys) as indented JSON; returns the path."""
    path = Path(path)
    clean = {k: v for k, v in obj.items() if not k.startswith("_")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean, indent=2, sort_keys=True, default=_jsonable) + "\n")
    return path
