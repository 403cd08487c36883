"""The study report (issue 15): ``shallowkern report --study --results R --out DIR``.

From the done records of a ``study`` (or any sweep with LeNet k = 2.8 widths, optionally a
k-scan at one d1 and VGG-16 widths) it writes ``DIR/study.md``, ``DIR/study.json`` and figures
(PNG + SVG):

* the width law ``error = A * d1^-rho`` with its 95% bootstrap CI (seeds resampled within each
  width) and weighted R^2; the law with a floor ``+ eps_inf``, the two compared by an
  AIC-style score (linear-space chi^2 + 2 * parameters, ``PowerLawFit.chi2``); the held-out
  largest width's prediction check;
* the d1 the plain law needs for 10% and 5% error, with the bootstrap interval, labelled an
  extrapolation whenever it lies outside the measured widths;
* the k-scan at fixed d1 (best k, the vertex of a parabola in ln k with a seed-bootstrap
  interval) and, at matched FLOPs, each k's error minus what the k = 2.8 width law predicts
  at that k's FLOPs;
* the error-vs-FLOPs frontier of LeNet and VGG-16 and the forward FLOPs per image each needs
  for given error levels (power law vs FLOPs per family, bootstrap interval);
* the pilot's validation curves and the epoch count they choose (``choose_epochs``).

Only the records are read: nothing is trained, and every number is recomputed from them.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .fit import compute_fit
from .records import ReportError, usable, value, x_of

__all__ = ["choose_epochs", "study_report", "write_study_report"]

ERROR_TARGETS = (0.10, 0.05)


def choose_epochs(records: Sequence[dict[str, Any]], *, slack: float = 1.0) -> dict[str, Any]:
    """The epoch count the pilot's *validation* curves support.

    For each record with a per-epoch ``val_error`` history: the first epoch whose validation
    error is within ``slack`` binomial standard errors (sqrt(p(1-p)/n_val)) of that curve's
    minimum; the choice is the largest such epoch over the records (the slowest curve decides).
    Returns ``{"epochs", "per_trial": [{label, epoch, min_val, min_epoch}], "curves",
    "slack_se", "trained"}`` (``trained``: the longest curve's last epoch).
    """
    per, curves = [], []
    for r in records:
        hist = [h for h in (r.get("history") or []) if h.get("val_error") is not None]
        if not hist:
            continue
        ve = np.array([h["val_error"] for h in hist], dtype=float)
        n_val = int(r.get("n_val") or 5000)
        m = float(ve.min())
        se = math.sqrt(max(m * (1 - m), 1e-12) / n_val)
        first = int(np.argmax(ve <= m + slack * se))
        label = _label(r)
        per.append({"label": label, "epoch": int(hist[first]["epoch"]), "min_val": m,
                    "min_epoch": int(hist[int(ve.argmin())]["epoch"])})
        curves.append({"label": label, "epochs": [int(h["epoch"]) for h in hist],
                       "val_error": ve.tolist()})
    if not per:
        raise ReportError("no record has a per-epoch validation history (run the study-pilot "
                          "preset: its records carry history with val_error)")
    return {"epochs": max(p["epoch"] for p in per), "per_trial": per, "curves": curves,
            "slack_se": slack, "trained": max(max(c["epochs"]) for c in curves)}


def _label(r: dict[str, Any]) -> str:
    fam, seed = value(r, "family"), value(r, "seed")
    if fam == "lenet":
        k = (r.get("config") or {}).get("k", value(r, "k"))  # the requested k, not d2/d1
        name = f"lenet d1={value(r, 'd1')}" + ("" if k is None or k == 2.8 else f" k={k:g}")
    else:
        name = f"{fam} width={value(r, 'width')}"
    return name + ("" if seed is None else f" seed={seed}")


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    s = samples[np.isfinite(samples)]
    if s.size == 0:
        return (float("nan"), float("nan"))
    a = (1 - level) / 2
    return (float(np.quantile(s, a)), float(np.quantile(s, 1 - a)))


def _x_for_error(A: Any, rho: Any, eps: Any, e: float) -> np.ndarray:
    A, rho, eps = (np.asarray(v, dtype=float) for v in (A, rho, eps))
    gap = e - eps
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ok = (gap > 0) & (rho > 0) & (A > 0)
        out = np.where(ok, (A / np.where(gap > 0, gap, 1)) ** (1 / rho), np.inf)
    return out


def _law_section(recs: Sequence[dict[str, Any]], n_boot: int, level: float) -> dict[str, Any]:
    plain = compute_fit(recs, family="lenet", group=2.8, n_boot=n_boot, level=level)
    bw, bf, ho, used = plain["_objects"]
    out: dict[str, Any] = {
        "selection": plain["selection"], "widths": plain["widths"],
        "seeds_per_width": plain["seeds_per_width"], "n_records": plain["n_records"],
        "rho": bw.fit.rho, "rho_ci": list(bw.ci["rho"]), "A": bw.fit.A, "A_ci": list(bw.ci["A"]),
        "r2": bw.fit.r2, "rho_ci_width": bw.ci["rho"][1] - bw.ci["rho"][0],
        "rho_flops": bf.fit.rho, "rho_flops_ci": list(bf.ci["rho"]),
        "aic_plain": bw.fit.chi2() + 2 * bw.fit.n_params,
        "holdout": ho.to_dict() if ho is not None else None,
        "_plain": bw, "_flops": bf, "_records": used,
    }
    if len(plain["widths"]) >= 3:
        try:
            fl = compute_fit(recs, family="lenet", group=2.8, floor=True, n_boot=n_boot,
                             level=level)["_objects"][0]
            out.update(eps_inf=fl.fit.eps_inf, eps_inf_ci=list(fl.ci["eps_inf"]),
                       rho_floor=fl.fit.rho, rho_floor_ci=list(fl.ci["rho"]),
                       aic_floor=fl.fit.chi2() + 2 * fl.fit.n_params, _floor=fl)
            out["preferred"] = "floor" if out["aic_floor"] < out["aic_plain"] else "plain"
        except (ReportError, ValueError) as exc:
            out["floor_error"] = str(exc)
    lo, hi = min(plain["widths"]), max(plain["widths"])
    s = bw.samples
    out["targets"] = []
    for e in ERROR_TARGETS:
        d = float(bw.fit.x_for_error(e))
        ci = _interval(_x_for_error(s[:, 0], s[:, 1], s[:, 2], e), level)
        out["targets"].append({"error": e, "d1": d, "ci": list(ci),
                               "extrapolation": not (lo <= d <= hi)})
    return out


def _kscan_section(recs: Sequence[dict[str, Any]], law: dict[str, Any] | None, level: float,
                   n_boot: int) -> dict[str, Any] | None:
    from ..laws import k_scan

    by_d1: dict[int, list[dict[str, Any]]] = {}
    for r in recs:
        if value(r, "family") == "lenet":
            by_d1.setdefault(int(value(r, "d1")), []).append(r)
    cands = [(len({round(float(r["config"].get("k") or 0), 6) for r in rs}), d1)
             for d1, rs in by_d1.items()]
    cands = [c for c in cands if c[0] >= 3]
    if not cands:
        return None
    _, d1 = max(cands)
    rs = [r for r in by_d1[d1] if (r.get("config") or {}).get("k") is not None]
    k = np.array([float(r["config"]["k"]) for r in rs])
    err = np.array([float(r["test_error"]) for r in rs])
    seeds = [int(r.get("seed") or 0) for r in rs]
    n_test = int(min(r.get("n_test") or 10000 for r in rs))
    ks = k_scan(k, err, seeds, n_test=n_test)
    rng = np.random.default_rng(0)
    stars = []
    for _ in range(n_boot):  # resample seeds within each k
        idx = np.concatenate([rng.choice(np.flatnonzero(k == v), (k == v).sum())
                              for v in np.unique(k)])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stars.append(k_scan(k[idx], err[idx], None, n_test=n_test).k_star)
        except ValueError:
            continue
    stars_a = np.array(stars, dtype=float)
    rows = []
    flops_law = law["_flops"].fit if law else None
    for v in np.unique(k):
        m = k == v
        fl = float(np.mean([x_of(r, "flops") for r, keep in zip(rs, m) if keep]))
        row = {"k": float(v), "mean_error": float(err[m].mean()),
               "sd": float(err[m].std(ddof=1)) if m.sum() > 1 else None, "n": int(m.sum()),
               "flops": fl}
        if flops_law is not None:
            row["k2.8_law_at_flops"] = float(flops_law.predict(fl))
            row["excess_at_matched_flops"] = row["mean_error"] - row["k2.8_law_at_flops"]
        rows.append(row)
    return {"d1": d1, "rows": rows, "best_k": ks.best_k, "k_star": ks.k_star,
            "k_star_ci": list(_interval(stars_a, level)),
            "k_star_defined": float(np.isfinite(stars_a).mean()) if stars else 0.0,
            "vertex_in_range": ks.vertex_in_range}


def _frontier_section(recs: Sequence[dict[str, Any]], law: dict[str, Any] | None,
                      n_boot: int, level: float) -> dict[str, Any]:
    from ..laws import pareto_frontier

    pts = []
    for r in recs:
        fam = value(r, "family")
        if fam == "lenet" and abs(float((r.get("config") or {}).get("k") or 2.8) - 2.8) > 1e-6:
            continue  # the k-scan is not the LeNet family's width law
        if fam in ("lenet", "vgg16"):
            pts.append({"family": fam, "flops": x_of(r, "flops"), "error": r["test_error"],
                        "seed": r.get("seed")})
    if not pts:
        return {}
    front = pareto_frontier(pts, x_key="flops")
    fits: dict[str, Any] = {}
    if law is not None:
        fits["lenet"] = law["_flops"]
    try:
        fits["vgg16"] = compute_fit(recs, family="vgg16", n_boot=n_boot,
                                    level=level)["_objects"][1]
    except ReportError as exc:
        fits_note = str(exc)
    else:
        fits_note = ""
    means = {}
    for f in ("lenet", "vgg16"):
        e = [p["error"] for p in pts if p["family"] == f]
        if e:
            means[f] = (min(e), max(e))
    lo = min(v[0] for v in means.values())
    hi = max(v[1] for v in means.values())
    levels = [x / 100 for x in range(95, 0, -5) if lo <= x / 100 <= hi][:6]
    table = []
    for e in levels:
        row = {"error": e}
        for f, b in fits.items():
            s = b.samples
            ci = _interval(_x_for_error(s[:, 0], s[:, 1], s[:, 2], e), level)
            row[f] = {"flops": float(b.fit.x_for_error(e)), "ci": list(ci),
                      "extrapolation": not (means[f][0] <= e <= means[f][1])}
        if "lenet" in row and "vgg16" in row:
            row["vgg16_over_lenet"] = row["vgg16"]["flops"] / row["lenet"]["flops"]
        table.append(row)
    return {"frontier": front.to_dict(), "levels": table, "note": fits_note,
            "_points": pts, "_fits": fits}


def study_report(records: Sequence[dict[str, Any]], *, n_boot: int = 1000,
                 level: float = 0.95) -> dict[str, Any]:
    """Every number of the study report from done records (JSON-ready, ``_`` keys hold fit
    objects for the figures)."""
    ok = usable(records, "test_error")
    if not ok:
        raise ReportError("no usable record (all diverged or none done)")
    law = _law_section(ok, n_boot, level)
    out: dict[str, Any] = {"n_records": len(ok), "level": level, "law": law,
                           "kscan": _kscan_section(ok, law, level, min(n_boot, 300)),
                           "frontier": _frontier_section(ok, law, n_boot, level)}
    try:
        out["pilot"] = choose_epochs(ok)
    except ReportError:
        out["pilot"] = None
    machines = sorted({str((r.get("machine") or {}).get("cpu") or "?") for r in ok})
    commits = sorted({str(r.get("git_commit"))[:10] for r in ok})
    out["machines"], out["commits"] = machines, commits
    out["train_hours"] = sum(float(r.get("train_time") or 0) for r in ok
                             if "pack" not in r) / 3600 + sum(
        {r["pack"]["trial_ids"][0]: float(r["pack"]["train_time"]) for r in ok
         if "pack" in r}.values()) / 3600
    return out


def _fmt_ci(ci: Sequence[float], f: str = ".3f") -> str:
    return f"[{ci[0]:{f}}, {ci[1]:{f}}]"


def _markdown(rep: dict[str, Any], figures: Sequence[str]) -> str:
    L = rep["law"]
    pct = round(100 * rep["level"])
    # Seeds are resampled within each width: a width with one seed never varies, so with one
    # seed somewhere the intervals understate the uncertainty (zero width with one everywhere).
    one_seed = L["seeds_per_width"] < 2
    ci_verdict = ("not assessed: a width has one seed" if one_seed
                  else "met" if L["rho_ci_width"] <= 0.05 else "NOT met")
    caveat = ([f"**Intervals understate the uncertainty**: some widths have a single seed, "
               f"which seed resampling cannot vary (with one seed everywhere every interval "
               f"has zero width); run >= 2 seeds per width (the study preset runs 3).", ""]
              if one_seed else [])
    lines = ["# Study report", "", *caveat,
             f"{rep['n_records']} usable records; machines: {', '.join(rep['machines'])}; "
             f"commits: {', '.join(rep['commits'])}; training time in the records: "
             f"{rep['train_hours']:.2f} h (packs counted once).", "",
             "## Width law (LeNet, k = 2.8)", "",
             f"{L['selection']}: widths {', '.join(f'{w:g}' for w in L['widths'])}, "
             f">= {L['seeds_per_width']} seeds each.", "",
             f"- rho = **{L['rho']:.3f}** {_fmt_ci(L['rho_ci'])} ({pct}% bootstrap CI, width "
             f"{L['rho_ci_width']:.3f}; target <= 0.05: {ci_verdict}), A = {L['A']:.3g}",
             f"- weighted R^2 = **{L['r2']:.3f}** (target >= 0.98: "
             f"{'met' if L['r2'] >= 0.98 else 'NOT met'})",
             f"- vs forward FLOPs per image: rho_F = {L['rho_flops']:.3f} "
             f"{_fmt_ci(L['rho_flops_ci'])}"]
    if "aic_floor" in L:
        lines.append(f"- with a floor: eps_inf = {L['eps_inf']:.4f} "
                     f"{_fmt_ci(L['eps_inf_ci'], '.4f')}, rho = {L['rho_floor']:.3f} "
                     f"{_fmt_ci(L['rho_floor_ci'])}; AIC-style score "
                     f"(chi^2 + 2k) plain {L['aic_plain']:.1f} vs floor {L['aic_floor']:.1f} -> "
                     f"**{L['preferred']}** preferred")
    ho = L["holdout"]
    if ho:
        lines.append(f"- held-out check: fitted without d1 = {ho['x_held']:g}, predicts "
                     f"{ho['predicted']:.4f}, observed {ho['observed']:.4f}, {pct}% prediction "
                     f"interval {_fmt_ci(ho['interval'], '.4f')} -> "
                     f"{'inside' if ho['in_interval'] else 'OUTSIDE'}")
    for t in L["targets"]:
        tag = "EXTRAPOLATION beyond the measured widths" if t["extrapolation"] else "interpolated"
        lines.append(f"- d1 for {100 * t['error']:.0f}% error (plain law): {t['d1']:.3g} "
                     f"{_fmt_ci(t['ci'], '.3g')} ({tag})")
    ks = rep["kscan"]
    lines += ["", "## Depth ratio k at fixed d1", ""]
    if ks is None:
        lines.append("No k-scan in these records (needs >= 3 k at one d1).")
    else:
        lines += [f"d1 = {ks['d1']}: best measured k = {ks['best_k']:g}; parabola vertex in ln k: "
                  f"k* = {ks['k_star']:.2f} {_fmt_ci(ks['k_star_ci'], '.2f')} ({pct}% seed "
                  f"bootstrap; vertex defined in {100 * ks['k_star_defined']:.0f}% of resamples), "
                  f"{'inside' if ks['vertex_in_range'] else 'outside'} the scanned range.", "",
                  "| k | error (mean) | sd | seeds | FLOPs/img | k=2.8 law at these FLOPs | "
                  "excess at matched FLOPs |", "|---|---|---|---|---|---|---|"]
        for r in ks["rows"]:
            sd = f"{r['sd']:.4f}" if r["sd"] is not None else "-"
            law_v = r.get("k2.8_law_at_flops")
            lines.append(f"| {r['k']:g} | {r['mean_error']:.4f} | {sd} | {r['n']} | "
                         f"{r['flops']:.3g} | {law_v:.4f} | {r['excess_at_matched_flops']:+.4f} |"
                         if law_v is not None else
                         f"| {r['k']:g} | {r['mean_error']:.4f} | {sd} | {r['n']} | "
                         f"{r['flops']:.3g} | - | - |")
    fr = rep["frontier"]
    lines += ["", "## Error vs FLOPs: LeNet and VGG-16", ""]
    if fr.get("levels"):
        lines += [f"Forward FLOPs per image each family needs for a test error (power law vs "
                  f"FLOPs per family, {pct}% bootstrap interval; * = outside that family's "
                  "measured errors, an extrapolation).", "",
                  "| error | LeNet FLOPs | VGG-16 FLOPs | VGG-16 / LeNet |", "|---|---|---|---|"]
        for row in fr["levels"]:
            cells = []
            for f in ("lenet", "vgg16"):
                c = row.get(f)
                cells.append("-" if c is None else
                             f"{c['flops']:.3g} {_fmt_ci(c['ci'], '.3g')}"
                             + ("*" if c["extrapolation"] else ""))
            ratio = row.get("vgg16_over_lenet")
            lines.append(f"| {100 * row['error']:.0f}% | {cells[0]} | {cells[1]} | "
                         f"{'-' if ratio is None else f'{ratio:.3g}'} |")
    if fr.get("note"):
        lines.append(f"\nVGG-16: {fr['note']}")
    pl = rep.get("pilot")
    if pl:
        trained = pl.get("trained")
        lines += ["", "## Validation curves: the epochs they support", "",
                  f"Epochs the validation curves support: **{pl['epochs']}**"
                  + (f" of the {trained} trained" if trained else "")
                  + f" (first epoch within {pl['slack_se']:g} binomial SE of each curve's "
                  "minimum; the slowest curve decides; never the test error). On a pilot's "
                  "records this is the study's epoch count; on the study's own records it checks "
                  "that choice: a number below the epochs trained means every curve had "
                  "flattened, one equal to it means some curve was still falling."]
        for p in pl["per_trial"]:
            lines.append(f"- {p['label']}: reaches it at epoch {p['epoch']} (minimum "
                         f"{p['min_val']:.4f} at epoch {p['min_epoch']})")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figures
                                           if f.endswith(".png")]
    return "\n".join(lines) + "\n"


def _figures(rep: dict[str, Any], out: Path, formats: Sequence[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []

    def save(fig, name):
        for fmt in formats:
            p = out / f"{name}.{fmt}"
            fig.savefig(p, bbox_inches="tight", dpi=120)
            written.append(str(p))
        plt.close(fig)

    L = rep["law"]
    bw = L["_plain"]
    recs = L["_records"]
    fig, ax = plt.subplots(figsize=(5, 4))
    d = np.array([x_of(r, "width") for r in recs])
    e = np.array([r["test_error"] for r in recs])
    ax.scatter(d, e, s=12, alpha=0.6, label="trials")
    xs = np.geomspace(d.min(), d.max() * 1.5, 60)
    ax.plot(xs, bw.fit.predict(xs), label=f"A d1^-rho, rho={bw.fit.rho:.3f}")
    s = bw.samples
    band = s[:, 0][:, None] * xs[None, :] ** (-s[:, 1][:, None]) + s[:, 2][:, None]
    lo, hi = np.quantile(band, [(1 - rep["level"]) / 2, (1 + rep["level"]) / 2], axis=0)
    ax.fill_between(xs, lo, hi, alpha=0.2, label=f"{round(100 * rep['level'])}% band")
    if "_floor" in L:
        ax.plot(xs, L["_floor"].fit.predict(xs), "--", label="with floor")
    ax.set(xscale="log", yscale="log", xlabel="d1", ylabel="test error", title="LeNet k=2.8")
    ax.legend(fontsize=7)
    save(fig, "width_law")

    ks = rep["kscan"]
    if ks:
        fig, ax = plt.subplots(figsize=(5, 4))
        k = [r["k"] for r in ks["rows"]]
        ax.errorbar(k, [r["mean_error"] for r in ks["rows"]],
                    yerr=[r["sd"] or 0 for r in ks["rows"]], fmt="o-", label="measured")
        if "k2.8_law_at_flops" in ks["rows"][0]:
            ax.plot(k, [r["k2.8_law_at_flops"] for r in ks["rows"]], "s--",
                    label="k=2.8 law at matched FLOPs")
        ax.axvline(2.8, color="gray", lw=0.8)
        ax.set(xscale="log", xlabel="k = d2/d1", ylabel="test error", title=f"d1 = {ks['d1']}")
        ax.legend(fontsize=7)
        save(fig, "k_scan")

    fr = rep["frontier"]
    if fr.get("_points"):
        fig, ax = plt.subplots(figsize=(5, 4))
        for f in ("lenet", "vgg16"):
            p = [q for q in fr["_points"] if q["family"] == f]
            if p:
                ax.scatter([q["flops"] for q in p], [q["error"] for q in p], s=12, alpha=0.6,
                           label=f)
                front = fr["frontier"]["per_family"].get(f, [])
                ax.plot([q[1] for q in front], [q[2] for q in front], "-", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="forward FLOPs per image",
               ylabel="test error", title="error vs FLOPs")
        ax.legend(fontsize=7)
        save(fig, "frontier")

    pl = rep.get("pilot")
    if pl:
        fig, ax = plt.subplots(figsize=(5, 4))
        many = len(pl["curves"]) > 12  # a whole study: lines without a legend
        for c in pl["curves"]:
            ax.plot(c["epochs"], c["val_error"], label=c["label"], lw=0.7 if many else 1.5,
                    alpha=0.6 if many else 1.0)
        ax.axvline(pl["epochs"], color="gray", lw=0.8, ls="--")
        ax.set(xlabel="epoch", ylabel="validation error",
               title=f"validation curves ({len(pl['curves'])} trials)")
        if not many:
            ax.legend(fontsize=7)
        save(fig, "pilot_curves")
    return written


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return _clean(obj.item())
    return obj


def write_study_report(records: Sequence[dict[str, Any]], out_dir: str | Path, *,
                       n_boot: int = 1000, level: float = 0.95,
                       formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write ``study.md``, ``study.json`` and the figures into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep = study_report(records, n_boot=n_boot, level=level)
    figs = _figures(rep, out, formats)
    md = out / "study.md"
    md.write_text(_markdown(rep, figs))
    js = out / "study.json"
    js.write_text(json.dumps(_clean(rep), indent=2, sort_keys=True) + "\n")
    return [md, js, *map(Path, figs)]
