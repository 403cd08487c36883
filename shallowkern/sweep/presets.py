"""Named sweeps: ``quick`` (minutes on a CPU) and ``paper`` (the full study, for GPUs).

quick — generalized LeNet on CIFAR-10, d1 in {4, 8, 16, 32}, k = 2.8, 2 seeds, the ``quick``
    recipe (8 epochs on a stratified 10,000-image training subset, 1,000 validation images,
    the full 10,000-image test set). 8 trials; see docs/sweeps.md for the measured time.
main — the README's main job (scripts/main.sh): ``quick`` plus VGG-16 (BatchNorm) at widths
    1/16 and 1/8, seed 0, the same recipe, so one error-vs-FLOPs frontier holds both families.
    Longest trials first, so two workers finish together.
paper — generalized LeNet, d1 in {6, 16, 32, 64, 128, 256, 512, 768} x k in {2.0, 2.8, 4.0},
    3 seeds (72 trials), plus width-scaled VGG-16 (with BatchNorm) at width in
    {0.125, 0.25, 0.5, 1.0} (8 to 64 first-layer filters), 3 seeds (12 trials); all with the
    ``lab`` recipe (100 epochs on 45,000 images, 5,000 held out for validation).
study-pilot — the curves that choose the study's epoch count: LeNet d1 in {4, 16, 64} and
    VGG-16 bn width 1/8, seed 0, the study's schedule run for PILOT_EPOCHS epochs; its
    *validation* curves (records' ``history``) give the epoch count
    (``shallowkern.reports.study.choose_epochs``), never the test error.
study — the converged study sized for a 2-core CPU (docs/study.md): LeNet d1 in STUDY_D1 (4..64,
    1.2 decades, sqrt(2) steps), k = 2.8, 3 seeds; a k-scan at d1 = 16, k in {1, 2, 4, 8} (2.8
    is in the width grid), 3 seeds; width-scaled VGG-16 (BatchNorm) at widths 1/32, 1/16, 1/8,
    3 seeds. All on the full training set less 5,000 validation images, the ``lab`` optimiser
    with the study schedule (STUDY_LR_STEP), STUDY_EPOCHS epochs unless ``--set epochs=N``.
"""

from __future__ import annotations

import math

from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import product
from typing import Any

from .config import TrialConfig, canonical_json

__all__ = ["PRESETS", "describe_preset", "estimate", "estimate_time", "get_preset", "lenet_grid",
           "main", "paper", "quick", "register_preset", "step_key", "study", "study_pilot",
           "vgg_grid"]


def lenet_grid(d1s: Iterable[int], ks: Iterable[float] = (2.8,), seeds: Iterable[int] = (0,), *,
               dataset: str = "cifar10", recipe: str = "lab",
               overrides: Mapping[str, Any] | None = None,
               train_subset: int | None = None) -> list[TrialConfig]:
    """Every (d1, k, seed) combination of a generalized LeNet, seeds innermost."""
    return [TrialConfig("lenet", d1=d1, k=k, dataset=dataset, recipe=recipe,
                        overrides=dict(overrides or {}), seed=s, train_subset=train_subset)
            for d1, k, s in product(d1s, ks, seeds)]


def vgg_grid(widths: Iterable[float], seeds: Iterable[int] = (0,), *, batch_norm: bool = True,
             dataset: str = "cifar10", recipe: str = "lab",
             overrides: Mapping[str, Any] | None = None,
             train_subset: int | None = None) -> list[TrialConfig]:
    """Every (width, seed) combination of the width-scaled VGG-16."""
    return [TrialConfig("vgg16", width=w, batch_norm=batch_norm, dataset=dataset, recipe=recipe,
                        overrides=dict(overrides or {}), seed=s, train_subset=train_subset)
            for w, s in product(widths, seeds)]


QUICK_D1 = (4, 8, 16, 32)
PAPER_D1 = (6, 16, 32, 64, 128, 256, 512, 768)
PAPER_K = (2.0, 2.8, 4.0)
PAPER_VGG_WIDTHS = (0.125, 0.25, 0.5, 1.0)


def quick(seeds: Sequence[int] = (0, 1), dataset: str = "cifar10") -> list[TrialConfig]:
    return lenet_grid(QUICK_D1, (2.8,), seeds, dataset=dataset, recipe="quick")


MAIN_VGG_WIDTHS = (0.125, 0.0625)  # longest first


def main(seeds: Sequence[int] = (0, 1), dataset: str = "cifar10") -> list[TrialConfig]:
    """``quick`` and two small VGG-16s in one sweep, longest trials first."""
    lenets = sorted(quick(seeds, dataset), key=lambda c: -c.d1)  # stable: seeds stay in order
    return vgg_grid(MAIN_VGG_WIDTHS, (0,), dataset=dataset, recipe="quick") + lenets


def paper(seeds: Sequence[int] = (0, 1, 2), dataset: str = "cifar10") -> list[TrialConfig]:
    return (lenet_grid(PAPER_D1, PAPER_K, seeds, dataset=dataset, recipe="lab")
            + vgg_grid(PAPER_VGG_WIDTHS, seeds, dataset=dataset, recipe="lab"))


# The study (issue 15). The schedule is the lab optimiser with lr halved every STUDY_LR_STEP
# epochs; the pilot runs it for PILOT_EPOCHS and the study stops at STUDY_EPOCHS, so a study
# trial follows exactly the first STUDY_EPOCHS epochs of the pilot's schedule. STUDY_EPOCHS is
# provisional until the pilot has run: replace it by what choose_epochs says (or pass
# --set epochs=N), and say so in docs/study.md.
STUDY_D1 = (4, 6, 8, 11, 16, 23, 32, 45, 64)
STUDY_K_D1 = 16
STUDY_K = (1.0, 2.0, 4.0, 8.0)  # plus 2.8, already in the width grid at d1 = 16
STUDY_VGG_WIDTHS = (0.03125, 0.0625, 0.125)
STUDY_LR_STEP = 4
STUDY_EPOCHS = 26
PILOT_EPOCHS = 28
PILOT_D1 = (4, 16, 64)


def _study_overrides(epochs: int) -> dict[str, Any]:
    return {"epochs": epochs, "lr_step": STUDY_LR_STEP}


def study(seeds: Sequence[int] = (0, 1, 2), dataset: str = "cifar10",
          epochs: int = STUDY_EPOCHS) -> list[TrialConfig]:
    """The study sized for this machine (see the module docstring and docs/study.md)."""
    o = _study_overrides(epochs)
    # Seed-major: the study spans sessions, so after each seed the records already hold one
    # whole law, k-scan and frontier (trial ids do not depend on the order).
    out: list[TrialConfig] = []
    for s in seeds:
        out += (lenet_grid(STUDY_D1, (2.8,), (s,), dataset=dataset, recipe="lab", overrides=o)
                + lenet_grid((STUDY_K_D1,), STUDY_K, (s,), dataset=dataset, recipe="lab",
                             overrides=o)
                + vgg_grid(STUDY_VGG_WIDTHS, (s,), dataset=dataset, recipe="lab", overrides=o))
    return out


def study_pilot(seeds: Sequence[int] = (0,), dataset: str = "cifar10") -> list[TrialConfig]:
    """The pilot whose validation curves choose the study's epoch count."""
    o = _study_overrides(PILOT_EPOCHS)
    return (lenet_grid(PILOT_D1, (2.8,), seeds, dataset=dataset, recipe="lab", overrides=o)
            + vgg_grid((0.125,), seeds, dataset=dataset, recipe="lab", overrides=o))


PRESETS: dict[str, Callable[..., list[TrialConfig]]] = {
    "quick": quick, "main": main, "paper": paper, "study": study, "study-pilot": study_pilot}
_DESCRIPTIONS: dict[str, str] = {
    "quick": "LeNet d1 in {4,8,16,32}, k=2.8, 2 seeds, quick recipe (8 epochs, 10k images): "
             "minutes on a CPU",
    "main": "quick + VGG-16 bn widths 1/16 and 1/8 (seed 0, quick recipe), longest first: the "
            "README's main job",
    "paper": "LeNet d1 6..768 x k {2,2.8,4} + VGG-16 bn width 1/8..1, 3 seeds, lab recipe "
             "(100 epochs): the full study (GPU)",
    "study": f"LeNet d1 4..64 + k-scan at d1=16 + VGG-16 bn 1/32..1/8, 3 seeds, 45k images, "
             f"{STUDY_EPOCHS} epochs (provisional): the CPU study",
    "study-pilot": f"LeNet d1 {{4,16,64}} + VGG-16 bn 1/8, seed 0, {PILOT_EPOCHS} epochs: "
                   "curves choosing the study's epochs",
}


# Measured training step times on this project's 2-core AMD EPYC (Zen 4) VM: one step of batch
# 100 with the lab optimiser, one thread (= one sweep worker), ms, by ``step_key``;
# ``OMP_NUM_THREADS=1 python scripts/measure_step_times.py`` on an idle machine prints this table
# (MEASURED_STEP_WHEN says when). estimate_time uses it where a network is listed, else the MAC
# model. STEP_OVERHEAD is the rest of a real epoch over its training steps (augmenting loader,
# validation pass, bookkeeping): 1.14-1.25 in the study's first LeNet records (d1 = 4..11).
MEASURED_STEP_MS: dict[str, float] = {
    'lenet d1=4 k=2.8': 4.5, 'lenet d1=6 k=2.8': 5.7, 'lenet d1=8 k=2.8': 6.5,
    'lenet d1=11 k=2.8': 8.9, 'lenet d1=16 k=2.8': 12.7, 'lenet d1=23 k=2.8': 27.7,
    'lenet d1=32 k=2.8': 40.7, 'lenet d1=45 k=2.8': 78.9, 'lenet d1=64 k=2.8': 130.2,
    'lenet d1=16 k=1': 8.1, 'lenet d1=16 k=2': 10.0, 'lenet d1=16 k=4': 16.3,
    'lenet d1=16 k=8': 27.2,
    'vgg16 width=0.03125 bn': 26.9, 'vgg16 width=0.0625 bn': 47.8, 'vgg16 width=0.125 bn': 78.2,
}
MEASURED_STEP_WHEN = ("2026-11-30 10:55 UTC, torch 2.13.0+cpu, commit 560d0c0 (direct sparse "
                      "backward), --steps 20, through /tmp/quiet.sh")
STEP_OVERHEAD = 1.2


def step_key(cfg: TrialConfig) -> str:
    """The network of a trial, without seed and recipe: what a measured step time describes."""
    return cfg.label().rsplit(" seed=", 1)[0]


# Packed-over-single training throughput by d1 for packs of 3 (the study's seeds):
# `OMP_NUM_THREADS=1 python -m shallowkern.sweep.packed 3 4 6 8 11 16` (loaders included) on this
# project's 2-core VM, 1 thread (one sweep worker), through /tmp/quiet.sh, 2026-11-30 11:27 UTC (3
# groups in 4 lane slots; docs/study.md "Packing"). Packs of 4 measured 1.38 / 1.14 / 1.06 / 0.99
# at d1 = 4 / 8 / 11 / 16. Widths not listed: interpolated (packing_gain).
MEASURED_PACK_SPEEDUP: dict[int, float] = {4: 1.36, 6: 1.10, 8: 1.12, 11: 1.00, 16: 1.02}
# Below this measured gain packing is not used (run-to-run spread of these ratios: ~3 %).
PACK_MIN_GAIN = 1.05


def packing_gain(cfg: TrialConfig, table: Mapping[int, float] | None = None) -> float:
    """Packed-over-single throughput of ``cfg``'s network: for LeNet, ``table`` (default
    ``MEASURED_PACK_SPEEDUP``) by d1, linear in log d1 between measured widths, the smallest
    width's value below them; 1.0 (packing not used) above the largest measured width, where it
    is below ``PACK_MIN_GAIN``, and for other families (VGG-16's grouped oneDNN convs were
    0.06-0.38x)."""
    table = MEASURED_PACK_SPEEDUP if table is None else table
    if cfg.family != "lenet" or not table:
        return 1.0
    d, pts = cfg.d1, sorted(table.items())
    if d <= pts[0][0]:
        v = pts[0][1]
    elif d > pts[-1][0]:
        v = 1.0
    else:
        (a, va), (b, vb) = next((p, q) for p, q in zip(pts, pts[1:]) if p[0] <= d <= q[0])
        v = va + (vb - va) * (math.log(d) - math.log(a)) / (math.log(b) - math.log(a))
    return v if v >= PACK_MIN_GAIN else 1.0


def estimate_time(configs: Sequence[TrialConfig], mac_rate: float = 50e9,
                  step_overhead_s: float = 4e-3, pack_speedup: Mapping[int, float] | None = None,
                  n_train_full: int | None = None, workers: int = 2,
                  step_ms: Mapping[str, float] | None = None) -> dict[str, float]:
    """Wall hours of a sweep on ``workers`` single-threaded CPU workers, one trial at a time
    and packed.

    A CIFAR-10 network listed in ``MEASURED_STEP_MS`` (or ``step_ms``) costs its measured
    one-thread step time per 100 training images times ``STEP_OVERHEAD``. Any other, per image:
    ``3 * forward MACs / mac_rate`` (training = forward + two backward GEMMs) plus
    ``step_overhead_s / batch`` (the host overhead of one optimiser step), plus one validation
    pass per epoch (forward only). ``mac_rate`` (per single-threaded worker, in these 3 x
    forward-MAC units; the fused kernels skip 3/4 of the backward work behind a max-pool, so it
    exceeds the hardware's MAC rate) comes from the quick run measured on this project's 2-core
    VM (docs/sweeps.md: LeNet d1 = 32, 80,000 training images in 39 s wall per trial, 2 workers
    x 1 thread, including evaluation): a rough guide extrapolated from small widths, not a
    promise (docs/study.md). Packing divides a trial's time by ``packing_gain(cfg)`` (measured,
    interpolated in d1; 1.0 where packing is not used).
    """
    from .config import train_images

    speed = dict(MEASURED_PACK_SPEEDUP if pack_speedup is None else pack_speedup)
    steps = MEASURED_STEP_MS if step_ms is None else step_ms
    single = packed = 0.0
    for cfg in configs:
        r = cfg.resolved_recipe()
        full = n_train_full or train_images(cfg.dataset) or 50000
        n = max(0, min(r.train_subset or full, full - r.val_size))
        shape = _image_shape(cfg.dataset, cfg.family_spec.input_shape)
        ms = steps.get(step_key(cfg)) if cfg.dataset == "cifar10" else None
        if ms is not None:  # measured: training steps (scaled to the batch) plus the rest
            per_epoch = n / 100 * ms * 1e-3 * STEP_OVERHEAD
        else:
            macs = cfg.family_spec.account(cfg.params, shape)["macs"]
            per_epoch = (n * (3 * macs / mac_rate + step_overhead_s / r.batch_size)
                         + r.val_size * (macs / mac_rate + step_overhead_s / r.eval_batch_size))
        t = per_epoch * r.epochs
        single += t
        packed += t / packing_gain(cfg, speed)
    w = max(1, workers)
    return {"hours_single": single / 3600 / w, "hours_packed": packed / 3600 / w}


def register_preset(name: str, build: Callable[..., list[TrialConfig]], description: str, *,
                    replace: bool = False) -> None:
    """Add a named sweep: ``build(seeds=..., dataset=...) -> [TrialConfig]`` and a one-line
    description (shown by ``shallowkern sweep --list-presets``)."""
    if name in PRESETS and not replace:
        raise ValueError(f"preset {name!r} already exists (replace=True to redefine it)")
    if not description or "\n" in description:
        raise ValueError(f"preset {name!r}: give a one-line description")
    PRESETS[name] = build
    _DESCRIPTIONS[name] = description


def describe_preset(name: str) -> str:
    """The one-line description of preset ``name``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return _DESCRIPTIONS.get(name) or (PRESETS[name].__doc__ or "").strip().split("\n")[0]


def get_preset(name: str, **kwargs: Any) -> list[TrialConfig]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name](**kwargs)


def _image_shape(dataset: str, default: tuple[int, int, int]) -> tuple[int, int, int]:
    from ..data import DATASETS

    spec = DATASETS.get(dataset)
    return tuple(spec.shape) if spec is not None else default  # type: ignore[return-value]


def estimate(configs: Sequence[TrialConfig], n_train_full: int | None = None) -> dict[str, Any]:
    """Size of a sweep without running it: trials, epochs, and training work in MAC units.

    ``train_macs`` ~ 3 x forward MACs x images x epochs (forward + two backward GEMMs), summed
    over trials, at each dataset's image shape and size (``n_train_full`` overrides the size);
    divide by a measured MAC/s rate to get a time.
    """
    from .config import train_images

    total_epochs = 0
    train_macs = 0.0
    per_family: dict[str, int] = {}
    cache: dict[str, int] = {}
    for cfg in configs:
        r = cfg.resolved_recipe()
        full = n_train_full or train_images(cfg.dataset) or 50000
        n = max(0, min(r.train_subset or full, full - r.val_size))
        shape = _image_shape(cfg.dataset, cfg.family_spec.input_shape)
        key = canonical_json({"family": cfg.family, "shape": shape, **cfg.params})
        if key not in cache:  # the family's accounting hook: no real model is built
            cache[key] = cfg.family_spec.account(cfg.params, shape)["macs"]
        total_epochs += r.epochs
        train_macs += 3.0 * cache[key] * n * r.epochs
        per_family[cfg.family] = per_family.get(cfg.family, 0) + 1
    return {"trials": len(configs), "per_family": per_family, "epochs": total_epochs,
            "train_macs": train_macs}
