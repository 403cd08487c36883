"""The ``shallowkern`` command: profile, sweep, fit, plot, report, bench and run.

``shallowkern run`` is the README's main job: the ``quick`` sweep (resumable), then the fitted
power law with its confidence interval, the profile table of the largest model, and the plots.
Every subcommand turns bad input (missing data or results, too few widths, non-positive
errors, unknown options) into a one-line ``shallowkern <cmd>: error: ...`` and exit status 2,
not a traceback; set ``SHALLOWKERN_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CLIError", "main"]

PROG = "shallowkern"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- helpers


def _parse_value(text: str) -> Any:
    """``--set`` values: JSON where it parses (4, 0.01, true, null), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_sets(items: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return out


def parse_model_spec(spec: str):
    """``lenet:16``, ``lenet:d1=16,k=2.8``, ``lenet:d1=16,d2=45``, ``vgg16:0.5``,
    ``vgg16:width=0.5,bn`` -> a TrialConfig (seed 0) describing that network."""
    from .sweep import TrialConfig

    family, _, rest = spec.partition(":")
    family = family.strip().lower()
    fields: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            if key in ("bn", "batch_norm"):
                fields["batch_norm"] = True
                continue
            key, value = ("d1" if family == "lenet" else "width"), part
        try:
            fields[key.strip()] = float(value) if key.strip() in ("k", "width") else int(value)
        except ValueError:
            raise CLIError(f"model spec {spec!r}: {key}={value!r} is not a number") from None
    try:
        return TrialConfig(family, **fields)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"model spec {spec!r}: {exc} (examples: lenet:16, lenet:d1=16,k=2.8, "
                       "vgg16:0.5)") from None


def _data_root(args: argparse.Namespace, datasets: Sequence[str],
               download: bool = False) -> str | None:
    """The dataset root for real datasets (exported as SHALLOWKERN_DATA for the workers), after
    checking that every file they need is there: a worker failing 8 times is a worse message."""
    from .data import DATASETS, DataError, resolve_root
    from .sweep.config import synthetic_size

    real = sorted({d for d in datasets if synthetic_size(d) is None})
    if not real:
        return args.data_root
    try:
        root = resolve_root(args.data_root, download=download)
    except DataError as exc:
        raise CLIError(f"{exc} (or pass --data-root DIR)") from None
    for name in real:
        spec = DATASETS[name]
        folder = root / spec.folder
        missing = [f for f in spec.train_files + spec.test_files
                   if not (folder / f).is_file() and not (folder / f"{f}.gz").is_file()]
        if missing and download:
            from .data import download_dataset

            download_dataset(name, root)
        elif missing:
            raise CLIError(
                f"dataset {name!r} is missing under {root}: no {folder / missing[0]}[.gz]"
                f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}. Point "
                f"--data-root or SHALLOWKERN_DATA at the folder holding {spec.folder}/, or pass "
                f"--download to fetch it")
    os.environ["SHALLOWKERN_DATA"] = str(root)
    return str(root)


def _load_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    from .sweep import read_records

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"results file {p} does not exist (run `shallowkern sweep` first)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        records = read_records(p)
    for w in caught:
        print(f"{PROG}: warning: {w.message}", file=sys.stderr)
    if not records:
        raise CLIError(f"results file {p} holds no records")
    return records


def _value(rec: dict[str, Any], key: str) -> Any:
    """A field of a record, looking in the model description and config as well."""
    for where in (rec, rec.get("model", {}), rec.get("config", {})):
        if key in where and where[key] is not None:
            return where[key]
    return None


def _impl(rec: dict[str, Any]) -> str:
    """How the trial ran: "shallowkern" (also every record from before impl existed) or "plain"."""
    return rec.get("config", {}).get("impl") or "shallowkern"


def _nominal_k(rec: dict[str, Any]) -> float | None:
    """The k a LeNet trial asked for (config), not the realised round(k*d1)/d1."""
    k = rec.get("config", {}).get("k")
    return None if k is None else round(float(k), 6)


def _family_label(rec: dict[str, Any], split_k: bool) -> str:
    fam = _value(rec, "family") or "?"
    plain = " (plain)" if _impl(rec) == "plain" else ""
    if fam == "lenet" and split_k:
        return f"lenet k={_nominal_k(rec):g}{plain}"
    if fam == "vgg16" and _value(rec, "batch_norm"):
        return "vgg16 bn" + plain
    return fam + plain


def _select(records: list[dict[str, Any]], args: argparse.Namespace) -> tuple[list[dict], str]:
    """Records of one family (and one k for LeNet, one dataset, one impl) for a fit; with a
    description."""
    impl = getattr(args, "impl", "shallowkern")
    recs = [r for r in records if _value(r, "family") == args.family and _impl(r) == impl]
    if not recs:
        fams = sorted({str(_value(r, "family")) for r in records})
        raise CLIError(f"no {args.family!r} records with impl {impl!r} (the file has {fams}); "
                       "use --family / --impl")
    datasets = sorted({str(_value(r, "dataset")) for r in recs})
    if args.dataset:
        recs = [r for r in recs if _value(r, "dataset") == args.dataset]
    elif len(datasets) > 1:
        raise CLIError(f"records from several datasets {datasets}: choose one with --dataset")
    desc = f"{args.family} on {args.dataset or datasets[0]}"
    if args.family == "lenet":
        ks = sorted({k for k in map(_nominal_k, recs) if k is not None})
        if args.k is not None:
            k = args.k
        elif len(ks) == 1 or 2.8 in ks:
            k = ks[0] if len(ks) == 1 else 2.8
        else:
            raise CLIError(f"records at several k {ks}: choose one with --k")
        recs = [r for r in recs if _nominal_k(r) is not None and abs(_nominal_k(r) - k) < 1e-6]
        desc += f", k={k:g}"
    if not recs:
        raise CLIError(f"no records left after filtering ({desc})")
    return recs, desc


def _x_of(rec: dict[str, Any], x: str) -> float:
    if x == "width":  # the family's width: d1 for LeNet, first-layer filters for VGG
        v = _value(rec, "d1") if _value(rec, "family") == "lenet" else _value(rec, "first_width")
    else:
        v = _value(rec, x)
    if v is None:
        raise CLIError(f"record {rec.get('trial_id')} has no {x!r}")
    return float(v)


def _errors(recs: list[dict[str, Any]], metric: str) -> list[float]:
    out = []
    for r in recs:
        e = r.get(metric)
        if e is None or not isinstance(e, (int, float)) or not math.isfinite(e):
            raise CLIError(f"record {r.get('trial_id')} has no finite {metric!r}")
        if e <= 0 or e >= 1:
            raise CLIError(f"record {r.get('trial_id')} has {metric}={e!r}; a power law needs "
                           "error rates strictly between 0 and 1")
        out.append(float(e))
    return out


def _n_test(recs: list[dict[str, Any]]) -> int:
    sizes = [int(r["n_test"]) for r in recs if r.get("n_test")]
    return min(sizes) if sizes else 10000


def _width_name(family: str) -> str:
    return "d1" if family == "lenet" else "first-layer width"


# ----------------------------------------------------------------------------- fit


def compute_fit(records: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Power law of the chosen error vs width (bootstrap CI, held-out check) and vs FLOPs."""
    from .laws import bootstrap_ci, holdout_check

    recs, desc = _select(records, args)
    err = _errors(recs, args.metric)
    seeds = [int(_value(r, "seed")) for r in recs]
    width = [_x_of(r, "width") for r in recs]
    flops = [_x_of(r, "flops") for r in recs]
    kw = dict(n_boot=args.n_boot, level=args.level, rng=0, floor=args.floor, n_test=_n_test(recs))
    distinct = len(set(width))
    need = 3 if args.floor else 2
    if distinct < need:
        raise CLIError(f"{desc}: {distinct} distinct width(s) {sorted(set(width))}; a power-law "
                       f"fit{' with a floor' if args.floor else ''} needs at least {need}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # single-seed widths: noted below
            by_width = bootstrap_ci(width, err, seeds, x_label="width", **kw)
            by_flops = bootstrap_ci(flops, err, seeds, x_label="flops", **kw)
            holdout = (holdout_check(width, err, seeds, x_label="width", **kw)
                       if distinct > need else None)
    except ValueError as exc:
        raise CLIError(f"{desc}: {exc}") from None
    return {
        "results": str(args.results), "selection": desc, "family": args.family,
        "metric": args.metric, "x": _width_name(args.family), "n_records": len(recs),
        "widths": sorted(set(width)), "seeds_per_width": min(width.count(w) for w in set(width)),
        "width_fit": by_width.to_dict(), "flops_fit": by_flops.to_dict(),
        "holdout": holdout.to_dict() if holdout else None,
        "_objects": (by_width, by_flops, holdout, recs),
    }


def describe_fit(fit: dict[str, Any]) -> str:
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


def _write_json(obj: dict[str, Any], path: Path) -> None:
    clean = {k: v for k, v in obj.items() if not k.startswith("_")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean, indent=2, sort_keys=True, default=float) + "\n")


def cmd_fit(args: argparse.Namespace) -> int:
    fit = compute_fit(_load_records(args.results), args)
    print(describe_fit(fit))
    out = Path(args.out) if args.out else Path(args.results).with_suffix(".fit.json")
    _write_json(fit, out)
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- report


def summary_rows(records: list[dict[str, Any]], metric: str = "test_error") -> list[dict[str, Any]]:
    """One row per configuration (all but the seed): mean/std of errors, cost, latency."""
    import statistics

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        cfg = dict(r.get("config", {}))
        cfg.pop("seed", None)
        groups.setdefault(tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in cfg.items())),
                          []).append(r)

    def stats(vals: list[float]) -> tuple[float | None, float | None]:
        vals = [v for v in vals if v is not None]
        if not vals:
            return None, None
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    rows = []
    for recs in groups.values():
        r0 = recs[0]
        fam = _value(r0, "family")
        if fam == "lenet":
            shape = f"d1={_value(r0, 'd1')} d2={_value(r0, 'd2')}"
        else:
            shape = f"width={_value(r0, 'width'):g}" + (" bn" if _value(r0, "batch_norm") else "")
        if _impl(r0) == "plain":
            shape += " plain"
        m, s = stats([r.get(metric) for r in recs])
        rows.append({
            "family": fam, "dataset": _value(r0, "dataset"), "model": shape,
            "recipe": _value(r0, "recipe"), "epochs": r0.get("epochs"), "seeds": len(recs),
            f"{metric}_mean": m, f"{metric}_std": s,
            "val_error_mean": stats([r.get("val_error") for r in recs])[0],
            "train_error_mean": stats([r.get("train_error") for r in recs])[0],
            "mflops": (r0.get("flops") or 0) / 1e6, "params": r0.get("params"),
            "latency_ms": stats([r.get("latency") for r in recs])[0],
            "latency_batch": r0.get("latency_batch"),
            "wall_time_s": stats([r.get("wall_time") for r in recs])[0],
            "_sort": (fam, _nominal_k(r0) or 0, _value(r0, "d1") or 0, _value(r0, "width") or 0),
        })
    rows.sort(key=lambda row: row.pop("_sort"))
    for row in rows:
        if row["latency_ms"] is not None:
            row["latency_ms"] *= 1e3
    return rows


def format_table(rows: list[dict[str, Any]], metric: str = "test_error") -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"

    head = ["family", "dataset", "model", "seeds", "epochs", f"{metric.split('_')[0]} err %",
            "val err %", "train err %", "MFLOPs/img", "params", "latency ms", "wall s"]
    body = []
    for r in rows:
        body.append([
            str(r["family"]), str(r["dataset"]), r["model"], str(r["seeds"]), str(r["epochs"]),
            f"{pct(r[f'{metric}_mean'])} ± {pct(r[f'{metric}_std'])}",
            pct(r["val_error_mean"]), pct(r["train_error_mean"]), f"{r['mflops']:.2f}",
            f"{r['params']:,}" if r["params"] is not None else "-",
            "-" if r["latency_ms"] is None else f"{r['latency_ms']:.2f} (b={r['latency_batch']})",
            "-" if r["wall_time_s"] is None else f"{r['wall_time_s']:.1f}",
        ])
    return _render(head, body, left=3)


def _render(head: list[str], body: list[list[str]], left: int) -> str:
    """A plain-text table: the first ``left`` columns left-aligned, the rest right-aligned."""
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i >= left else c.ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)])


def speedup_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """shallowkern vs plain PyTorch, per model both were run for (``sweep --impl plain``): the
    summed training time and wall time of each over the same seeds, and their ratios."""
    pairs: dict[tuple, dict[str, dict[int, dict[str, Any]]]] = {}
    for r in records:
        cfg = dict(r.get("config", {}))
        seed = cfg.pop("seed", None)
        cfg.pop("impl", None)
        key = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in cfg.items()))
        pairs.setdefault(key, {}).setdefault(_impl(r), {})[seed] = r
    rows = []
    for by_impl in pairs.values():
        ours, plain = by_impl.get("shallowkern", {}), by_impl.get("plain", {})
        seeds = sorted(set(ours) & set(plain))  # only seeds run both ways
        if not seeds:
            continue
        row = {"model": _family_label(ours[seeds[0]], True) + " " + (
            f"d1={_value(ours[seeds[0]], 'd1')}" if _value(ours[seeds[0]], "family") == "lenet"
            else f"width={_value(ours[seeds[0]], 'width'):g}"), "seeds": len(seeds)}
        for name, side in (("shallowkern", ours), ("plain", plain)):
            row[f"{name}_train_s"] = sum(side[s].get("train_time") or 0.0 for s in seeds)
            row[f"{name}_wall_s"] = sum(side[s].get("wall_time") or 0.0 for s in seeds)
        for what in ("train", "wall"):
            ours_s = row[f"shallowkern_{what}_s"]
            row[f"{what}_speedup"] = row[f"plain_{what}_s"] / ours_s if ours_s > 0 else None
        rows.append(row)
    return rows


def format_speedups(rows: list[dict[str, Any]]) -> str:
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
    return _render(head, body, left=1)


def cmd_report(args: argparse.Namespace) -> int:
    from .sweep import export_csv, index

    records = _load_records(args.results)
    rows = summary_rows(records, args.metric)
    speedups = speedup_rows(records)
    if args.json:
        print(json.dumps(rows, indent=2, default=float))
    else:
        print(format_table(rows, args.metric))
        if speedups:
            print("\n== shallowkern vs plain PyTorch (same trials, seeds run both ways) ==")
            print(format_speedups(speedups))
    if args.index:
        print(f"wrote {index(args.results)}")
        print(f"wrote {export_csv(args.results)}")
    return 0


# ----------------------------------------------------------------------------- plot


def make_plots(records: list[dict[str, Any]], args: argparse.Namespace,
               fit: dict[str, Any] | None = None) -> list[Path]:
    """Every plot the records support; returns the files written."""
    from . import plot

    out_dir = Path(args.out_dir)
    formats = tuple(args.formats)
    written: list[Path] = []
    if fit is None:
        fit = compute_fit(records, args)
    by_width, _, _, recs = fit["_objects"]
    written += plot.plot_error_vs_width(
        [_x_of(r, "width") for r in recs], _errors(recs, args.metric), by_width,
        out_dir / "error_vs_width", formats=formats, xlabel=fit["x"], title=fit["selection"],
        metric=args.metric)
    multi_k = len({_nominal_k(r) for r in records if _value(r, "family") == "lenet"}) > 1
    usable = [r for r in records if r.get(args.metric) is not None and 0 < r[args.metric] < 1
              and r.get("flops")]
    written += plot.plot_error_vs_flops(
        [{"family": _family_label(r, multi_k), "flops": float(r["flops"]),
          "error": float(r[args.metric]), "seed": _value(r, "seed")} for r in usable],
        out_dir / "error_vs_flops", formats=formats, metric=args.metric)
    scans = {}
    for r in usable:
        if _value(r, "family") == "lenet" and _nominal_k(r) is not None:
            scans.setdefault(int(_value(r, "d1")), []).append(
                (_nominal_k(r), float(r[args.metric]), _value(r, "seed")))
    scans = {d1: v for d1, v in scans.items() if len({round(k, 3) for k, _, _ in v}) >= 3}
    if scans:
        written += plot.plot_k_scan(scans, out_dir / "k_scan", formats=formats,
                                    n_test=_n_test(usable), metric=args.metric)
    else:
        print(f"{PROG}: note: no k-scan plot (needs >= 3 values of k at one d1, e.g. the "
              "paper preset)", file=sys.stderr)
    return written


def cmd_plot(args: argparse.Namespace) -> int:
    written = make_plots(_load_records(args.results), args)
    for p in written:
        print(f"wrote {p}")
    return 0


# ----------------------------------------------------------------------------- profile


def _profile_table(cfg, batch: int, device: str, as_json: bool, latency: bool = True) -> str:
    import torch

    from .profile import profile
    from .sweep import build_model

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is visible")
    torch.manual_seed(0)
    with torch.device(dev):
        model = build_model(cfg).eval()
        x = torch.randn(batch, 3, 32, 32)
    res = profile(model, x, latency=latency and dev.type != "meta")
    return res.to_json(indent=2) if as_json else res.table()


def cmd_profile(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise CLIError(f"--batch must be >= 1, got {args.batch}")
    cfg = parse_model_spec(args.model)
    text = _profile_table(cfg, args.batch, args.device, args.json, latency=not args.no_latency)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


# ----------------------------------------------------------------------------- sweep / run


def _grid_configs(args: argparse.Namespace):
    configs = _grid_configs_default_impl(args)
    impl = getattr(args, "impl", "shallowkern")
    if impl != "shallowkern":
        from dataclasses import replace

        configs = [replace(c, impl=impl) for c in configs]
    return configs


def _grid_configs_default_impl(args: argparse.Namespace):
    from .sweep import get_preset, lenet_grid, vgg_grid

    overrides = _parse_sets(args.set)
    seeds = args.seeds
    if args.preset:
        explicit = [o for o in ("family", "d1", "d2", "k", "width") if getattr(args, o)]
        if explicit:
            raise CLIError(f"--preset cannot be combined with --{explicit[0]}; give a preset or "
                           "an explicit grid")
        kwargs = {"seeds": seeds} if seeds else {}
        if args.dataset:
            kwargs["dataset"] = args.dataset
        configs = get_preset(args.preset, **kwargs)
        if overrides or args.train_subset:
            from dataclasses import replace

            configs = [replace(c, overrides={**c.overrides, **overrides},
                               train_subset=args.train_subset or c.train_subset) for c in configs]
        return configs
    if not args.family:
        raise CLIError("give --preset NAME or an explicit grid (--family with --d1 or --width)")
    common = dict(dataset=args.dataset or "cifar10", recipe=args.recipe, overrides=overrides,
                  train_subset=args.train_subset)
    seeds = seeds or [0]
    if args.family == "lenet":
        if not args.d1:
            raise CLIError("--family lenet needs --d1 (one or more widths)")
        if args.d2 and args.k:
            raise CLIError("give --d2 or --k, not both")
        if args.d2:
            from .sweep import TrialConfig

            return [TrialConfig("lenet", d1=d1, d2=d2, seed=s, **common)
                    for d1 in args.d1 for d2 in args.d2 for s in seeds]
        return lenet_grid(args.d1, args.k or [2.8], seeds, **common)
    if not args.width:
        raise CLIError("--family vgg16 needs --width (one or more multipliers)")
    return vgg_grid(args.width, seeds, batch_norm=args.bn, **common)


def _backend_options(items: Sequence[str] | None) -> dict[str, Any]:
    try:
        return _parse_sets(items)
    except CLIError as exc:
        raise CLIError(str(exc).replace("--set", "--backend-opt")) from None


def _do_sweep(configs, args: argparse.Namespace) -> Any:
    from .sweep import completed_ids, run_sweep

    results = Path(args.results)
    done = completed_ids(results)
    todo = [c for c in configs if c.trial_id not in done]
    root = _data_root(args, [c.dataset for c in todo], download=getattr(args, "download", False))
    print(f"sweep: {len(configs)} trials, {len(configs) - len(todo)} already in {results}, "
          f"{len(todo)} to run (backend {args.backend}, "
          f"{'workers ' + str(args.workers) if args.workers is not None else 'default workers'})",
          flush=True)
    from .sweep.backends import BackendUnavailable

    try:
        summary = run_sweep(configs, results, workers=args.workers, backend=args.backend,
                            data_root=root, progress=not args.no_progress,
                            backend_options=_backend_options(args.backend_opt),
                            trial_timeout=args.trial_timeout)
    except BackendUnavailable as exc:
        raise CLIError(str(exc)) from None
    print(summary.describe(), flush=True)
    return summary


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import estimate

    configs = _grid_configs(args)
    if args.dry_run:
        est = estimate(configs)
        for c in configs:
            print(f"{c.trial_id}  {c.label()}  recipe={c.recipe} {dict(c.overrides) or ''}")
        print(f"{est['trials']} trials {est['per_family']}, {est['epochs']} epochs in all, "
              f"~{est['train_macs']:.3g} training MACs")
        return 0
    summary = _do_sweep(configs, args)
    if args.index and Path(args.results).is_file():
        from .sweep import export_csv, index

        print(f"wrote {index(args.results)}\nwrote {export_csv(args.results)}")
    return 0 if summary.ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    from .sweep import get_preset, visible_gpus

    configs = get_preset("quick", dataset=args.dataset,
                         **({"seeds": args.seeds} if args.seeds else {}))
    if args.workers is None and not visible_gpus():
        # Two single-threaded workers rather than one with two threads: the trials are
        # independent, and OpenMP threads spin-waiting on a busy machine made a 2-thread
        # worker 5-20x slower than a 1-thread one in our measurements (docs/sweeps.md).
        args.workers = min(2, os.cpu_count() or 1)
    summary = _do_sweep(configs, args)
    records = _load_records(args.results)
    # The fit and plots use the same options as `fit` / `plot`, fixed to the quick sweep.
    for name, value in dict(family="lenet", dataset=configs[0].dataset, k=2.8, metric="test_error",
                            floor=False, formats=["png", "svg"]).items():
        setattr(args, name, value)
    wanted = {c.trial_id for c in configs}
    ours = [r for r in records if r["trial_id"] in wanted]
    print("\n== accuracy, FLOPs and latency per model ==")
    print(format_table(summary_rows(ours, args.metric), args.metric))
    fit = compute_fit(ours, args)
    print("\n== fitted law ==")
    print(describe_fit(fit))
    out_dir = Path(args.out_dir)
    _write_json(fit, out_dir / "fit.json")
    largest = max(configs, key=lambda c: c.d1)
    print(f"\n== profile of the largest model ({largest.label().rsplit(' seed', 1)[0]}, "
          f"batch 100, cpu) ==")
    print(_profile_table(largest, 100, "cpu", as_json=False))
    written = make_plots(records, args, fit)
    print("\n== outputs ==")
    print(f"results: {Path(args.results).resolve()}")
    print(f"fit:     {(out_dir / 'fit.json').resolve()}")
    for p in written:
        print(f"plot:    {p.resolve()}")
    return 0 if summary.ok else 1


def _bench_passthrough(argv: list[str]) -> list[str]:
    """Everything after ``bench`` except its own ``--dir DIR``; a leading ``--`` is dropped."""
    rest = argv[argv.index("bench") + 1:]
    out, i = [], 0
    while i < len(rest):
        if rest[i] == "--":
            out += rest[i + 1:]
            break
        if rest[i] == "--dir":
            i += 2
            continue
        if not rest[i].startswith("--dir="):
            out.append(rest[i])
        i += 1
    return out


def cmd_bench(args: argparse.Namespace) -> int:
    checkout = Path(__file__).resolve().parents[1]
    candidates = ([Path(args.dir)] if args.dir
                  else [Path.cwd() / "benchmarks", checkout / "benchmarks"])
    bench_dir = next((p for p in candidates if p.is_dir()), None)
    if bench_dir is None:
        raise CLIError(f"no benchmarks folder found (looked in {', '.join(map(str, candidates))}); "
                       "run from a source checkout or pass --dir")
    return subprocess.call([sys.executable, "-m", "pytest", str(bench_dir), *args.pytest_args])


# ----------------------------------------------------------------------------- parser


def _add_results(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--results", required=default is None, default=default, metavar="PATH",
                   help="JSONL results file" + (f" (default {default})" if default else ""))


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=("lenet", "vgg16"), default="lenet",
                   help="model family to fit (default lenet)")
    p.add_argument("--dataset", help="dataset to fit, if the file holds several")
    p.add_argument("--k", type=float, help="LeNet depth ratio d2/d1 to fit (default 2.8)")
    p.add_argument("--impl", choices=("shallowkern", "plain"), default="shallowkern",
                   help="which trials to fit (default shallowkern; see sweep --impl)")
    p.add_argument("--metric", choices=("test_error", "val_error", "train_error"),
                   default="test_error", help="which error to fit (default test_error)")
    p.add_argument("--floor", action="store_true",
                   help="fit error = A*x^-rho + eps_inf (needs >= 3 widths)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level (default 0.95)")


def _add_sweep_options(p: argparse.ArgumentParser, workers_default: str = "1") -> None:
    p.add_argument("--workers", type=int, help="CPU worker processes when there is no GPU "
                   f"(default {workers_default}; 0 runs in this process), each with cores/workers "
                   "threads. With GPUs: one per GPU")
    p.add_argument("--backend", choices=("local", "submitit", "ray"), default="local",
                   help="where trials run (default local)")
    p.add_argument("--backend-opt", action="append", metavar="KEY=VALUE",
                   help="option for submitit (executor parameters, folder) or ray "
                        "(num_gpus, address); repeatable")
    p.add_argument("--trial-timeout", type=float, metavar="SECONDS",
                   help="kill and report a trial running longer (local backend with workers; "
                        "the next run retries it)")
    p.add_argument("--data-root", help="dataset folder (default $SHALLOWKERN_DATA)")
    p.add_argument("--download", action="store_true",
                   help="download missing datasets from their official location")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Kernels, sweeps and scaling laws for wide shallow networks.",
        epilog="`shallowkern run --data-root DIR` runs the quick CIFAR-10 sweep end to end.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("profile", help="FLOPs, bytes and latency of a model, per layer",
                       description="Profile one model: per-layer FLOPs, bytes, latency.")
    p.add_argument("model", help="model spec: lenet:16, lenet:d1=16,k=2.8, lenet:d1=16,d2=45, "
                                 "vgg16:0.5, vgg16:width=0.5,bn")
    p.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or meta (FLOPs only)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--no-latency", action="store_true", help="count only, do not time")
    p.add_argument("--out", metavar="PATH", help="write to a file instead of stdout")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("sweep", help="run a resumable sweep (preset or explicit grid)",
                       description="Run every trial not yet in the results file. Rerun the same "
                                   "command to resume after a crash.")
    p.add_argument("--preset", choices=("quick", "paper"), help="a named sweep")
    p.add_argument("--family", choices=("lenet", "vgg16"), help="explicit grid: model family")
    p.add_argument("--d1", type=int, nargs="+", help="LeNet first-layer widths")
    p.add_argument("--d2", type=int, nargs="+", help="LeNet second-layer widths (instead of --k)")
    p.add_argument("--k", type=float, nargs="+", help="LeNet depth ratios d2/d1 (default 2.8)")
    p.add_argument("--width", type=float, nargs="+", help="VGG-16 width multipliers")
    p.add_argument("--bn", action="store_true", help="VGG-16 with BatchNorm")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: preset's, or 0)")
    p.add_argument("--dataset", help="cifar10 (default), mnist, fashion_mnist, synthetic, "
                                     "synthetic-N (N generated images: timing without files)")
    p.add_argument("--recipe", choices=("lab", "quick"), default="lab",
                   help="training recipe for an explicit grid (default lab)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="recipe override, e.g. --set epochs=10 --set lr=0.02; repeatable")
    p.add_argument("--train-subset", type=int, help="training images per trial")
    p.add_argument("--impl", choices=("shallowkern", "plain"), default="shallowkern",
                   help="shallowkern kernels + device-resident data (default), or the same "
                        "networks in plain PyTorch with a host DataLoader (the speedup baseline)")
    _add_results(p)
    _add_sweep_options(p)
    p.add_argument("--dry-run", action="store_true", help="list the trials and their cost only")
    p.add_argument("--index", action="store_true",
                   help="afterwards write <results>.sqlite and <results>.csv")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("fit", help="power law of error vs width, with bootstrap CI",
                       description="Fit error = A * d1^-rho (optionally + floor) to the results "
                                   "with a seed-bootstrap CI, a held-out check on the largest "
                                   "width, and the same law vs FLOPs. Prints it and writes JSON.")
    _add_results(p)
    _add_fit_options(p)
    p.add_argument("--out", metavar="PATH", help="JSON output (default <results>.fit.json)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("plot", help="PNG/SVG plots: error vs width, vs FLOPs, k-scan",
                       description="Error vs width on log-log axes with the fit and its CI "
                                   "band; error vs FLOPs with each family's Pareto frontier; "
                                   "the conservation-law k-scan where >= 3 k were run.")
    _add_results(p)
    _add_fit_options(p)
    p.add_argument("--out-dir", default="plots", help="output folder (default ./plots)")
    p.add_argument("--formats", nargs="+", default=["png", "svg"], choices=("png", "svg", "pdf"),
                   help="file formats (default png svg)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("report", help="summary table: error mean±std, FLOPs, latency per model",
                       description="One row per model configuration over its seeds.")
    _add_results(p)
    p.add_argument("--metric", choices=("test_error", "val_error", "train_error"),
                   default="test_error")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of the table")
    p.add_argument("--index", action="store_true",
                   help="also write <results>.sqlite and <results>.csv")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="run `pytest benchmarks/` (extra args passed through)",
                       description="Runs python -m pytest benchmarks/ ARGS...")
    p.add_argument("--dir", help="benchmarks folder (default ./benchmarks or the checkout's)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="arguments for pytest")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("run", help="the main job: quick CIFAR-10 sweep, fitted law, profile, plots",
                       description="Run the quick sweep (LeNet d1 in 4..32, k=2.8, 2 seeds, "
                                   "resumable), then print the fitted power law with its CI, "
                                   "the profile of the largest model, and where the plots are.")
    _add_results(p, default="shallowkern-quick.jsonl")
    _add_sweep_options(p, workers_default="min(2, cores)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1)")
    p.add_argument("--dataset", default="cifar10",
                   help="cifar10 (default); 'synthetic' smoke-tests the pipeline without data")
    p.add_argument("--out-dir", default=None,
                   help="plots and fit.json (default <results without .jsonl>_out/)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level (default 0.95)")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shallowkern`` console script and ``python -m shallowkern``."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # parse_known_args: `bench` passes options it does not know (-k, -q, ...) to pytest.
        args, unknown = parser.parse_known_args(argv)
        if args.command == "bench":
            args.pytest_args = _bench_passthrough(argv)
        elif unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:  # --help (0) or a usage error (2): keep main() returning an int
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "run" and args.out_dir is None:
        res = Path(args.results)
        args.out_dir = str(res.with_name(res.stem + "_out"))
    from .data import DataError
    from .sweep.backends import BackendUnavailable

    try:
        return int(args.func(args) or 0)
    except (CLIError, DataError, BackendUnavailable, ValueError, FileNotFoundError,
            ImportError) as exc:
        if os.environ.get("SHALLOWKERN_DEBUG"):
            raise
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted (finished trials are kept; rerun to resume)",
              file=sys.stderr)
        return 130
