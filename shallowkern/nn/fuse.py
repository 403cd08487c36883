"""fuse(model): Conv2d -> [ReLU] -> MaxPool2d(2) runs become one fused WideConv2d, in place.

Each module of the model is traced with torch.fx, its direct children kept as leaves, so the
order in which ``forward`` really calls them is known (nn.Sequential and hand-written modules
alike). A run is fused when the conv's output feeds only the ReLU (or the pool), the ReLU's only
the pool, and the ReLU/pool modules are used once. The conv is replaced by a WideConv2d holding
the same parameter tensors (state_dict keys unchanged); the ReLU and pool become nn.Identity.
Modules fx cannot trace (data-dependent control flow) are left as they are, with a warning.

A run is refused (left unfused, with a debug log on ``shallowkern.nn.fuse``) when any of its
modules is called more than once, or is registered in the model under more than one name, or
when the conv's or ReLU's output is read by anything else: fusing would change what the other
use computes.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter

import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .wide_conv2d import WideConv2d


class _ChildrenAsLeaves(torch.fx.Tracer):
    def __init__(self, root: nn.Module):
        super().__init__()
        self._children = {id(m) for m in root.children()}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self._children or super().is_leaf_module(m, qualname)


def _is_pool2(m: nn.Module) -> bool:
    def two(v):
        return v == 2 or v == (2, 2)

    return (type(m) is nn.MaxPool2d and two(m.kernel_size) and two(m.stride or m.kernel_size)
            and m.padding in (0, (0, 0)) and m.dilation in (1, (1, 1)) and not m.ceil_mode
            and not m.return_indices)


def _is_plain_conv(m: nn.Module) -> bool:
    return (type(m) in (nn.Conv2d, UnfusedConv2d)
            or (type(m) is WideConv2d and m.activation is None and m.pool is None))


log = logging.getLogger("shallowkern.nn.fuse")


class UnfusedConv2d(nn.Conv2d):
    """``nn.Conv2d`` -> [ReLU] -> [MaxPool2d(2)] in plain aten ops, with nn.Conv2d's parameters.

    What ``unfuse`` turns a WideConv2d with an epilogue into: the same computation as the three
    nn layers (aten conv2d on oneDNN/cuDNN, then relu, then max_pool2d; nothing fused) with the
    same ``weight``/``bias`` names, so checkpoints load both ways and ``fuse`` restores it.
    """

    def __init__(self, *args, activation: str | None = None, pool: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.activation, self.pool = activation, pool

    def forward(self, input: Tensor) -> Tensor:
        y = super().forward(input)
        if self.activation == "relu":
            y = torch.relu(y)
        return F.max_pool2d(y, 2) if self.pool == 2 else y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation!r}, pool={self.pool}"


def _shared_modules(model: nn.Module) -> set[int]:
    """ids of modules registered under more than one name (reused layers)."""
    counts = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    return {i for i, c in counts.items() if c > 1}


def _fuse_children(parent: nn.Module, shared: set[int] = frozenset()) -> int:
    try:
        graph = _ChildrenAsLeaves(parent).trace(parent)
    except Exception as exc:  # fx cannot trace everything; fusion is an optimisation only
        warnings.warn(f"fuse: left {type(parent).__name__} unfused (fx could not trace it: {exc})",
                      stacklevel=3)
        return 0
    calls = [n for n in graph.nodes if n.op == "call_module"]
    # calls per module object (two names for one module count together)
    uses = Counter(id(parent.get_submodule(n.target)) for n in calls)

    def used_once(node: torch.fx.Node) -> bool:
        m = parent.get_submodule(node.target)
        return uses[id(m)] == 1 and id(m) not in shared

    def only_consumer(node: torch.fx.Node) -> torch.fx.Node | None:
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and users[0].args[:1] == (node,) \
                and len(users[0].args) == 1 and not users[0].kwargs and used_once(users[0]):
            return users[0]
        if users:
            log.debug("fuse: %s.%s output read by %s: not fused", type(parent).__name__,
                      node.target, [u.format_node() for u in users])
        return None

    fused = 0
    for node in calls:
        conv = parent.get_submodule(node.target)
        if "." in node.target or not _is_plain_conv(conv):
            continue
        if isinstance(conv, UnfusedConv2d):  # fuse(unfuse(m)) restores the WideConv2d
            if used_once(node):
                setattr(parent, node.target, WideConv2d.from_conv(
                    conv, activation=conv.activation, pool=conv.pool))
                fused += 1
            continue
        if not used_once(node):
            log.debug("fuse: conv %s.%s is used more than once: not fused",
                      type(parent).__name__, node.target)
            continue
        nxt, relu = only_consumer(node), None
        if nxt is not None and type(parent.get_submodule(nxt.target)) is nn.ReLU:
            relu, nxt = nxt, only_consumer(nxt)
        if nxt is None or not _is_pool2(parent.get_submodule(nxt.target)):
            continue
        setattr(parent, node.target,
                WideConv2d.from_conv(conv, activation="relu" if relu else None, pool=2))
        for done in (relu, nxt):
            if done is not None:
                setattr(parent, done.target, nn.Identity())
        fused += 1
    return fused


def fuse(model: nn.Module) -> nn.Module:
    """Fuse every Conv2d -> [ReLU] -> MaxPool2d(2) run of ``model`` in place; returns ``model``.

    The result computes the same function with the same parameters and state_dict keys.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse: model must be an nn.Module, got {type(model).__name__}")
    shared = _shared_modules(model)
    for module in list(model.modules()):
        if any(True for _ in module.children()):
            _fuse_children(module, shared)
    return model


def unfuse(model: nn.Module) -> nn.Module:
    """The inverse of ``fuse``, in place: every WideConv2d becomes plain PyTorch layers.

    A WideConv2d without epilogue becomes an nn.Conv2d; one with ``activation``/``pool`` an
    ``UnfusedConv2d`` (an nn.Conv2d running conv2d -> relu -> max_pool2d in aten ops). Parameter
    names stay ``<name>.weight`` / ``<name>.bias``, so state_dicts load both ways, and
    ``fuse(unfuse(m))`` gives back WideConv2d layers. The parameter tensors are shared, not
    copied, and the result computes the same function with aten's conv, ReLU and pool (cuDNN /
    oneDNN): the "plain PyTorch" baseline of the benchmarks and sweeps. Returns ``model`` (a
    WideConv2d passed itself is returned replaced).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"unfuse: model must be an nn.Module, got {type(model).__name__}")

    def plain(m: WideConv2d) -> nn.Module:
        cls, extra = (nn.Conv2d, {}) if m.activation is None and m.pool is None else (
            UnfusedConv2d, dict(activation=m.activation, pool=m.pool))
        out = cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                  m.dilation, m.groups, m.bias is not None, m.padding_mode, device="meta", **extra)
        out.weight, out.bias = m.weight, m.bias
        out.train(m.training)
        return out

    if isinstance(model, WideConv2d):
        return plain(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, WideConv2d):
                setattr(parent, name, plain(child))
    return model
