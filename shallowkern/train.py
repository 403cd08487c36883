"""The lab's training recipe: SGD + Nesterov, weight decay, step-decayed learning rate.

``train_and_evaluate(model, data, recipe, device, seed)`` trains on ``data.train``, selects the
epoch with the lowest *validation* error (a split held out from the training set, never the
test set), and reports the train/val/test error of that epoch's weights. The test set is
evaluated exactly once, after selection, so it cannot leak into any choice.

Presets (``RECIPES``):

* ``lab`` — the default: batch 100, SGD with Nesterov momentum 0.9, weight decay 5e-4,
  lr 0.05 halved every 20 epochs for 100 epochs (0.05 → 0.003125), pixels scaled to [-1, 1],
  random horizontal flips and translations by up to 4 pixels (zero fill), 5,000 training
  images held out for validation. The optimiser settings follow the lab's published recipe;
  the schedule constants (0.05, ×0.5 every 20, 100 epochs) are this library's choice.
* ``quick`` — the same optimiser for a CPU: 8 epochs, lr halved every 3, on a 10,000-image
  training subset with 1,000 validation images. Errors are far above the converged ones; it is
  meant to show the shape of the law in minutes, not its value.

Determinism: the model is built after ``torch.manual_seed(seed)`` by the caller (see
``shallowkern.sweep.trial``); here the shuffling/augmentation generator is seeded from ``seed``
and cuDNN autotuning is disabled, so a CPU run is bit-reproducible for a fixed thread count
(reductions split differently across a different number of threads).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data import DeviceLoader, HostLoader

__all__ = ["RECIPES", "Recipe", "Splits", "evaluate", "get_recipe", "make_splits",
           "train_and_evaluate"]

Split = tuple[torch.Tensor, torch.Tensor]  # (uint8 images (N, C, H, W), int64 labels (N,))


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one training run (all JSON-serialisable, so they enter trial ids).

    ``lr`` is multiplied by ``lr_gamma`` every ``lr_step`` epochs (``torch.optim.lr_scheduler.
    StepLR``). ``select`` is ``"best_val"`` (weights of the epoch with the lowest validation
    error; ties go to the earlier epoch) or ``"last"``; with ``val_size == 0`` it is "last".
    ``train_subset`` (None = all) and ``val_size`` are drawn from the training set with a fixed
    ``data_seed``, so every trial of a sweep sees the same images and seeds differ only in
    initialisation, shuffling and augmentation. ``test_subset`` (None = the whole test set) is
    for smoke tests only: a law fitted on a small test set is dominated by binomial noise.
    """

    name: str = "lab"
    epochs: int = 100
    batch_size: int = 100
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_step: int = 20
    lr_gamma: float = 0.5
    augment: bool = True
    pad: int = 4
    flip: bool = True
    normalize: str = "minus_one_one"
    val_size: int = 5000
    train_subset: int | None = None
    test_subset: int | None = None
    data_seed: int = 0
    select: str = "best_val"
    eval_batch_size: int = 500

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lr_step", "eval_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Recipe.{name} must be a positive integer, got {v!r}")
        for name in ("lr", "momentum", "weight_decay", "lr_gamma"):
            v = getattr(self, name)
            bad = isinstance(v, bool) or not isinstance(v, (int, float))
            if bad or not math.isfinite(v) or v < 0:
                raise ValueError(f"Recipe.{name} must be a finite number >= 0, got {v!r}")
        if self.lr <= 0 or self.lr_gamma <= 0:
            raise ValueError(f"Recipe.lr and lr_gamma must be > 0, got {self.lr}, {self.lr_gamma}")
        if self.val_size < 0:
            raise ValueError(f"Recipe.val_size must be >= 0, got {self.val_size}")
        for name in ("train_subset", "test_subset"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"Recipe.{name} must be None or a positive integer, got {v!r}")
        if self.select not in ("best_val", "last"):
            raise ValueError(f"Recipe.select must be 'best_val' or 'last', got {self.select!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("Recipe: nesterov=True needs momentum > 0")

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> Recipe:
        """A copy with ``overrides`` applied; unknown keys are a ValueError naming them."""
        if not overrides:
            return self
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown recipe field(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **dict(overrides))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPES: dict[str, Recipe] = {
    "lab": Recipe(),
    "quick": Recipe(name="quick", epochs=8, lr_step=3, val_size=1000, train_subset=10000),
}


def get_recipe(name: str, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """The preset ``name`` (see RECIPES) with ``overrides`` applied."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name].with_overrides(overrides)


@dataclass(frozen=True)
class Splits:
    """Train / validation / test splits, each ``(uint8 (N, C, H, W), int64 (N,))`` on the CPU.

    ``val`` may be empty (N = 0); then model selection falls back to the last epoch.
    """

    train: Split
    val: Split
    test: Split


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, recipe: Recipe, device: torch.device) -> float:
    """Top-1 error rate of ``model`` on ``split`` (no augmentation); nan for an empty split."""
    x, y = split
    if y.numel() == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    wrong = 0
    loader = DeviceLoader(x, y, recipe.eval_batch_size, device=device, shuffle=False,
                          augment=False, normalize=recipe.normalize)
    for xb, yb in loader:
        wrong += int((model(xb).argmax(1) != yb).sum())
    model.train(was_training)
    return wrong / y.numel()


def train_and_evaluate(
    model: nn.Module,
    data: Splits,
    recipe: Recipe,
    device: torch.device | str,
    seed: int,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    pipeline: str = "device",
    cudnn: str = "deterministic",
    checkpoint: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train ``model`` with ``recipe`` and return its errors at the selected epoch.

    Args:
        model: any classifier mapping float (N, C, H, W) in [-1, 1] to logits (N, classes);
            moved to ``device`` in place and left holding the selected weights.
        data: the splits (uint8 images; they are copied to ``device`` once).
        seed: seeds the shuffling and augmentation generator (initialise the model yourself).
        progress: called after every epoch with ``(epoch, metrics)``.
        pipeline: ``"device"`` (DeviceLoader: images resident on the device, augmented there
            a batch at a time) or ``"host"`` (HostLoader: the conventional per-image host-side
            pipeline of a plain PyTorch script; the baseline of ``impl="plain"`` trials).
        cudnn: on CUDA, ``"deterministic"`` (``cudnn.deterministic=True, benchmark=False``:
            reproducible sweeps) or ``"benchmark"`` (``benchmark=True``: cuDNN times its
            algorithms, as a speed-tuned plain-PyTorch script runs). The same setting applies to
            whatever runs the convolutions, so a shallowkern-vs-plain comparison is fair only
            with the same value on both sides (it matters most to the plain side, where every
            convolution is cuDNN's); ``"keep"`` leaves the global flags alone.
        checkpoint: a file to save the whole training state to after every epoch (model,
            optimiser, schedule, data-order and global RNG states, best weights, history) and
            to resume from if it exists: a killed run continues at its next epoch and ends
            bit-identical to an uninterrupted one (same thread count). Needs
            ``pipeline="device"`` (the host pipeline's worker processes keep RNG state that
            cannot be saved). An unreadable or foreign checkpoint is reported with a
            RuntimeWarning and training starts afresh. The caller deletes it when the result
            is safe (``shallowkern.sweep`` does so once the record is stored).

    Returns a dict with ``train_error`` (clean, un-augmented error of the selected weights on
    the training set), ``val_error``, ``test_error``, ``best_epoch`` (1-based), ``epochs``,
    ``selection``, ``history`` (per epoch: lr, train loss, running train error under
    augmentation, val error), ``diverged`` (a non-finite loss was seen), ``n_train``/``n_val``/
    ``n_test``, ``train_time`` and ``wall_time`` (s) and ``images_per_s`` (training throughput),
    the ``pipeline`` and ``cudnn`` settings it ran with, and ``resumed_at`` (the epochs a
    checkpoint resumed from; empty for an uninterrupted run; ``train_time`` sums all runs,
    ``wall_time`` is the last run's).
    """
    if cudnn not in ("deterministic", "benchmark", "keep"):
        raise ValueError(f"cudnn must be 'deterministic', 'benchmark' or 'keep', got {cudnn!r}")
    if checkpoint is not None and pipeline != "device":
        raise ValueError(f"checkpoint needs pipeline='device', got pipeline={pipeline!r}")
    t0 = time.perf_counter()
    device = torch.device(device)
    if device.type == "cuda" and cudnn != "keep":
        # Autotuned algorithm choice differs run to run; determinism matters more for a sweep.
        torch.backends.cudnn.benchmark = cudnn == "benchmark"
        torch.backends.cudnn.deterministic = cudnn == "deterministic"
    model.to(device)
    x_tr, y_tr = data.train
    if y_tr.numel() == 0:
        raise ValueError("data.train is empty")
    if pipeline == "device":
        loader = DeviceLoader(x_tr, y_tr, recipe.batch_size, device=device, shuffle=True,
                              augment=recipe.augment, pad=recipe.pad, flip=recipe.flip,
                              normalize=recipe.normalize, seed=seed)
    elif pipeline == "host":
        if recipe.normalize != "minus_one_one":
            raise ValueError(f'pipeline="host" normalizes to [-1, 1] only, but the recipe has '
                             f"normalize={recipe.normalize!r}")
        loader = HostLoader(x_tr, y_tr, recipe.batch_size, device=device, shuffle=True,
                            augment=recipe.augment, pad=recipe.pad, flip=recipe.flip, seed=seed)
    else:
        raise ValueError(f"pipeline must be 'device' or 'host', got {pipeline!r}")
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=recipe.lr_step, gamma=recipe.lr_gamma)
    use_val = recipe.select == "best_val" and data.val[1].numel() > 0

    history: list[dict[str, float]] = []
    best_val, best_epoch, best_state = math.inf, 0, None
    diverged = False
    train_time = 0.0
    start, resumed_at = 1, []
    ckpt_key = {"recipe": recipe.to_dict(), "seed": seed, "n_train": int(y_tr.numel()),
                "params": sum(p.numel() for p in model.parameters())}
    state = _load_checkpoint(checkpoint, ckpt_key, device) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        loader.generator.set_state(state["loader_rng"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        history, diverged, train_time = state["history"], state["diverged"], state["train_time"]
        best_val, best_epoch, best_state = state["best_val"], state["best_epoch"], state["best"]
        start = state["epoch"] + 1
        resumed_at = state["resumed_at"] + [state["epoch"]]
    for epoch in range(start, recipe.epochs + 1):
        model.train()
        t_ep = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        wrong = torch.zeros((), dtype=torch.long, device=device)
        lr = opt.param_groups[0]["lr"]
        for xb, yb in loader:
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # Accumulate on the device: a .item() per batch would synchronise a GPU every step.
            loss_sum += loss.detach() * yb.numel()
            wrong += (out.detach().argmax(1) != yb).sum()
        sched.step()
        train_time += time.perf_counter() - t_ep
        n = y_tr.numel()
        row = {"epoch": epoch, "lr": lr, "train_loss": float(loss_sum) / n,
               "train_error_running": int(wrong) / n}
        diverged = diverged or not math.isfinite(row["train_loss"])
        if use_val:
            row["val_error"] = evaluate(model, data.val, recipe, device)
            if row["val_error"] < best_val:
                best_val, best_epoch = row["val_error"], epoch
                best_state = copy.deepcopy(model.state_dict())
        history.append(row)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, {
                "key": ckpt_key, "epoch": epoch, "model": model.state_dict(),
                "opt": opt.state_dict(), "sched": sched.state_dict(),
                "loader_rng": loader.generator.get_state(), "rng": torch.get_rng_state(),
                "cuda_rng": (torch.cuda.get_rng_state(device) if device.type == "cuda"
                             else None),
                "history": history, "diverged": diverged, "train_time": train_time,
                "best_val": best_val, "best_epoch": best_epoch, "best": best_state,
                "resumed_at": resumed_at})
        if progress is not None:
            progress(epoch, row)

    if best_state is not None and best_epoch != recipe.epochs:
        model.load_state_dict(best_state)
    if not use_val:
        best_epoch = recipe.epochs
    result = {
        "train_error": evaluate(model, data.train, recipe, device),
        "val_error": best_val if use_val else evaluate(model, data.val, recipe, device),
        "test_error": evaluate(model, data.test, recipe, device),
        "best_epoch": best_epoch,
        "epochs": recipe.epochs,
        "selection": "best_val" if use_val else "last",
        "history": history,
        "diverged": diverged,
        "n_train": int(y_tr.numel()),
        "n_val": int(data.val[1].numel()),
        "n_test": int(data.test[1].numel()),
        "train_time": train_time,
        "images_per_s": recipe.epochs * y_tr.numel() / train_time if train_time > 0 else None,
        "pipeline": pipeline,
        "cudnn": cudnn,
        "resumed_at": resumed_at,
    }
    for key in ("val_error",):  # nan is not JSON; an empty split has no error
        if isinstance(result[key], float) and math.isnan(result[key]):
            result[key] = None
    result["wall_time"] = time.perf_counter() - t0
    return result


_CKPT_VERSION = 1


def _save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` atomically: a temporary file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save({"version": _CKPT_VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_checkpoint(path: str | os.PathLike[str], key: dict[str, Any],
                     device: torch.device) -> dict[str, Any] | None:
    """The saved state if ``path`` holds a checkpoint of this very run (same ``key``), else
    None (a missing file silently; an unreadable or foreign one with a RuntimeWarning)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        why = ("version" if state.get("version") != _CKPT_VERSION else
               "recipe, seed or model" if state.get("key") != key else None)
    except Exception as exc:  # noqa: BLE001 - a torn or corrupt file: start afresh
        why = f"unreadable ({type(exc).__name__}: {exc})"
    if why is None:
        return state
    warnings.warn(f"checkpoint {path}: {why} does not match this run; training from epoch 1",
                  RuntimeWarning, stacklevel=3)
    return None


def make_splits(train: Split, test: Split, recipe: Recipe) -> Splits:
    """Hold out ``recipe.val_size`` training images for validation, then draw the training
    subset (``recipe.train_subset``) from the rest and the test subset (``test_subset``).

    Every draw is stratified by class and seeded by ``recipe.data_seed`` only (not the trial
    seed), so all trials of a sweep share the same images.
    """
    from .data import train_val_split

    def take(split: Split, size: int | None, seed: int) -> Split:
        if size is None or size >= split[1].numel():
            return split
        return train_val_split(*split, val_size=size, seed=seed)[1]

    x, y = train
    if recipe.val_size >= y.numel():
        raise ValueError(f"Recipe.val_size={recipe.val_size} leaves no training images "
                         f"(the training set has {y.numel()})")
    if recipe.val_size > 0:
        rest, val = train_val_split(x, y, val_size=recipe.val_size, seed=recipe.data_seed)
    else:
        rest, val = (x, y), (x[:0], y[:0])
    return Splits(train=take(rest, recipe.train_subset, recipe.data_seed + 1), val=val,
                  test=take(test, recipe.test_subset, recipe.data_seed + 2))
