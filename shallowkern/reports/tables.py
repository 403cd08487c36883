"""Summary tables of sweep records, and the one plain-text table renderer that the CLI and the
profiler share (``render_table``)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from typing import Any

from .records import (family_of, group_value, impl_of, series_label, shape_label, usable,
                      value)

__all__ = ["format_diverged", "format_speedups", "format_table", "render_table",
           "speedup_rows", "summary_rows"]


def render_table(head: Sequence[str] | None, body: Sequence[Sequence[str]], left: int = 1,
                 rule: bool = True) -> str:
    """Aligned plain text: columns padded to their widest cell, the first ``left`` columns
    left-aligned and the rest right-aligned, two spaces between columns, a rule of dashes under
    the header (``head`` None: no header). Trailing spaces are stripped."""
    rows = ([list(head)] if head is not None else []) + [list(map(str, r)) for r in body]
    if not rows:
        return ""
    n = max(len(r) for r in rows)
    rows = [r + [""] * (n - len(r)) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(n)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [fmt(r) for r in rows]
    if head is not None and rule:
        lines.insert(1, fmt(["-" * w for w in widths]))
    return "\n".join(lines)


def _key(rec: dict[str, Any], *drop: str) -> tuple:
    cfg = dict(rec.get("config") or {})
    for k in ("seed", *drop):
        cfg.pop(k, None)
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in cfg.items()))


def _stats(vals: list[Any]) -> tuple[float | None, float | None]:
    vals = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summary_rows(records: Sequence[dict[str, Any]], metric: str = "test_error"
                 ) -> list[dict[str, Any]]:
    """One row per configuration (all but the seed) of the done ``records``: mean/std of the
    errors over its *usable* seeds (diverged or invalid trials are counted in ``diverged``, never
    averaged), cost and latency."""
    ok_ids = {id(r) for r in usable(records, metric)}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(_key(r), []).append(r)
    rows = []
    for recs in groups.values():
        r0 = recs[0]
        good = [r for r in recs if id(r) in ok_ids]
        m, s = _stats([r.get(metric) for r in good])
        fam = family_of(r0)
        width = value(r0, fam.width_param) if fam else None
        rows.append({
            "family": value(r0, "family"), "dataset": value(r0, "dataset"),
            "model": shape_label(r0), "recipe": value(r0, "recipe"), "epochs": r0.get("epochs"),
            "seeds": len(good), "diverged": len(recs) - len(good),
            f"{metric}_mean": m, f"{metric}_std": s,
            "val_error_mean": _stats([r.get("val_error") for r in good])[0],
            "train_error_mean": _stats([r.get("train_error") for r in good])[0],
            "mflops": (r0.get("flops") or 0) / 1e6, "params": r0.get("params"),
            "latency_ms": _stats([r.get("latency") for r in recs])[0],
            "latency_batch": r0.get("latency_batch"),
            "wall_time_s": _stats([r.get("wall_time") for r in recs])[0],
            "_sort": (str(value(r0, "family")), float(group_value(r0) or 0),
                      float(width) if isinstance(width, (int, float)) else 0.0, impl_of(r0)),
        })
    rows.sort(key=lambda row: row.pop("_sort"))
    for row in rows:
        if row["latency_ms"] is not None:
            row["latency_ms"] *= 1e3
    return rows


def format_table(rows: Sequence[dict[str, Any]], metric: str = "test_error") -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    show_div = any(r.get("diverged") for r in rows)
    head = ["family", "dataset", "model", "seeds", *(["diverged"] if show_div else []), "epochs",
            f"{metric.split('_')[0]} err %", "val err %", "train err %", "MFLOPs/img", "params",
            "latency ms", "wall s"]
    body = []
    for r in rows:
        mean = r[f"{metric}_mean"]
        body.append([
            str(r["family"]), str(r["dataset"]), r["model"], str(r["seeds"]),
            *([str(r["diverged"])] if show_div else []), str(r["epochs"]),
            "-" if mean is None else f"{pct(mean)} ± {pct(r[f'{metric}_std'])}",
            pct(r["val_error_mean"]), pct(r["train_error_mean"]), f"{r['mflops']:.2f}",
            f"{r['params']:,}" if isinstance(r["params"], int) else "-",
            "-" if r["latency_ms"] is None else f"{r['latency_ms']:.2f} (b={r['latency_batch']})",
            "-" if r["wall_time_s"] is None else f"{r['wall_time_s']:.1f}",
        ])
    return render_table(head, body, left=3)


def format_diverged(diverged: Sequence[dict[str, Any]]) -> str:
    """One line per diverged trial: id, model, seed, the epoch it stopped at."""
    body = [[str(r.get("trial_id")), f"{value(r, 'family')} {shape_label(r)}",
             f"seed={value(r, 'seed')}", f"epochs={r.get('epochs', '-')}"] for r in diverged]
    return render_table(None, body, left=4)


def speedup_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """shallowkern vs plain PyTorch, per model both were run for (``sweep --impl plain``): the
    summed training time and wall time of each over the same seeds, and their ratios."""
    pairs: dict[tuple, dict[str, dict[Any, dict[str, Any]]]] = {}
    for r in records:
        pairs.setdefault(_key(r, "impl"), {}).setdefault(impl_of(r), {})[value(r, "seed")] = r
    rows = []
    for by_impl in pairs.values():
        ours, plain = by_impl.get("shallowkern", {}), by_impl.get("plain", {})
        seeds = sorted(set(ours) & set(plain), key=str)  # only seeds run both ways
        if not seeds:
            continue
        first = ours[seeds[0]]
        fam = family_of(first)
        width = value(first, fam.width_param) if fam else None
        wtext = f"{width:g}" if isinstance(width, float) else str(width)
        row: dict[str, Any] = {
            "model": f"{series_label(first, True)} {fam.width_param if fam else 'width'}={wtext}",
            "seeds": len(seeds)}
        for name, side in (("shallowkern", ours), ("plain", plain)):
            row[f"{name}_train_s"] = sum(side[s].get("train_time") or 0.0 for s in seeds)
            row[f"{name}_wall_s"] = sum(side[s].get("wall_time") or 0.0 for s in seeds)
        for what in ("train", "wall"):
            ours_s = row[f"shallowkern_{what}_s"]
            row[f"{what}_speedup"] = row[f"plain_{what}_s"] / ours_s if ours_s > 0 else None
        rows.append(row)
    return rows


def format_speedups(rows: Sequence[dict[str, Any]]) -> str:
    head = ["model", "seeds", "train s (ours)", "train s (plain)", "train speedup",
            "wall s (ours)", "wall s (plain)", "wall speedup"]
    x = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
    sec = lambda v: f"{v:.2f}" if v < 10 else f"{v:.1f}"  # noqa: E731
    body = [[r["model"], str(r["seeds"]), sec(r["shallowkern_train_s"]), sec(r["plain_train_s"]),
             x(r["train_speedup"]), sec(r["shallowkern_wall_s"]), sec(r["plain_wall_s"]),
             x(r["wall_speedup"])] for r in rows]
    total = {k: sum(r[k] for r in rows) for k in ("shallowkern_train_s", "plain_train_s",
                                                     "shallowkern_wall_s", "plain_wall_s")}
    body.append(["all", str(sum(r["seeds"] for r in rows)), sec(total["shallowkern_train_s"]),
                 sec(total["plain_train_s"]),
                 x(total["plain_train_s"] / total["shallowkern_train_s"]
                   if total["shallowkern_train_s"] > 0 else None),
                 sec(total["shallowkern_wall_s"]), sec(total["plain_wall_s"]),
                 x(total["plain_wall_s"] / total["shallowkern_wall_s"]
                   if total["shallowkern_wall_s"] > 0 else None)])
    return render_table(head, body, left=1)
