"""The ``shallowkern`` command: profile, sweep, fit, plot, report, bench and run.

This module parses arguments, checks them, and dispatches; the work lives with its package:
records, tables and fits in ``shallowkern.reports``, plots in ``shallowkern.plot``, models in
``shallowkern.models.registry``, sweeps in ``shallowkern.sweep``, profiling in
``shallowkern.profile``.

``shallowkern run`` is the README's main job: the ``quick`` sweep (resumable), then the fitted
power law with its confidence interval, the profile table of the largest model, and the plots.

Every error is one line, ``shallowkern <cmd>: error: ...``, and a non-zero exit (2 for bad
input, 130 for Ctrl-C), not a traceback; set ``SHALLOWKERN_DEBUG=1`` to get the traceback
instead. Options are checked before any expensive work (a sweep, a fit, building a model).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CLIError", "build_parser", "main", "parse_model_spec"]

PROG = "shallowkern"
METRICS = ("test_error", "val_error", "train_error")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``shallowkern sweep: error: ...; see --help``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------- argument checks


def _positive_int(minimum: int = 1):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v
    parse.__name__ = "integer"
    return parse


def _level(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {v}")
    return v


def _parse_value(text: str) -> Any:
    """``--set`` values: JSON where it parses (4, 0.01, true, null), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_sets(items: Sequence[str] | None, flag: str = "--set") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return out


def _results_to_write(path: str | os.PathLike[str]) -> Path:
    """A results file the sweep can append to: a regular file or a new one in a folder."""
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"--results {p} is a directory; give a .jsonl file path")
    if p.exists() and not stat.S_ISREG(p.stat().st_mode):
        raise CLIError(f"--results {p} is not a regular file (a device or pipe cannot hold "
                       "results)")
    if p.exists() and not os.access(p, os.W_OK):
        raise CLIError(f"--results {p} is not writable")
    parent = next((a for a in p.absolute().parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise CLIError(f"--results {p}: {parent} is a file, not a folder")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK) and not p.exists():
        raise CLIError(f"--results {p}: cannot create files in {parent}")
    return p


def _out_file(path: str | os.PathLike[str], flag: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"{flag} {p} is a directory; give a file path")
    parent = next((a for a in p.absolute().parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise CLIError(f"{flag} {p}: {parent} is a file, not a folder")
    return p


def _out_dir(path: str | os.PathLike[str], flag: str = "--out-dir") -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CLIError(f"{flag} {p} is a file, not a folder")
    parent = next((a for a in p.absolute().parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise CLIError(f"{flag} {p}: {parent} is a file, not a folder")
    return p


def parse_model_spec(spec: str):
    """``lenet:16``, ``lenet:d1=16,k=2.8``, ``lenet:d1=16,d2=45``, ``vgg16:0.5``,
    ``vgg16:width=0.5,bn`` -> a TrialConfig (seed 0) describing that network. Any registered
    family works (``shallowkern.models.registry``)."""
    from .models.registry import families, parse_model_spec as parse
    from .sweep import TrialConfig

    try:
        fam, params = parse(spec)
        return TrialConfig(fam.name, params)
    except ValueError as exc:
        raise CLIError(f"model spec {spec!r}: {exc} (families: {', '.join(families())}; "
                       "examples: lenet:16, lenet:d1=16,k=2.8, vgg16:0.5,bn)") from None


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


def _print_problems(loaded) -> None:
    for line in loaded.problems:
        print(f"{PROG}: warning: {line}", file=sys.stderr)


def _load(path: str):
    from .reports import load_records

    loaded = load_records(path)
    _print_problems(loaded)
    return loaded


def _fit_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(family=args.family, dataset=args.dataset, group=args.k,
                impl=getattr(args, "impl", "shallowkern"), metric=args.metric,
                floor=args.floor, n_boot=args.n_boot, level=args.level,
                source=str(args.results))


def _check_family(name: str) -> None:
    from .models.registry import get_family

    try:
        get_family(name)
    except ValueError as exc:
        raise CLIError(f"--family: {exc}") from None


# ----------------------------------------------------------------------------- fit / report / plot


def cmd_fit(args: argparse.Namespace) -> int:
    from .reports import compute_fit, describe_fit, write_json

    _check_family(args.family)
    out = _out_file(args.out, "--out") if args.out else None
    loaded = _load(args.results)
    fit = compute_fit(loaded.records, **_fit_kwargs(args))
    print(describe_fit(fit))
    out = out or Path(args.results).with_suffix(".fit.json")
    print(f"wrote {write_json(fit, out)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .reports import format_diverged, format_speedups, format_table, speedup_rows
    from .reports import summary_rows, usable

    loaded = _load(args.results)
    if getattr(args, "study", False):  # the study report (shallowkern/reports/study.py)
        from .reports.study import write_study_report

        for p in write_study_report(loaded.records, args.out or "study_report",
                                    n_boot=args.n_boot, level=args.level):
            print(f"wrote {p}")
        return 0
    rows = summary_rows(loaded.records, args.metric)
    if args.json:
        print(json.dumps(rows, indent=2, default=float))
    else:
        print(format_table(rows, args.metric))
        speedups = speedup_rows(usable(loaded.records, args.metric))
        if speedups:
            print("\n== shallowkern vs plain PyTorch (same trials, seeds run both ways) ==")
            print(format_speedups(speedups))
        if loaded.diverged:
            print(f"\n== {len(loaded.diverged)} diverged trial(s): done (not retried unless "
                  "asked), never averaged ==")
            print(format_diverged(loaded.diverged))
    if args.index:
        from .sweep import export_csv, index

        print(f"wrote {index(args.results)}")
        print(f"wrote {export_csv(args.results)}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plot import make_plots
    from .reports import compute_fit

    _check_family(args.family)
    out_dir = _out_dir(args.out_dir)
    loaded = _load(args.results)
    fit = compute_fit(loaded.records, **_fit_kwargs(args))
    notes: list[str] = []
    for p in make_plots(loaded.records, fit, out_dir, formats=args.formats, metric=args.metric,
                        notes=notes):
        print(f"wrote {p}")
    for n in notes:
        print(f"{PROG}: note: {n}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- profile

_MEMORY_FRACTION = 0.8  # refuse a profile whose estimate exceeds this share of free memory


def _available_bytes(dev) -> int | None:
    """Free memory of ``dev``: MemAvailable on a CPU, cudaMemGetInfo on a GPU."""
    if dev.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(dev)[0])
    if dev.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def _profile_device(name: str):
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CLIError(f"--device {name!r}: not a device torch knows; use cpu, cuda or meta "
                       "(FLOPs only)") from None
    if dev.type not in ("cpu", "cuda", "meta"):
        raise CLIError(f"--device {name!r}: profile runs on cpu, cuda or meta (FLOPs only)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: no CUDA device is visible")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CLIError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def estimate_profile_memory(cfg, batch: int, input_shape=None) -> dict[str, int]:
    """Bytes an fp32 inference profile of ``cfg`` at ``batch`` needs at least: the weights, the
    input, and each conv/linear output alive once plus its activation (the family's cost hook,
    so nothing is built)."""
    input_shape = tuple(input_shape or cfg.family_spec.input_shape)
    acct = cfg.family_spec.account(cfg.params, input_shape)
    pixels = int(input_shape[0] * input_shape[1] * input_shape[2])
    need = 4 * (acct["params"] + batch * (pixels + 2 * acct["activations"]))
    return {"bytes": need, **acct}


def _check_fits(cfg, batch: int, dev, spec: str, input_shape) -> None:
    if dev.type == "meta":
        return
    est = estimate_profile_memory(cfg, batch, input_shape)
    avail = _available_bytes(dev)
    if avail is not None and est["bytes"] > _MEMORY_FRACTION * avail:
        raise CLIError(
            f"{spec} at batch {batch} needs about {_gib(est['bytes'])} on {dev.type} "
            f"({est['params']:,} parameters, {est['activations']:,} activations per image) "
            f"but {_gib(avail)} is free; use --device meta (FLOPs only, nothing allocated), a "
            "smaller width or a smaller --batch")


def _input_shape(text: str | None, cfg) -> tuple[int, int, int]:
    if text is None:
        return tuple(cfg.family_spec.input_shape)
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1 or shape[1] != shape[2]:
        raise CLIError(f"--input {text!r}: expected C,H,W with H = W, e.g. 3,32,32 or 1,28,28")
    return shape  # type: ignore[return-value]


def _profile_table(cfg, batch: int, device, as_json: bool, latency: bool = True,
                   input_shape=None) -> str:
    import torch

    from .profile import profile
    from .sweep import build_model

    c, h, w = input_shape or cfg.family_spec.input_shape
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(cfg, in_channels=c, input_size=h).eval()
        x = torch.randn(batch, c, h, w)
    res = profile(model, x, latency=latency and device.type != "meta")
    return res.to_json(indent=2) if as_json else res.table()


def cmd_profile(args: argparse.Namespace) -> int:
    out = _out_file(args.out, "--out") if args.out else None
    dev = _profile_device(args.device)
    cfg = parse_model_spec(args.model)
    shape = _input_shape(args.input, cfg)
    _check_fits(cfg, args.batch, dev, args.model, shape)
    text = _profile_table(cfg, args.batch, dev, args.json, latency=not args.no_latency,
                          input_shape=shape)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"wrote {out}")
    else:
        print(text)
    return 0


# ----------------------------------------------------------------------------- sweep / run


def _grid(args: argparse.Namespace) -> dict[str, list[Any]]:
    """``--grid KEY=V1,V2`` plus the shorthands (--d1, --d2, --k, --width, --bn)."""
    grid: dict[str, list[Any]] = {}
    for item in args.grid or ():
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise CLIError(f"--grid expects KEY=V1,V2,..., got {item!r}")
        key = key.strip().replace("-", "_")
        if key in grid:
            raise CLIError(f"--grid {key} is given twice")
        grid[key] = [_parse_value(v.strip()) for v in values.split(",") if v.strip()]
    for key in ("d1", "d2", "k", "width"):
        vals = getattr(args, key, None)
        if vals:
            if key in grid:
                raise CLIError(f"--{key} and --grid {key}=... both given")
            grid[key] = list(vals)
    if getattr(args, "bn", False):
        grid["batch_norm"] = [True]
    return grid


def _grid_configs(args: argparse.Namespace) -> list:
    """The trials a sweep asks for (preset or explicit grid), with --impl applied."""
    from dataclasses import replace
    from itertools import product

    from .models.registry import get_family
    from .sweep import TrialConfig, get_preset

    overrides = _parse_sets(args.set)
    seeds = args.seeds
    grid = _grid(args)
    if args.preset:
        explicit = ["--family"] * bool(args.family) + [f"--grid {k}" for k in grid]
        if explicit:
            raise CLIError(f"--preset cannot be combined with {explicit[0]}; give a preset or "
                           "an explicit grid")
        kwargs: dict[str, Any] = {"seeds": seeds} if seeds else {}
        if args.dataset:
            kwargs["dataset"] = args.dataset
        configs = get_preset(args.preset, **kwargs)
        if overrides or args.train_subset:
            configs = [replace(c, overrides={**c.overrides, **overrides},
                               train_subset=args.train_subset or c.train_subset)
                       for c in configs]
    else:
        if not args.family:
            raise CLIError("give --preset NAME or an explicit grid (--family with --d1, --width "
                           "or --grid KEY=V1,V2)")
        _check_family(args.family)
        fam = get_family(args.family)
        unknown = [k for k in grid if k not in fam.param_names]
        if unknown:
            flag = f"--{unknown[0]}" if unknown[0] in ("d1", "d2", "k", "width") else \
                f"--grid {unknown[0]}"
            raise CLIError(f"{flag} is not a parameter of {fam.name} (its parameters: "
                           f"{', '.join(fam.param_names)})")
        if fam.width_param not in grid and fam.param(fam.width_param).required:
            short = f"--{fam.width_param}" if fam.width_param in ("d1", "width") else ""
            raise CLIError(f"--family {fam.name} needs {short + ' or ' if short else ''}--grid "
                           f"{fam.width_param}=V1,V2 (one or more widths)")
        keys = [p for p in fam.param_names if p in grid]
        common = dict(dataset=args.dataset or "cifar10", recipe=args.recipe,
                      overrides=overrides, train_subset=args.train_subset)
        configs = []
        for combo in product(*(grid[k] for k in keys)):
            for s in seeds or [0]:
                try:
                    configs.append(TrialConfig(fam.name, dict(zip(keys, combo)), seed=s,
                                               **common))
                except ValueError as exc:
                    raise CLIError(str(exc)) from None
    impl = getattr(args, "impl", "shallowkern")
    if impl != "shallowkern":
        configs = [replace(c, impl=impl) for c in configs]
    _check_subsets(configs)
    return configs


def _check_subsets(configs: Sequence) -> None:
    """An asked-for training subset larger than what the dataset has is an error, not a clamp."""
    from .sweep.config import train_images

    for c in configs:
        n = train_images(c.dataset)
        r = c.resolved_recipe()
        if n is not None and r.val_size >= n:
            raise CLIError(f"{c.dataset} has {n:,} training images, not more than the "
                           f"{r.val_size:,} recipe {c.recipe!r} holds out for validation; lower "
                           "it with --set val_size=N")
        if c.train_subset is None and "train_subset" not in c.overrides:
            continue  # the recipe's own subset is a cap, as documented
        if n is not None and r.train_subset is not None and r.train_subset > n - r.val_size:
            raise CLIError(f"--train-subset {r.train_subset} is larger than the {n - r.val_size:,} "
                           f"training images {c.dataset} has left after {r.val_size:,} for "
                           "validation")


def _backend_options(items: Sequence[str] | None) -> dict[str, Any]:
    return _parse_sets(items, flag="--backend-opt")


def _do_sweep(configs, args: argparse.Namespace) -> Any:
    import inspect

    from .sweep import completed_ids, run_sweep
    from .sweep.backends import BackendUnavailable

    results = Path(args.results)
    done = completed_ids(results)
    todo = [c for c in configs if c.trial_id not in done]
    root = _data_root(args, [c.dataset for c in todo], download=getattr(args, "download", False))
    print(f"sweep: {len(configs)} trials, {len(configs) - len(todo)} already in {results}, "
          f"{len(todo)} to run (backend {args.backend}, "
          f"{'workers ' + str(args.workers) if args.workers is not None else 'default workers'})",
          flush=True)
    extra = {}
    if getattr(args, "retry_diverged", False):
        if "retry_diverged" not in inspect.signature(run_sweep).parameters:
            raise CLIError("--retry-diverged: this version of the scheduler cannot retry")
        extra["retry_diverged"] = True
    try:
        if getattr(args, "pack", 1) > 1:  # packed trials run in this process (sweep/packed.py)
            if args.backend != "local" or args.trial_timeout is not None:
                raise CLIError("--pack runs in this process: not with --backend other than "
                               "local, nor with --trial-timeout")
            from .sweep.packed import run_packed_sweep

            summary = run_packed_sweep(configs, results, pack=args.pack, data_root=root,
                                       progress=not args.no_progress, **extra)
            print(summary.describe(), flush=True)
            return summary
        summary = run_sweep(configs, results, workers=args.workers, backend=args.backend,
                            data_root=root, progress=not args.no_progress,
                            backend_options=_backend_options(args.backend_opt),
                            trial_timeout=args.trial_timeout, **extra)
    except BackendUnavailable as exc:
        raise CLIError(str(exc)) from None
    print(summary.describe(), flush=True)
    return summary


def _list_presets() -> int:
    from .reports import render_table
    from .sweep.presets import PRESETS, describe_preset

    print(render_table(["preset", "trials", "description"],
                       [[n, str(len(PRESETS[n]())), describe_preset(n)] for n in PRESETS], left=3))
    return 0


def _list_families() -> int:
    from .models.registry import families, get_family
    from .reports import render_table

    def spec(p) -> str:
        default = "required" if p.required else ("-" if p.default is None else p.default)
        return f"{p.name}={default}"

    rows = []
    for name in families():
        fam = get_family(name)
        rows.append([name, fam.width_param, " ".join(spec(p) for p in fam.params),
                     fam.description])
    print(render_table(["family", "width", "parameters (defaults)", "description"], rows,
                       left=4))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import estimate

    if args.list_presets:
        return _list_presets()
    if args.list_families:
        return _list_families()
    configs = _grid_configs(args)
    if args.dry_run:
        est = estimate(configs)
        for c in configs:
            print(f"{c.trial_id}  {c.label()}  recipe={c.recipe} {dict(c.overrides) or ''}")
        print(f"{est['trials']} trials {est['per_family']}, {est['epochs']} epochs in all, "
              f"~{est['train_macs']:.3g} training MACs")
        from .sweep.presets import estimate_time

        t = estimate_time(configs)
        print(f"estimated wall time on this project's 2-core VM, 2 single-threaded workers "
              f"(a guide from one-thread step times measured on an idle machine where a network "
              f"has one, else from MACs; scripts/measure_step_times.py, docs/study.md): "
              f"~{t['hours_single']:.2f} h one trial at a time, ~{t['hours_packed']:.2f} h "
              f"with --pack 4 (the packing ratios were measured with 3 trials, the seeds of "
              f"a network)")
        return 0
    if not args.results:
        raise CLIError("--results PATH is required (except with --dry-run or --list-presets)")
    _results_to_write(args.results)
    summary = _do_sweep(configs, args)
    if args.index and Path(args.results).is_file():
        from .sweep import export_csv, index

        print(f"wrote {index(args.results)}\nwrote {export_csv(args.results)}")
    return 0 if summary.ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    from .plot import make_plots
    from .reports import compute_fit, describe_fit, format_table, summary_rows, write_json
    from .sweep import get_preset, visible_gpus

    # Everything that can be wrong with the options is found here, before the sweep.
    _results_to_write(args.results)
    out_dir = _out_dir(args.out_dir)
    configs = get_preset("quick", dataset=args.dataset,
                         **({"seeds": args.seeds} if args.seeds else {}))
    if args.workers is None and not visible_gpus():
        # Two single-threaded workers rather than one with two threads: the trials are
        # independent, and OpenMP threads spin-waiting on a busy machine made a 2-thread
        # worker 5-20x slower than a 1-thread one in our measurements (docs/sweeps.md).
        args.workers = min(2, os.cpu_count() or 1)
    summary = _do_sweep(configs, args)
    loaded = _load(args.results)
    wanted = {c.trial_id for c in configs}
    ours = [r for r in loaded.records if r["trial_id"] in wanted]
    if not ours:
        raise CLIError(f"no trial of the quick sweep finished in {args.results}")
    print("\n== accuracy, FLOPs and latency per model ==")
    print(format_table(summary_rows(ours, "test_error"), "test_error"))
    fit = compute_fit(ours, family="lenet", dataset=configs[0].dataset, group=2.8,
                      metric="test_error", n_boot=args.n_boot, level=args.level,
                      source=str(args.results))
    print("\n== fitted law ==")
    print(describe_fit(fit))
    fit_path = write_json(fit, out_dir / "fit.json")
    largest = max(configs, key=lambda c: c.d1)
    print(f"\n== profile of the largest model ({largest.label().rsplit(' seed', 1)[0]}, "
          f"batch 100, cpu) ==")
    import torch

    print(_profile_table(largest, 100, torch.device("cpu"), as_json=False))
    notes: list[str] = []
    written = make_plots(loaded.records, fit, out_dir, formats=("png", "svg"), notes=notes)
    for n in notes:
        print(f"{PROG}: note: {n}", file=sys.stderr)
    print("\n== outputs ==")
    print(f"results: {Path(args.results).resolve()}")
    print(f"fit:     {fit_path.resolve()}")
    for p in written:
        print(f"plot:    {p.resolve()}")
    return 0 if summary.ok else 1


# ----------------------------------------------------------------------------- bench


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
    missing = [m for m in ("pytest", "pytest_benchmark") if importlib.util.find_spec(m) is None]
    if missing:
        raise CLIError(f"bench needs {' and '.join(m.replace('_', '-') for m in missing)}: "
                       "pip install 'shallowkern[test]' (or pip install pytest pytest-benchmark)")
    return subprocess.call([sys.executable, "-m", "pytest", str(bench_dir), *args.pytest_args])


# ----------------------------------------------------------------------------- parser


def _add_results(p: argparse.ArgumentParser, default: str | None = None,
                 required: bool = True) -> None:
    p.add_argument("--results", required=required and default is None, default=default,
                   metavar="PATH",
                   help="JSONL results file" + (f" (default {default})" if default else ""))


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", default="lenet",
                   help="model family to fit (default lenet; any registered family)")
    p.add_argument("--dataset", help="dataset to fit, if the file holds several")
    p.add_argument("--k", "--group", dest="k", type=float, metavar="VALUE",
                   help="value of the family's fit group to fit (a parameter whose values are "
                        "never mixed in one fit): LeNet's depth ratio k = d2/d1 (default 2.8)")
    p.add_argument("--impl", choices=("shallowkern", "plain"), default="shallowkern",
                   help="which trials to fit (default shallowkern; see sweep --impl)")
    p.add_argument("--metric", choices=METRICS, default="test_error",
                   help="which error to fit (default test_error)")
    p.add_argument("--floor", action="store_true",
                   help="fit error = A*x^-rho + eps_inf (needs >= 3 widths)")
    _add_boot(p)


def _add_boot(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-boot", type=_positive_int(2), default=1000,
                   help="bootstrap resamples, >= 2 (default 1000)")
    p.add_argument("--level", type=_level, default=0.95,
                   help="confidence level in (0, 1) (default 0.95)")


def _add_sweep_options(p: argparse.ArgumentParser, workers_default: str = "1") -> None:
    p.add_argument("--workers", type=_positive_int(0),
                   help=f"CPU worker processes when there is no GPU (default {workers_default}; "
                        "0 runs in this process), each with cores/workers threads. With GPUs: "
                        "one per GPU")
    p.add_argument("--backend", choices=("local", "submitit", "ray"), default="local",
                   help="where trials run (default local)")
    p.add_argument("--backend-opt", action="append", metavar="KEY=VALUE",
                   help="option for submitit (executor parameters, folder) or ray "
                        "(num_gpus, address); repeatable")
    p.add_argument("--trial-timeout", type=float, metavar="SECONDS",
                   help="kill and report a trial running longer (local backend with workers; "
                        "the next run retries it)")
    p.add_argument("--retry-diverged", action="store_true",
                   help="run diverged trials again (by default a diverged trial is done)")
    p.add_argument("--data-root", help="dataset folder (default $SHALLOWKERN_DATA)")
    p.add_argument("--download", action="store_true",
                   help="download missing datasets from their official location")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shallowkern")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0.1.0"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Kernels, sweeps and scaling laws for wide shallow networks.",
        epilog="`shallowkern run --data-root DIR` runs the quick CIFAR-10 sweep end to end.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("profile", help="FLOPs, bytes and latency of a model, per layer",
                       description="Profile one model: per-layer FLOPs, bytes, latency. The "
                                   "memory it needs is estimated first; a model that will not "
                                   "fit is refused (use --device meta for FLOPs only).")
    p.add_argument("model", help="model spec FAMILY:WIDTH[,KEY=VALUE...]: lenet:16, "
                                 "lenet:d1=16,k=2.8, lenet:d1=16,d2=45, vgg16:0.5, "
                                 "vgg16:width=0.5,bn")
    p.add_argument("--batch", type=_positive_int(1), default=100, help="batch size (default 100)")
    p.add_argument("--device", default="cpu", help="cpu, cuda[:N] or meta (FLOPs only)")
    p.add_argument("--input", metavar="C,H,W",
                   help="image shape (default the family's, 3,32,32 for CIFAR models)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--no-latency", action="store_true", help="count only, do not time")
    p.add_argument("--out", metavar="PATH", help="write to a file instead of stdout")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("sweep", help="run a resumable sweep (preset or explicit grid)",
                       description="Run every trial not yet done in the results file. Rerun "
                                   "the same command to resume after a crash.")
    p.add_argument("--preset", help="a named sweep (--list-presets shows them)")
    p.add_argument("--list-presets", action="store_true",
                   help="list the presets with their size and a one-line description")
    p.add_argument("--family", help="explicit grid: a registered model family (lenet, vgg16, "
                                    "...; --list-families shows them)")
    p.add_argument("--list-families", action="store_true",
                   help="list the model families with their parameters and defaults")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                   help="explicit grid: values of one family parameter, e.g. --grid d1=4,8,16; "
                        "repeatable (every combination runs)")
    p.add_argument("--d1", type=int, nargs="+", help="LeNet first-layer widths")
    p.add_argument("--d2", type=int, nargs="+", help="LeNet second-layer widths (instead of --k)")
    p.add_argument("--k", type=float, nargs="+", help="LeNet depth ratios d2/d1 (default 2.8)")
    p.add_argument("--width", type=float, nargs="+", help="VGG-16 width multipliers")
    p.add_argument("--bn", action="store_true", help="VGG-16 with BatchNorm")
    p.add_argument("--seeds", type=_positive_int(0), nargs="+",
                   help="seeds (default: preset's, or 0)")
    p.add_argument("--dataset", help="cifar10 (default), mnist, fashion_mnist, synthetic, "
                                     "synthetic-N (N generated images: timing without files)")
    p.add_argument("--recipe", choices=("lab", "quick"), default="lab",
                   help="training recipe for an explicit grid (default lab)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="recipe override, e.g. --set epochs=10 --set lr=0.02; repeatable")
    p.add_argument("--train-subset", type=_positive_int(1),
                   help="training images per trial (at most what the dataset has)")
    p.add_argument("--impl", choices=("shallowkern", "plain"), default="shallowkern",
                   help="shallowkern kernels + device-resident data (default), or the same "
                        "networks in plain PyTorch with a host DataLoader (the speedup baseline)")
    _add_results(p, required=False)
    _add_sweep_options(p)
    p.add_argument("--dry-run", action="store_true",
                   help="list the trials and their cost only (no --results needed)")
    p.add_argument("--index", action="store_true",
                   help="afterwards write <results>.sqlite and <results>.csv")
    p.add_argument("--pack", type=_positive_int(1), default=1, metavar="N",
                   help="train up to N seeds of one network at once in this process (grouped "
                        "convs), where that was measured faster than one at a time (LeNet d1 <= "
                        "8 here; sweep.presets.packing_gain); records of a pack are written "
                        "when it finishes; run two such commands for two cores; docs/study.md")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("fit", help="power law of error vs width, with bootstrap CI",
                       description="Fit error = A * width^-rho (optionally + floor) to the "
                                   "usable results (diverged trials are left out) with a "
                                   "seed-bootstrap CI, a held-out check on the largest width, "
                                   "and the same law vs FLOPs. Prints it and writes JSON.")
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
                       description="One row per model configuration over its usable seeds; "
                                   "diverged trials are counted and listed, never averaged.")
    _add_results(p)
    p.add_argument("--metric", choices=METRICS, default="test_error")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of the table")
    p.add_argument("--index", action="store_true",
                   help="also write <results>.sqlite and <results>.csv")
    p.add_argument("--study", action="store_true",
                   help="write the study report (Markdown + PNG/SVG figures: width law with CI "
                        "and floor, k-scan, LeNet vs VGG-16 FLOPs to error, pilot) into --out")
    p.add_argument("--out", metavar="DIR", help="folder of --study (default ./study_report)")
    _add_boot(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="run `pytest benchmarks/` (extra args passed through)",
                       description="Runs python -m pytest benchmarks/ ARGS... (needs pytest and "
                                   "pytest-benchmark: pip install 'shallowkern[test]')")
    p.add_argument("--dir", help="benchmarks folder (default ./benchmarks or the checkout's)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="arguments for pytest")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("run", help="the main job: quick CIFAR-10 sweep, fitted law, profile, plots",
                       description="Run the quick sweep (LeNet d1 in 4..32, k=2.8, 2 seeds, "
                                   "resumable), then print the fitted power law with its CI, "
                                   "the profile of the largest model, and where the plots are.")
    _add_results(p, default="shallowkern-quick.jsonl")
    _add_sweep_options(p, workers_default="min(2, cores)")
    p.add_argument("--seeds", type=_positive_int(0), nargs="+", help="seeds (default 0 1)")
    p.add_argument("--dataset", default="cifar10",
                   help="cifar10 (default); 'synthetic' smoke-tests the pipeline without data")
    p.add_argument("--out-dir", default=None,
                   help="plots and fit.json (default <results without .jsonl>_out/)")
    _add_boot(p)
    p.set_defaults(func=cmd_run)

    from .afcc.cli import add_parser as add_prune_parser  # `prune`: shallowkern/afcc/cli.py

    add_prune_parser(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text += f": {exc.filename}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shallowkern`` console script and ``python -m shallowkern``."""
    debug = bool(os.environ.get("SHALLOWKERN_DEBUG"))
    command = "?"
    try:
        parser = build_parser()
        argv = list(sys.argv[1:] if argv is None else argv)
        try:
            # parse_known_args: `bench` passes options it does not know (-k, -q, ...) to pytest.
            args, unknown = parser.parse_known_args(argv)
            if args.command == "bench":
                args.pytest_args = _bench_passthrough(argv)
            elif unknown:
                parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        except SystemExit as exc:  # --help (0) or a usage error (2): keep returning an int
            return int(exc.code or 0)
        if args.command is None:
            parser.print_help()
            return 2
        command = args.command
        if args.command == "run" and args.out_dir is None:
            res = Path(args.results)
            args.out_dir = str(res.with_name(res.stem + "_out"))
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `shallowkern report ... | head`: the reader left; not an error
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the exit flush is silent
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{PROG} {command}: interrupted (finished trials are kept; rerun to resume)",
              file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error is one line unless debugging
        if debug:
            raise
        expected = isinstance(exc, (CLIError, ValueError, OSError, ImportError)) or \
            type(exc).__name__ in ("DataError", "BackendUnavailable")
        what = "" if expected else f"{type(exc).__name__}: "
        hint = "" if expected else " (an internal error: SHALLOWKERN_DEBUG=1 shows the traceback)"
        print(f"{PROG} {command}: error: {what}{_one_line(exc)}{hint}", file=sys.stderr)
        return 2 if expected else 1
