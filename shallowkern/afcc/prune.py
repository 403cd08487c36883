"""The AFCC workflow: SFP read-outs per layer, clusters, masks, masked layers, brief retraining.

``prune(model, train_data, val_data, layers=[...])``:

1. for every conv layer whose output labels are needed (each pruned layer and the conv feeding
   it), freeze the network, take the layer's post-activation output max-pooled to
   ``sfp_pool`` x ``sfp_pool`` and train a bias-free linear read-out on ``train_data``;
2. single-filter performance on ``val_data``, binarised at ``threshold``; clusters; each
   filter's label set = the union of its clusters' labels;
3. masks: pruned conv i keeps (out j, in k) iff labels(conv_i, j) and labels(conv_{i-1}, k)
   intersect; if the network's last conv is pruned, the read-out keeps (class c, filter n) iff
   c is in labels(n) (``readout=True``);
4. swap the convs for ``AFCCConv2d`` and the read-out for ``AFCCLinear``, retrain briefly.

``method="random_afcc"`` replaces step 2's label sets by random ones with the same number of
labels per filter, every label used equally often (random-AFCC at about the same density).
Data: ``(uint8 images (N, C, H, W), int64 labels (N,))`` as ``shallowkern.data`` loads them,
normalised to [-1, 1] as the lab recipe does. Works on any model whose convs are nn.Conv2d
modules inside an nn.Sequential ``features`` followed by a flatten and one Linear read-out
(``VGG11Star``, ``GeneralizedVGG16(batch_norm=True)``); convs may be named in ``layers``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DeviceLoader
from ..nn.afcc import AFCCConv2d, AFCCLinear
from .clusters import FilterClusters, clusters, single_filter_performance
from .masks import connection_masks, random_labels

Split = tuple[torch.Tensor, torch.Tensor]
METHODS = ("afcc", "random_afcc")


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]           # (out, in) channels
    density: float                   # kept kernel pairs / all pairs
    mean_labels: float               # labels per out-filter
    mean_noise: float                # noise ones per out-filter
    multi_cluster_filters: int
    empty_filters: int               # out-filters with no label: all their pairs are pruned


@dataclass
class PruneReport:
    method: str
    threshold: float
    layers: list[LayerReport]
    readout_density: float | None
    accuracy_before: float
    accuracy_pruned: float           # masks applied, before retraining
    accuracy_after: float            # after retraining
    seconds: dict[str, float] = field(default_factory=dict)
    label_sets: dict[str, list[list[int]]] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        rows = [f"AFCC ({self.method}, threshold {self.threshold}): accuracy "
                f"{self.accuracy_before:.4f} -> pruned {self.accuracy_pruned:.4f} -> retrained "
                f"{self.accuracy_after:.4f}",
                f"{'layer':<14}{'out x in':>11}{'density':>9}{'labels':>8}{'noise':>7}"
                f"{'multi':>7}{'empty':>7}"]
        for r in self.layers:
            rows.append(f"{r.name:<14}{f'{r.shape[0]}x{r.shape[1]}':>11}{r.density:>9.3f}"
                        f"{r.mean_labels:>8.2f}{r.mean_noise:>7.2f}{r.multi_cluster_filters:>7}"
                        f"{r.empty_filters:>7}")
        if self.readout_density is not None:
            rows.append(f"{'read-out':<14}{'':>11}{self.readout_density:>9.3f}")
        return "\n".join(rows)


def _loader(split: Split, batch: int, device, train: bool, seed: int = 0) -> DeviceLoader:
    return DeviceLoader(split[0], split[1], batch, device=device, shuffle=train, augment=train,
                        seed=seed if train else None)


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, device="cpu", batch: int = 500) -> float:
    """Top-1 accuracy on ``split`` (eval mode, no augmentation)."""
    was = model.training
    model.eval()
    right = 0
    for xb, yb in _loader(split, batch, device, False):
        right += int((model(xb).argmax(1) == yb).sum())
    model.train(was)
    return right / max(int(split[1].numel()), 1)


def train_epochs(model: nn.Module, split: Split, epochs: int, lr: float = 0.01, device="cpu",
                 batch: int = 100, seed: int = 0, progress: Callable[[str], None] | None = None,
                 params=None, weight_decay: float = 5e-4) -> None:
    """SGD (Nesterov momentum 0.9, weight decay) with a cosine learning rate, flips + shifts."""
    params = list(model.parameters()) if params is None else list(params)
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    loader = _loader(split, batch, device, True, seed)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(1, epochs * len(loader)),
                                                pct_start=0.15)
    model.train()
    for ep in range(epochs):
        total = 0.0
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        if progress:
            progress(f"epoch {ep + 1}/{epochs}: loss {total / max(len(loader), 1):.4f}")


def _convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _readout(model: nn.Module) -> tuple[str, nn.Linear] | None:
    lins = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return lins[-1] if len(lins) == 1 else None


def _activation_after(model: nn.Module, conv_name: str) -> nn.Module:
    """The first ReLU after ``conv_name`` in module order (its output is the layer's output)."""
    names = [n for n, _ in model.named_modules()]
    mods = dict(model.named_modules())
    for n in names[names.index(conv_name) + 1:]:
        if isinstance(mods[n], (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU)):
            return mods[n]
    return mods[conv_name]


@torch.no_grad()
def layer_features(model: nn.Module, name: str, split: Split, pool: int, device="cpu",
                   batch: int = 500) -> torch.Tensor:
    """(N, F, pool*pool) post-activation outputs of conv ``name``, max-pooled (float32, CPU)."""
    out: list[torch.Tensor] = []
    target = _activation_after(model, name)
    grab = {}

    def hook(mod, inp, o):
        grab["h"] = F.adaptive_max_pool2d(o, pool).flatten(2).float().cpu()
        raise _Stop

    handle = target.register_forward_hook(hook)
    was = model.training
    model.eval()
    try:
        for xb, _ in _loader(split, batch, device, False):
            try:
                model(xb)
            except _Stop:
                pass
            out.append(grab.pop("h"))
    finally:
        handle.remove()
        model.train(was)
    return torch.cat(out)


class _Stop(Exception):
    """Raised by the feature hook: nothing after the layer needs to run."""


def readout_for(features: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int,
                seed: int = 0, lr: float = 1e-3) -> nn.Linear:
    """Bias-free linear read-out (F*S -> classes) trained with Adam on fixed features."""
    g = torch.Generator().manual_seed(seed)
    x = features.flatten(1)
    head = nn.Linear(x.shape[1], num_classes, bias=False)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-4)
    scale = x.abs().amax().clamp_min(1e-6)
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0], generator=g).split(256):
            loss = F.cross_entropy(head(x[idx] / scale), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        head.weight.div_(scale)
    return head


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def prune(model: nn.Module, train_data: Split, val_data: Split, layers: Sequence[str] | None = None,
          threshold: float = 0.3, *, method: str = "afcc", readout: bool = True,
          sfp_pool: int = 2, head_epochs: int = 5, retrain_epochs: int = 1,
          retrain_lr: float = 0.01, test_data: Split | None = None, num_classes: int | None = None,
          device="cpu", seed: int = 0, progress: Callable[[str], None] | None = None,
          label_sets: dict[str, torch.Tensor] | None = None,
          feature_cache: dict | None = None) -> tuple[nn.Module, PruneReport]:
    """Prune ``layers`` (conv module names; default the last three convs) with AFCC.

    Args:
        model: a trained network (left unchanged; a pruned copy is returned).
        train_data / val_data: (uint8 (N, C, H, W), int64 (N,)) splits; read-outs train on
            train_data, SFP matrices and ``accuracy_*`` use val_data (or ``test_data`` for the
            accuracies when given).
        threshold: SFP binarisation threshold (0.3 in the paper).
        method: "afcc" or "random_afcc" (random label sets, same number per filter, balanced).
        readout: also mask the read-out when the network's last conv is pruned.
        head_epochs / retrain_epochs / retrain_lr: read-out training and masked retraining.
        label_sets: {conv name: (F, L) bool} to reuse (skips the SFP of those layers).
        feature_cache: a dict kept by the caller across calls on the same model and data:
            layer outputs are computed once (several seeds of the read-out and retraining).
        progress: called with one line per step.
    Returns:
        (pruned model with AFCCConv2d / AFCCLinear layers, PruneReport).
    """
    if method not in METHODS:
        raise ValueError(f"prune: method must be one of {METHODS}, got {method!r}")
    if not (0.0 < threshold <= 1.0):
        raise ValueError(f"prune: threshold must lie in (0, 1], got {threshold}")
    say = progress or (lambda s: None)
    t0 = time.perf_counter()
    convs = _convs(model)
    names = [n for n, _ in convs]
    if not convs:
        raise ValueError("prune: the model has no nn.Conv2d layer")
    layers = list(layers) if layers is not None else names[-3:]
    for n in layers:
        if n not in names:
            raise ValueError(f"prune: layers: {n!r} is not a conv layer of the model; "
                             f"convs: {names}")
        if names.index(n) == 0:
            raise ValueError(f"prune: layers: {n!r} reads the image (no filter labels to match)")
    ro = _readout(model)
    num_classes = num_classes or (ro[1].out_features if ro else int(train_data[1].max()) + 1)
    need = sorted({names.index(n) for n in layers} | {names.index(n) - 1 for n in layers})
    gen = torch.Generator().manual_seed(seed)
    sets: dict[str, torch.Tensor] = dict(label_sets or {})
    found: dict[str, FilterClusters] = {}
    for i in need:
        name = names[i]
        if name in sets:
            continue
        say(f"SFP of {name}: read-out on {int(train_data[1].numel())} images")
        cache = feature_cache if feature_cache is not None else {}
        if (name, "train") not in cache:
            cache[name, "train"] = layer_features(model, name, train_data, sfp_pool, device)
            cache[name, "val"] = layer_features(model, name, val_data, sfp_pool, device)
        h_tr, h_val = cache[name, "train"], cache[name, "val"]
        head = readout_for(h_tr, train_data[1].long(), num_classes, head_epochs, seed)
        v = single_filter_performance(h_val, val_data[1].long(), head.weight.detach(), num_classes)
        found[name] = clusters(v, threshold)
        sets[name] = found[name].labels
        s = found[name].summary()
        say(f"  {name}: {s['mean_labels']:.2f} labels/filter, {s['mean_noise']:.2f} noise, "
            f"{s['empty_filters']} empty")
    t_sfp = time.perf_counter() - t0
    if method == "random_afcc":
        sets = {n: random_labels(m.shape[0], m.shape[1], m.sum(1), gen) for n, m in sets.items()}
    eval_split = test_data if test_data is not None else val_data
    acc_before = accuracy(model, eval_split, device)
    pruned = copy.deepcopy(model)
    reports = []
    for n in layers:
        i = names.index(n)
        conv = dict(convs)[n]
        mask = connection_masks(sets[n], sets[names[i - 1]])
        _set(pruned, n, AFCCConv2d.from_conv(pruned.get_submodule(n), mask))
        fc = found.get(n)
        reports.append(LayerReport(
            n, (conv.out_channels, conv.in_channels), mask.float().mean().item(),
            float(sets[n].sum(1).float().mean()),
            fc.summary()["mean_noise"] if fc else float("nan"),
            fc.summary()["multi_cluster_filters"] if fc else 0,
            int((sets[n].sum(1) == 0).sum())))
    ro_density = None
    if readout and ro is not None and names[-1] in layers:
        lin = pruned.get_submodule(ro[0])
        mask = connection_masks(sets[names[-1]])
        if lin.in_features % mask.shape[1] == 0:
            new = AFCCLinear.from_linear(lin, mask)
            _set(pruned, ro[0], new)
            ro_density = new.density
    acc_pruned = accuracy(pruned, eval_split, device)
    say(f"accuracy {acc_before:.4f} before, {acc_pruned:.4f} with masks; retraining "
        f"{retrain_epochs} epoch(s)")
    t1 = time.perf_counter()
    if retrain_epochs:
        train_epochs(pruned, train_data, retrain_epochs, retrain_lr, device, seed=seed,
                     progress=lambda s: say("  retrain " + s))
    acc_after = accuracy(pruned, eval_split, device)
    say(f"accuracy after retraining {acc_after:.4f}")
    report = PruneReport(method, threshold, reports, ro_density, acc_before, acc_pruned, acc_after,
                         dict(sfp=t_sfp, retrain=time.perf_counter() - t1,
                              total=time.perf_counter() - t0),
                         {n: [m.nonzero().flatten().tolist() for m in s] for n, s in sets.items()})
    return pruned, report
