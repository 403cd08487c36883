"""Trial configurations and their stable ids.

A trial is fully described by a :class:`TrialConfig`: the model family and its widths, the
dataset, the recipe name plus overrides, the seed and the training-subset size. Its id is the
sha256 of the config's canonical JSON (sorted keys, no whitespace, normalised types), so the
same trial always gets the same id — across processes, machines and Python versions — and any
change of any field (the seed included) gives a new one. That id is what makes sweeps
resumable: a trial whose id is already in the results file is not run again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..models.registry import Family, families, get_family
from ..train import RECIPES, Recipe, get_recipe

__all__ = ["FAMILIES", "IMPLS", "SCHEMA_VERSION", "TrialConfig", "canonical_json", "trial_id"]

# How a trial is run: "shallowkern" (fused kernels, device-resident data) or "plain" (the same
# network as nn.Conv2d/ReLU/MaxPool2d layers fed by the conventional host-side DataLoader: the
# plain-PyTorch baseline a speedup is measured against).
IMPLS = ("shallowkern", "plain")
SCHEMA_VERSION = 1  # of the result record (shallowkern.sweep.trial); bump on incompatible changes
SYNTHETIC = "synthetic"  # a tiny generated dataset for tests and dry runs (see trial.load_data)


def __getattr__(name: str) -> Any:
    if name == "FAMILIES":  # registered families, looked up now (families register on import)
        return families()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def synthetic_size(name: str) -> int | None:
    """Training images of a generated dataset name: "synthetic" (1,200) or "synthetic-N" (N, a
    CIFAR-sized stand-in for timing where the real files are not at hand); None otherwise."""
    if name == SYNTHETIC:
        return 1200
    head, _, n = name.partition("-")
    if head == SYNTHETIC and n.isdigit() and int(n) >= 10:
        return int(n)
    return None


# Training images of the datasets shallowkern reads (the official releases); see train_images.
TRAIN_IMAGES = {"cifar10": 50000, "cifar100": 50000, "mnist": 60000, "fashion_mnist": 60000}


def train_images(dataset: str) -> int | None:
    """Training images of ``dataset`` (canonical name), or None when unknown."""
    n = synthetic_size(dataset)
    return n if n is not None else TRAIN_IMAGES.get(dataset)


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, compact separators, ASCII, no NaN/inf."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def _int(name: str, v: Any, *, minimum: int, optional: bool = False) -> int | None:
    if v is None and optional:
        return None
    # Accept 16.0 from JSON/CLI but not 16.5 or True: a bool or fraction here is a typo.
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or v < minimum:
        raise ValueError(f"TrialConfig.{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


@dataclass(frozen=True, init=False)
class TrialConfig:
    """One trial: a model ``family`` (see ``shallowkern.models.registry``) with its parameters,
    trained on ``dataset`` with the recipe ``recipe`` plus ``overrides`` (Recipe fields), from
    ``seed``; ``train_subset`` (None = the recipe's) caps the number of training images.

    ``TrialConfig("lenet", d1=16, k=2.8)`` (``d2`` or ``k``; neither = k 2.8),
    ``TrialConfig("vgg16", width=0.5, batch_norm=True)``: family parameters are keywords (or a
    ``params`` mapping) and read back as attributes (``cfg.d1``; a parameter of another family
    reads None). ``impl`` "plain" trains the same network (same initial weights) as plain
    PyTorch layers fed by the host-side DataLoader, the baseline for speedups; it enters the
    trial id only when not the default "shallowkern".
    """

    family: str
    params: Mapping[str, Any]
    dataset: str
    recipe: str
    overrides: Mapping[str, Any]
    seed: int
    train_subset: int | None
    impl: str

    def __init__(self, family: str, params: Mapping[str, Any] | None = None, *,
                 dataset: str = "cifar10", recipe: str = "lab",
                 overrides: Mapping[str, Any] | None = None, seed: int = 0,
                 train_subset: int | None = None, impl: str = "shallowkern",
                 **family_params: Any) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        if impl not in IMPLS:
            raise ValueError(f"TrialConfig.impl must be one of {IMPLS}, got {impl!r}")
        fam = get_family(family)
        set_("family", fam.name)
        set_("params", fam.resolve({**dict(params or {}), **family_params}))
        set_("seed", _int("seed", seed, minimum=0))
        set_("train_subset", _int("train_subset", train_subset, minimum=1, optional=True))
        set_("dataset", _canonical_dataset(dataset))
        if recipe not in RECIPES:
            raise ValueError(f"TrialConfig.recipe must be one of {sorted(RECIPES)}, "
                             f"got {recipe!r}")
        set_("recipe", recipe)
        set_("impl", impl)
        overrides = dict(overrides or {})
        self._recipe_from(overrides)  # validates names and values now, not in a worker later
        set_("overrides", overrides)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: family parameters read as attributes.
        if name.startswith("_"):
            raise AttributeError(name)
        params = self.__dict__.get("params")
        if params is not None and name in params:
            return params[name]
        if any(name in get_family(f).param_names for f in families()):
            return None  # a parameter of another family (cfg.d1 of a VGG)
        raise AttributeError(f"TrialConfig has no attribute {name!r}")

    @property
    def family_spec(self) -> Family:
        """The registry entry of this trial's family."""
        return get_family(self.family)

    def _recipe_from(self, overrides: Mapping[str, Any]) -> Recipe:
        recipe = get_recipe(self.recipe, overrides)
        if self.train_subset is not None:
            recipe = recipe.with_overrides({"train_subset": self.train_subset})
        return recipe

    def resolved_recipe(self) -> Recipe:
        """The recipe this trial trains with (preset + overrides + train_subset)."""
        return self._recipe_from(self.overrides)

    def to_dict(self) -> dict[str, Any]:
        """The canonical form the trial id hashes: common fields and the family parameters
        side by side (plus, for lenet/vgg16, the fields every id before the registry had)."""
        d: dict[str, Any] = {**self.family_spec.id_padding, **self.params,
                             "family": self.family, "dataset": self.dataset,
                             "recipe": self.recipe, "overrides": dict(self.overrides),
                             "seed": self.seed, "train_subset": self.train_subset}
        if self.impl != "shallowkern":  # the default stays out, so trial ids predating it hold
            d["impl"] = self.impl
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialConfig:
        d = dict(d)
        if "family" not in d:
            raise ValueError("TrialConfig.from_dict: no 'family'")
        return cls(**d)

    @property
    def trial_id(self) -> str:
        return trial_id(self)

    def label(self) -> str:
        """Short human-readable name, e.g. ``lenet d1=16 k=2.8 seed=0``."""
        shape = self.family_spec.describe(self.params)
        plain = " plain" if self.impl == "plain" else ""
        return f"{self.family} {shape} seed={self.seed}{plain}"


def trial_id(config: TrialConfig | Mapping[str, Any]) -> str:
    """First 16 hex digits (64 bits) of sha256(canonical JSON of the normalised config)."""
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    return hashlib.sha256(canonical_json(cfg.to_dict()).encode()).hexdigest()[:16]


def _canonical_dataset(name: str) -> str:
    if not isinstance(name, str):
        raise ValueError(f"TrialConfig.dataset must be a string, got {name!r}")
    if synthetic_size(name.lower()) is not None:
        return name.lower()
    from ..data._common import canonical_name

    return canonical_name(name)
