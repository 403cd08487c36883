"""Trial configurations and their stable ids.

A trial is fully described by a :class:`TrialConfig`: the model family and its widths, the
dataset, the recipe name plus overrides, the seed and the training-subset size. Its id is the
sha256 of the config's canonical JSON (sorted keys, no whitespace, normalised types), so the
same trial always gets the same id — across processes, machines and Python versions — and any
change of any field (the seed included) gives a new one. That id is what makes sweeps
resumable: a trial whose id is already in the results file is not run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..train import RECIPES, Recipe, get_recipe

__all__ = ["FAMILIES", "IMPLS", "SCHEMA_VERSION", "TrialConfig", "canonical_json", "trial_id"]

FAMILIES = ("lenet", "vgg16")
# How a trial is run: "shallowkern" (fused kernels, device-resident data) or "plain" (the same
# network as nn.Conv2d/ReLU/MaxPool2d layers fed by the conventional host-side DataLoader: the
# plain-PyTorch baseline a speedup is measured against).
IMPLS = ("shallowkern", "plain")
SCHEMA_VERSION = 1  # of the result record (shallowkern.sweep.trial); bump on incompatible changes
SYNTHETIC = "synthetic"  # a tiny generated dataset for tests and dry runs (see trial.load_data)


def synthetic_size(name: str) -> int | None:
    """Training images of a generated dataset name: "synthetic" (1,200) or "synthetic-N" (N, a
    CIFAR-sized stand-in for timing where the real files are not at hand); None otherwise."""
    if name == SYNTHETIC:
        return 1200
    head, _, n = name.partition("-")
    if head == SYNTHETIC and n.isdigit() and int(n) >= 10:
        return int(n)
    return None


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


def _pos_float(name: str, v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"TrialConfig.{name} must be a positive finite number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class TrialConfig:
    """One trial: ``family`` "lenet" (``d1`` and ``d2`` or ``k``; neither = k 2.8) or "vgg16"
    (``width``, multiplier of 64..512 filters; ``batch_norm``), trained on ``dataset`` with the
    recipe ``recipe`` plus ``overrides`` (Recipe fields), from ``seed``; ``train_subset``
    (None = the recipe's) caps the number of training images. ``impl`` "plain" trains the same
    network (same initial weights) as plain PyTorch layers fed by the host-side DataLoader, the
    baseline for speedups; it enters the trial id only when not the default "shallowkern"."""

    family: str
    d1: int | None = None
    d2: int | None = None
    k: float | None = None
    width: float | None = None
    batch_norm: bool = False
    dataset: str = "cifar10"
    recipe: str = "lab"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    train_subset: int | None = None
    impl: str = "shallowkern"

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        if self.impl not in IMPLS:
            raise ValueError(f"TrialConfig.impl must be one of {IMPLS}, got {self.impl!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"TrialConfig.family must be one of {FAMILIES}, got {self.family!r}")
        set_("seed", _int("seed", self.seed, minimum=0))
        set_("train_subset", _int("train_subset", self.train_subset, minimum=1, optional=True))
        if self.family == "lenet":
            if self.width is not None or self.batch_norm:
                raise ValueError("TrialConfig: width/batch_norm apply to vgg16, not lenet")
            set_("d1", _int("d1", self.d1, minimum=1))
            set_("d2", _int("d2", self.d2, minimum=1, optional=True))
            if self.d2 is not None and self.k is not None:
                raise ValueError("TrialConfig: give d2 or k for lenet, not both")
            # Neither given means the model's default k = 2.8; spell it out so that the two
            # ways of asking for the same network share one trial id.
            set_("k", _pos_float("k", 2.8 if self.d2 is None and self.k is None else self.k))
        else:
            if self.d1 is not None or self.d2 is not None or self.k is not None:
                raise ValueError("TrialConfig: d1/d2/k apply to lenet, not vgg16")
            set_("width", _pos_float("width", 1.0 if self.width is None else self.width))
            set_("batch_norm", bool(self.batch_norm))
        set_("dataset", _canonical_dataset(self.dataset))
        if self.recipe not in RECIPES:
            raise ValueError(f"TrialConfig.recipe must be one of {sorted(RECIPES)}, "
                             f"got {self.recipe!r}")
        overrides = dict(self.overrides or {})
        self._recipe_from(overrides)  # validates names and values now, not in a worker later
        set_("overrides", overrides)

    def _recipe_from(self, overrides: Mapping[str, Any]) -> Recipe:
        recipe = get_recipe(self.recipe, overrides)
        if self.train_subset is not None:
            recipe = recipe.with_overrides({"train_subset": self.train_subset})
        return recipe

    def resolved_recipe(self) -> Recipe:
        """The recipe this trial trains with (preset + overrides + train_subset)."""
        return self._recipe_from(self.overrides)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["overrides"] = dict(self.overrides)
        if d["impl"] == "shallowkern":  # the default stays out, so trial ids predating it hold
            del d["impl"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrialConfig field(s) {unknown}")
        return cls(**dict(d))

    @property
    def trial_id(self) -> str:
        return trial_id(self)

    def label(self) -> str:
        """Short human-readable name, e.g. ``lenet d1=16 k=2.8 seed=0``."""
        if self.family == "lenet":
            shape = f"d1={self.d1} " + (f"d2={self.d2}" if self.d2 is not None else f"k={self.k:g}")
        else:
            shape = f"width={self.width:g}" + (" bn" if self.batch_norm else "")
        return f"{self.family} {shape} seed={self.seed}" + (" plain" if self.impl == "plain" else "")


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
