"""Named sweeps: ``quick`` (minutes on a CPU) and ``paper`` (the full study, for GPUs).

quick — generalized LeNet on CIFAR-10, d1 in {4, 8, 16, 32}, k = 2.8, 2 seeds, the ``quick``
    recipe (4 epochs on a stratified 5,000-image training subset, 1,000 validation images,
    the full 10,000-image test set). 8 trials; see docs/sweeps.md for the measured time.
paper — generalized LeNet, d1 in {6, 16, 32, 64, 128, 256, 512, 768} x k in {2.0, 2.8, 4.0},
    3 seeds (72 trials), plus width-scaled VGG-16 (with BatchNorm) at width in
    {0.125, 0.25, 0.5, 1.0} (8 to 64 first-layer filters), 3 seeds (12 trials); all with the
    ``lab`` recipe (100 epochs on 45,000 images, 5,000 held out for validation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import product
from typing import Any

from .config import TrialConfig, canonical_json

__all__ = ["PRESETS", "describe_preset", "estimate", "get_preset", "lenet_grid", "paper", "quick",
           "register_preset", "vgg_grid"]


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


def paper(seeds: Sequence[int] = (0, 1, 2), dataset: str = "cifar10") -> list[TrialConfig]:
    return (lenet_grid(PAPER_D1, PAPER_K, seeds, dataset=dataset, recipe="lab")
            + vgg_grid(PAPER_VGG_WIDTHS, seeds, dataset=dataset, recipe="lab"))


PRESETS: dict[str, Callable[..., list[TrialConfig]]] = {"quick": quick, "paper": paper}
_DESCRIPTIONS: dict[str, str] = {
    "quick": "LeNet d1 in {4,8,16,32}, k=2.8, 2 seeds, quick recipe (8 epochs, 10k images): "
             "minutes on a CPU",
    "paper": "LeNet d1 6..768 x k {2,2.8,4} + VGG-16 bn width 1/8..1, 3 seeds, lab recipe "
             "(100 epochs): the full study (GPU)",
}


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
