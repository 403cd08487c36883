"""Packing: train several trials of one network at once, in one process.

Small trials (generalized LeNet at d1 <= 16 on a CPU) are bound by per-step host overhead:
one optimiser step of a d1 = 4 LeNet is a few dozen tiny kernels. ``PackedNet`` stacks P
copies of a network that share an architecture (in practice: the seeds of one width) into one
network: every conv becomes a grouped conv (``groups = P * groups``; trial p owns output
channels ``[p*C, (p+1)*C)``), every BatchNorm2d one BatchNorm2d over ``P * C`` channels (batch
statistics stay per trial, since they are per channel), every Linear a batched matmul over a
(P, out, in) weight. ReLU and max-pooling act per channel and are reused as they are.

Why this is the same training, trial by trial:

* **Initialisation**: each trial's model is built by ``build_model`` after
  ``torch.manual_seed(seed)``, exactly as ``run_trial`` does, and its tensors are copied in.
* **Data order and augmentation**: each trial has its own ``DeviceLoader`` seeded by its seed;
  the loaders are iterated in lockstep (same split, same batch size, so the same number of
  batches), and trial p's batch goes to trial p's channel group only.
* **Recipe**: the loss is the *sum* over trials of each trial's mean cross entropy, so the
  gradient of trial p's parameter slice is the gradient of its own loss; SGD's momentum,
  Nesterov and weight decay are elementwise, and the learning-rate schedule is shared (trials
  are packed only when their recipes are equal), so each slice takes the step it would alone.
* **Selection and evaluation**: validation error per trial per epoch; each trial's
  best-validation weights are copied back into its own (fused) model, whose train/val/test
  errors are measured with ``shallowkern.train.evaluate`` exactly as for a single trial.

What differs: floating-point summation order (grouped conv on oneDNN instead of the fused
shallowkern kernels), so a packed trial agrees with its one-at-a-time twin to fp32 tolerance
for the first steps and statistically after that (tests/sweep/test_packed.py checks both).
Records of a pack are appended together when the pack finishes (each still its own record,
own trial id, with ``pack`` = {size, trial_ids, train_time, images_per_s}); ``train_time`` and
``images_per_s`` of a packed record are the *pack's* time and the trial's own share of the
throughput. A crash loses the pack in progress, not finished packs: resuming reruns it.

Supported layers: Conv2d (and shallowkern's WideConv2d / UnfusedConv2d, zero padding),
BatchNorm2d, ReLU, MaxPool2d, Flatten, Linear, Dropout, inside a model's ``features`` and
``classifier`` Sequentials (``forward = classifier(features(x).flatten(1))``: GeneralizedLeNet,
GeneralizedVGG16). Anything else raises ``ValueError`` naming the layer.
"""

from __future__ import annotations

import copy
import math
import os
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.wide_conv2d import wide_conv2d
from .config import TrialConfig, trial_id

__all__ = ["PackedNet", "measure_throughput", "pack_key", "plan_packs", "run_pack",
           "run_packed_sweep", "train_packed"]


class _PackedConv(nn.Module):
    def __init__(self, convs: Sequence[nn.Conv2d]):
        super().__init__()
        c = convs[0]
        if c.padding_mode != "zeros":
            raise ValueError(f"PackedNet: conv padding_mode={c.padding_mode!r} is not supported")
        self.p = len(convs)
        self.stride, self.padding, self.dilation = c.stride, c.padding, c.dilation
        self.groups = c.groups * self.p
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in convs]).clone())
        self.bias = (nn.Parameter(torch.cat([m.bias.detach() for m in convs]).clone())
                     if c.bias is not None else None)
        self.activation = getattr(c, "activation", None)
        self.pool = getattr(c, "pool", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation is None and self.pool is None:  # e.g. VGG's conv -> BN: oneDNN
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                            self.groups)
        # conv -> ReLU -> pool of all trials in one fused op (groups = trials): on CPU the C++
        # kernel, whose direct AVX-512 path fills its 16 lanes with the channels of up to 16
        # trials (P <= 16; P = 3 in 4 lane slots, one empty); wide trials one group at a time.
        return wide_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                           self.groups, self.activation, self.pool)

    def unpack(self, p: int) -> dict[str, torch.Tensor]:
        out = {"weight": self.weight.detach().chunk(self.p)[p]}
        if self.bias is not None:
            out["bias"] = self.bias.detach().chunk(self.p)[p]
        return out


class _PackedBN(nn.BatchNorm2d):
    def __init__(self, bns: Sequence[nn.BatchNorm2d]):
        b = bns[0]
        super().__init__(b.num_features * len(bns), b.eps, b.momentum, b.affine,
                         b.track_running_stats)
        self.p = len(bns)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(self, name)
                if t is not None:
                    t.copy_(torch.cat([getattr(m, name) for m in bns]))
            if b.track_running_stats:
                self.num_batches_tracked.copy_(b.num_batches_tracked)

    def unpack(self, p: int) -> dict[str, torch.Tensor]:
        out = {n: getattr(self, n).detach().chunk(self.p)[p]
               for n in ("weight", "bias", "running_mean", "running_var")
               if getattr(self, n) is not None}
        if self.track_running_stats:
            out["num_batches_tracked"] = self.num_batches_tracked.detach().clone()
        return out


class _PackedLinear(nn.Module):
    def __init__(self, lins: Sequence[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in lins]).clone())
        self.bias = (nn.Parameter(torch.stack([m.bias.detach() for m in lins]).unsqueeze(1)
                                  .clone()) if lins[0].bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (P, B, in) -> (P, B, out)
        wt = self.weight.transpose(1, 2)
        return torch.baddbmm(self.bias, x, wt) if self.bias is not None else torch.bmm(x, wt)

    def unpack(self, p: int) -> dict[str, torch.Tensor]:
        out = {"weight": self.weight.detach()[p]}
        if self.bias is not None:
            out["bias"] = self.bias.detach()[p, 0]
        return out


_SHARED = (nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)


def _pack_layer(mods: Sequence[nn.Module], where: str) -> nn.Module:
    first = mods[0]
    if any(type(m) is not type(first) for m in mods):
        raise ValueError(f"PackedNet: layer {where} differs between the models "
                         f"({sorted({type(m).__name__ for m in mods})})")
    if isinstance(first, nn.Conv2d):
        if any(m.weight.shape != first.weight.shape for m in mods):
            raise ValueError(f"PackedNet: conv {where} has different shapes across models")
        return _PackedConv(mods)
    if isinstance(first, nn.BatchNorm2d):
        return _PackedBN(mods)
    if isinstance(first, nn.Linear):
        if any(m.weight.shape != first.weight.shape for m in mods):
            raise ValueError(f"PackedNet: linear {where} has different shapes across models")
        return _PackedLinear(mods)
    if isinstance(first, _SHARED):
        if isinstance(first, nn.Flatten) and where.startswith("features"):
            raise ValueError(f"PackedNet: Flatten inside features ({where}) is not supported")
        return copy.deepcopy(first)
    raise ValueError(f"PackedNet: layer {where} ({type(first).__name__}) cannot be packed; "
                     f"supported: Conv2d, BatchNorm2d, Linear, ReLU, MaxPool2d, Flatten, Dropout")


class PackedNet(nn.Module):
    """P networks of one architecture as one module (see the module docstring).

    Args:
        models: P >= 1 models with ``features`` and ``classifier`` ``nn.Sequential``s and
            ``forward = classifier(features(x).flatten(1))`` (GeneralizedLeNet, GeneralizedVGG16);
            shallowkern's fused WideConv2d layers are unfused on a copy; the models are not
            modified. Their tensors are copied, so trial p starts from model p's weights.

    ``forward(x)``: x float (P, B, C, H, W) — trial p's batch is ``x[p]`` — or (B, C, H, W), the
    same batch for every trial (evaluation) -> logits (P, B, classes). CPU and CUDA, fp32/fp64.
    ``state_dicts()``: one state dict per trial, keys as in the original models.
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        from ..nn import unfuse

        if len(models) < 1:
            raise ValueError("PackedNet: models must hold at least one model")
        plain = []
        for i, m in enumerate(models):
            if not (isinstance(getattr(m, "features", None), nn.Sequential)
                    and isinstance(getattr(m, "classifier", None), nn.Sequential)):
                raise ValueError(f"PackedNet: models[{i}] ({type(m).__name__}) has no "
                                 "'features' and 'classifier' nn.Sequential")
            plain.append(unfuse(copy.deepcopy(m)))
        self.p = len(models)
        self.features = nn.Sequential(*[
            _pack_layer(mods, f"features.{i}")
            for i, mods in enumerate(zip(*(m.features for m in plain)))])
        self.classifier = nn.Sequential(*[
            _pack_layer(mods, f"classifier.{i}")
            for i, mods in enumerate(zip(*(m.classifier for m in plain)))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # one batch for all: repeat along channels (group p reads copy p)
            h = x.repeat(1, self.p, 1, 1)
        elif x.dim() == 5 and x.shape[0] == self.p:
            P, B, C, H, W = x.shape
            h = x.transpose(0, 1).reshape(B, P * C, H, W)
        else:
            raise ValueError(f"PackedNet.forward: x must be (B, C, H, W) or ({self.p}, B, C, H, "
                             f"W), got {tuple(x.shape)}")
        return self.forward_grouped(h)

    def stack(self, batches: Sequence[torch.Tensor]) -> torch.Tensor:
        """P batches (B, C, H, W), trial p's first -> the (B, P*C, H, W) input of
        ``forward_grouped`` (one copy; ``forward`` of the stacked (P, B, ...) tensor makes two)."""
        if len(batches) != self.p:
            raise ValueError(f"PackedNet.stack: {self.p} batches expected, got {len(batches)}")
        h = torch.stack(list(batches), dim=1)
        return h.view(h.shape[0], -1, *h.shape[3:])

    def forward_grouped(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (P, B, classes) of ``h`` (B, P*C, H, W): trial p's images in channels
        [p*C, (p+1)*C), as ``stack`` builds it."""
        h = self.features(h)
        h = h.reshape(h.shape[0], self.p, -1).transpose(0, 1)  # (P, B, C*h*w), trial-major
        for layer in self.classifier:
            h = layer(h)
        return h

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        out: list[dict[str, torch.Tensor]] = [{} for _ in range(self.p)]
        for stage in ("features", "classifier"):
            for i, layer in enumerate(getattr(self, stage)):
                if hasattr(layer, "unpack"):
                    for p in range(self.p):
                        for k, v in layer.unpack(p).items():
                            out[p][f"{stage}.{i}.{k}"] = v.clone()
        return out


def _cross_entropy_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over trials of each trial's mean cross entropy; out (P, B, K), y (P, B)."""
    P, B, K = out.shape
    return F.cross_entropy(out.reshape(P * B, K), y.reshape(P * B), reduction="sum") / B


def train_packed(models: Sequence[nn.Module], data: Any, recipe: Any,
                 device: torch.device | str, seeds: Sequence[int],
                 progress: Callable[[int, dict[str, Any]], None] | None = None,
                 max_steps: int | None = None) -> dict[str, Any]:
    """Train ``models`` (one per seed) packed, with ``recipe`` (a ``shallowkern.train.Recipe``).

    Each model ends holding its own selected (best-validation, else last) weights. Returns
    ``{"results": [per-trial dict as train_and_evaluate's], "train_time": s, "images_per_s":
    images/s over all trials, "step_losses": (steps, P) list of per-trial losses}``;
    ``max_steps`` stops after that many optimiser steps (tests), then selection is "last".
    """
    from ..data import DeviceLoader
    from ..train import evaluate

    if len(models) != len(seeds):
        raise ValueError(f"train_packed: {len(models)} models but {len(seeds)} seeds")
    t0 = time.perf_counter()
    device = torch.device(device)
    P = len(models)
    packed = PackedNet(models).to(device)
    x_tr, y_tr = data.train
    if y_tr.numel() == 0:
        raise ValueError("data.train is empty")
    loaders = [DeviceLoader(x_tr, y_tr, recipe.batch_size, device=device, shuffle=True,
                            augment=recipe.augment, pad=recipe.pad, flip=recipe.flip,
                            normalize=recipe.normalize, seed=s) for s in seeds]
    opt = torch.optim.SGD(packed.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=recipe.lr_step, gamma=recipe.lr_gamma)
    use_val = recipe.select == "best_val" and data.val[1].numel() > 0 and max_steps is None
    n = y_tr.numel()
    histories: list[list[dict[str, Any]]] = [[] for _ in range(P)]
    best = [(math.inf, 0, None)] * P
    step_losses: list[list[float]] = []
    train_time, steps, epochs_run = 0.0, 0, 0
    for epoch in range(1, recipe.epochs + 1):
        packed.train()
        t_ep = time.perf_counter()
        loss_sum = torch.zeros(P, device=device)
        wrong = torch.zeros(P, dtype=torch.long, device=device)
        lr = opt.param_groups[0]["lr"]
        for batches in zip(*loaders):
            yb = torch.stack([b[1] for b in batches])
            out = packed.forward_grouped(packed.stack([b[0] for b in batches]))
            per = F.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="none")
            per = per.view(P, -1).mean(1)
            opt.zero_grad(set_to_none=True)
            per.sum().backward()
            opt.step()
            loss_sum += per.detach() * yb.shape[1]
            wrong += (out.detach().argmax(2) != yb).sum(1)
            steps += 1
            if max_steps is not None:
                step_losses.append(per.detach().tolist())
                if steps >= max_steps:
                    break
        sched.step()
        train_time += time.perf_counter() - t_ep
        epochs_run = epoch
        val_err = _packed_error(packed, data.val, recipe, device) if use_val else None
        for p in range(P):
            row = {"epoch": epoch, "lr": lr, "train_loss": float(loss_sum[p]) / n,
                   "train_error_running": int(wrong[p]) / n}
            if val_err is not None:
                row["val_error"] = val_err[p]
                if val_err[p] < best[p][0]:
                    best[p] = (val_err[p], epoch, None)
            histories[p].append(row)
        if val_err is not None:  # copy the improved trials' weights once per epoch
            sds = None
            for p in range(P):
                if best[p][1] == epoch:
                    sds = sds or packed.state_dicts()
                    best[p] = (best[p][0], epoch, sds[p])
        if progress is not None:
            progress(epoch, {"train_loss": [h[-1]["train_loss"] for h in histories]})
        if max_steps is not None and steps >= max_steps:
            break
    final = packed.state_dicts()
    results = []
    for p, model in enumerate(models):
        state = best[p][2] if use_val and best[p][2] is not None else final[p]
        model.load_state_dict(state)
        model.to(device)
        best_epoch = best[p][1] if use_val else epochs_run
        results.append({
            "train_error": evaluate(model, data.train, recipe, device),
            "val_error": best[p][0] if use_val else (
                evaluate(model, data.val, recipe, device) if data.val[1].numel() else None),
            "test_error": evaluate(model, data.test, recipe, device),
            "best_epoch": best_epoch, "epochs": recipe.epochs,
            "selection": "best_val" if use_val else "last",
            "history": histories[p],
            "diverged": any(not math.isfinite(r["train_loss"]) for r in histories[p]),
            "n_train": int(n), "n_val": int(data.val[1].numel()),
            "n_test": int(data.test[1].numel()), "train_time": train_time,
            "images_per_s": epochs_run * n / train_time if train_time > 0 else None,
            "pipeline": "device", "cudnn": "keep",
        })
    total = sum(r["images_per_s"] or 0 for r in results)
    return {"results": results, "train_time": train_time, "images_per_s": total or None,
            "step_losses": step_losses, "wall_time": time.perf_counter() - t0}


@torch.no_grad()
def _packed_error(packed: PackedNet, split: Any, recipe: Any, device: torch.device
                  ) -> list[float]:
    from ..data import DeviceLoader

    x, y = split
    was = packed.training
    packed.eval()
    wrong = torch.zeros(packed.p, dtype=torch.long, device=device)
    for xb, yb in DeviceLoader(x, y, recipe.eval_batch_size, device=device, shuffle=False,
                               augment=False, normalize=recipe.normalize):
        wrong += (packed(xb).argmax(2) != yb).sum(1)
    packed.train(was)
    return [int(w) / y.numel() for w in wrong]


def pack_key(cfg: TrialConfig) -> str | None:
    """Trials with equal keys can share a pack (everything but the seed equal); None: never
    packed (``impl="plain"`` trials measure the plain-PyTorch pipeline and run alone)."""
    if cfg.impl != "shallowkern":
        return None
    d = cfg.to_dict()
    d.pop("seed")
    from .config import canonical_json

    return canonical_json(d)


def plan_packs(configs: Iterable[TrialConfig], pack: int,
               helps: Callable[[TrialConfig], bool] | None = None) -> list[list[TrialConfig]]:
    """Group ``configs`` into packs of at most ``pack`` trials with equal ``pack_key`` (the
    seeds of one network), in first-seen order; unpackable trials, and those for which
    ``helps(cfg)`` is false, are packs of one."""
    if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
        raise ValueError(f"pack must be a positive integer, got {pack!r}")
    groups: dict[str, list[TrialConfig]] = {}
    order: list[list[TrialConfig]] = []
    for c in configs:
        k = pack_key(c)
        if k is None or pack == 1 or (helps is not None and not helps(c)):
            order.append([c])
            continue
        g = groups.get(k)
        if g is None or len(g) >= pack:
            g = groups[k] = []
            order.append(g)
        g.append(c)
    return order


def run_pack(configs: Sequence[TrialConfig | Mapping[str, Any]], data_root: str | None = None,
             device: str | None = None) -> list[dict[str, Any]]:
    """Run the trials of one pack (equal ``pack_key``) together; one record per trial, as
    ``run_trial`` writes it plus ``pack``. A single trial goes through ``run_trial``."""
    from ..train import make_splits
    from .config import SCHEMA_VERSION
    from .trial import build_model, git_commit, load_data, machine_info, model_cost, run_trial

    cfgs = [c if isinstance(c, TrialConfig) else TrialConfig.from_dict(c) for c in configs]
    if not cfgs:
        return []
    if len({pack_key(c) for c in cfgs}) != 1 or pack_key(cfgs[0]) is None:
        raise ValueError("run_pack: the trials of a pack must differ only in seed "
                         "(and not be impl='plain')")
    if len(cfgs) == 1:
        return [run_trial(cfgs[0], data_root, device)]
    t0 = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    recipe = cfgs[0].resolved_recipe()
    train, test = load_data(cfgs[0].dataset, data_root)
    splits = make_splits(train, test, recipe)
    c, h, _ = train[0].shape[1:]
    num_classes = int(max(int(train[1].max()), int(test[1].max())) + 1)
    models = []
    for cfg in cfgs:
        torch.manual_seed(cfg.seed)
        models.append(build_model(cfg, in_channels=c, input_size=h, num_classes=num_classes))
    out = train_packed(models, splits, recipe, dev, [cfg.seed for cfg in cfgs])
    pack_info = {"size": len(cfgs), "trial_ids": [trial_id(x) for x in cfgs],
                 "train_time": out["train_time"], "images_per_s": out["images_per_s"]}
    records = []
    for cfg, model, res in zip(cfgs, models, out["results"]):
        cost = model_cost(model, (c, h, h), dev, batch_size=recipe.batch_size)
        records.append({
            "schema_version": SCHEMA_VERSION, "trial_id": trial_id(cfg),
            "config": cfg.to_dict(), "seed": cfg.seed, "impl": cfg.impl,
            "model": cfg.family_spec.info(model, cfg.params), "recipe": recipe.to_dict(),
            **{k: res[k] for k in ("train_error", "val_error", "test_error", "best_epoch",
                                   "epochs", "selection", "diverged", "n_train", "n_val",
                                   "n_test", "train_time", "images_per_s", "history")},
            **cost, "pack": pack_info,
            "wall_time": time.perf_counter() - t0,
            "machine": machine_info(dev), "git_commit": git_commit(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
    return records


def run_packed_sweep(configs: Iterable[TrialConfig | Mapping[str, Any]],
                     results: str | os.PathLike[str], *, pack: int,
                     data_root: str | os.PathLike[str] | None = None, progress: bool = True,
                     retry_diverged: bool = False, device: str | None = None,
                     pack_all: bool = False) -> Any:
    """``run_sweep`` with packing, in this process (``sweep --pack N``): the pending trials are
    grouped by ``plan_packs``, only where packing was measured faster than one trial at a time
    (``presets.packing_gain`` > 1: LeNet up to d1 = 8 on this project's CPU; ``pack_all``
    packs every network); the rest run one at a time. Each pack takes the leases of its trials
    (a trial leased by
    another driver is left out of the pack, and run by that driver), runs them together and
    appends one record per trial when the pack finishes. Resumable as ``run_sweep``: done
    trials are skipped and the store refuses duplicates. Returns a ``SweepSummary``."""
    from .scheduler import (_as_configs, _clear_stale_leases, _driver_lock, _pending, _Progress,
                            _release, _try_lease)
    from .store import append_record, completed_ids, diverged_ids, encode_record, is_diverged
    from .trial import git_commit

    git_commit()  # pinned at driver start: the records name the code this process runs
    t0 = time.perf_counter()
    results = Path(results)
    if results.is_dir():
        raise IsADirectoryError(f"results {results} is a directory; give a .jsonl file path")
    results.parent.mkdir(parents=True, exist_ok=True)
    cfgs = _as_configs(configs)
    root = None if data_root is None else str(data_root)
    lock = _driver_lock(results, exclusive=False)
    try:
        pending, summary = _pending(cfgs, results, retry_diverged)
        bar = _Progress(len(pending), progress)
        from .presets import packing_gain

        helps = None if pack_all else (lambda c: packing_gain(c) > 1.0)
        for group in plan_packs(pending, pack, helps):
            held: list[tuple[TrialConfig, int]] = []
            for cfg in group:
                fd = _try_lease(results, cfg.trial_id)
                if fd is not None:
                    held.append((cfg, fd))
            try:
                now_done = completed_ids(results) - (diverged_ids(results) if retry_diverged
                                                     else set())
                todo = [c for c, _ in held if c.trial_id not in now_done]
                for c, _ in held:
                    if c.trial_id in now_done:
                        summary.done_elsewhere.append(c.trial_id)
                        bar.update(c.label())
                if not todo:
                    continue
                try:
                    records = run_pack(todo, root, device)
                except Exception:  # noqa: BLE001 - a failing pack fails its trials only
                    why = traceback.format_exc()
                    for c in todo:
                        summary.failed[c.trial_id] = why
                        bar.update(c.label(), ok=False)
                    continue
                for c, rec in zip(todo, records):
                    diverged = is_diverged(encode_record(rec))
                    if append_record(results, rec, supersede_diverged=retry_diverged):
                        summary.completed.append(c.trial_id)
                        if diverged:
                            summary.diverged.append(c.trial_id)
                    else:
                        summary.done_elsewhere.append(c.trial_id)
                    bar.update(c.label())
            finally:
                for c, fd in held:
                    _release(results, c.trial_id, fd)
        _clear_stale_leases(results)
    finally:
        os.close(lock)
    summary.wall_time = time.perf_counter() - t0
    return summary


def measure_throughput(d1s: Sequence[int] = (4, 8, 16), pack: int = 4, batch: int = 100,
                       steps: int = 20, k: float = 2.8, device: str = "cpu", rounds: int = 5
                       ) -> list[dict[str, Any]]:
    """Training throughput (images/s summed over trials) of ``pack`` LeNet trials at each d1:
    packed vs one at a time (each trial its own model, optimiser and loader, run in turn, as a
    sequential sweep does), the single trials both as shallowkern models (the automatic route:
    ``single_images_per_s``) and unfused plain PyTorch (``plain_images_per_s``); the speedup is
    against the faster of the two. Each step includes its batch: a ``DeviceLoader`` per trial
    (own seed) with the study recipe's augmentation (4-pixel translation, flip) over synthetic
    uint8 CIFAR-shaped images. The three are timed in interleaved rounds and each keeps its
    fastest round, so a load spike on a shared machine hits one round, not one provider."""
    from ..data import DeviceLoader
    from ..nn import unfuse
    from .trial import build_model

    gen = torch.Generator().manual_seed(0)
    x_u8 = torch.randint(0, 256, (steps * batch, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y_all = torch.randint(0, 10, (steps * batch,), generator=gen)

    def loaders() -> list[DeviceLoader]:
        return [DeviceLoader(x_u8, y_all, batch, device=device, shuffle=True, augment=True,
                             pad=4, flip=True, seed=s) for s in range(pack)]

    def sgd(params) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    rows = []
    for d1 in d1s:
        models = []
        for s in range(pack):
            torch.manual_seed(s)
            models.append(build_model(TrialConfig("lenet", d1=d1, k=k)).to(device))
        packed = PackedNet(models).to(device)
        plains = [unfuse(copy.deepcopy(m)) for m in models]
        opts = [sgd(m.parameters()) for m in models]
        popt = sgd(packed.parameters())
        plain_opts = [sgd(m.parameters()) for m in plains]

        def one_at_a_time(ms, os_) -> Callable[[], None]:
            def run() -> None:
                for m, o, ld in zip(ms, os_, loaders()):
                    for xb, yb in ld:
                        loss = F.cross_entropy(m(xb), yb)
                        o.zero_grad(set_to_none=True)
                        loss.backward()
                        o.step()
            return run

        def packed_round() -> None:
            for batches in zip(*loaders()):
                yb = torch.stack([b[1] for b in batches])
                out = packed.forward_grouped(packed.stack([b[0] for b in batches]))
                loss = _cross_entropy_sum(out, yb)
                popt.zero_grad(set_to_none=True)
                loss.backward()
                popt.step()

        row: dict[str, Any] = {"d1": d1, "pack": pack, "batch": batch, "steps": steps,
                               "threads": torch.get_num_threads()}
        fns = {"single": one_at_a_time(models, opts), "plain": one_at_a_time(plains, plain_opts),
               "packed": packed_round}
        best = dict.fromkeys(fns, math.inf)
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(rounds):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t)
        for name, t in best.items():
            row[f"{name}_images_per_s"] = pack * steps * batch / t
        row["speedup"] = row["packed_images_per_s"] / max(row["single_images_per_s"],
                                                          row["plain_images_per_s"])
        rows.append(row)
    return rows


if __name__ == "__main__":  # python -m shallowkern.sweep.packed [PACK] [D1 ...]
    import sys

    args = [int(a) for a in sys.argv[1:]]
    from .. import _ext

    res = measure_throughput(args[1:] or (4, 8, 16), pack=args[0] if args else 4)
    print(f"threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f} "
          f"extension={'yes' if _ext._C is not None else 'NO (not the C++ route)'}")
    for r in res:
        print(f"d1={r['d1']:4d} pack={r['pack']} single {r['single_images_per_s']:7.0f}  plain "
              f"{r['plain_images_per_s']:7.0f}  packed {r['packed_images_per_s']:7.0f} img/s  "
              f"x{r['speedup']:.2f} vs the faster single")
