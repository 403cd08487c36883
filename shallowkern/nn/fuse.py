"""fuse(model): Conv2d -> [ReLU] -> MaxPool2d(2) runs become one fused WideConv2d, in place.

Each module of the model is traced with torch.fx, its direct children kept as leaves, so the
order in which ``forward`` really calls them is known (nn.Sequential and hand-written modules
alike). A run is fused when the conv's output feeds only the ReLU (or the pool), the ReLU's only
the pool, and the ReLU/pool modules are used once. The conv is replaced by a WideConv2d holding
the same parameter tensors (state_dict keys unchanged); the ReLU and pool become nn.Identity.
Modules fx cannot trace (data-dependent control flow) are left as they are, with a warning.
"""

from __future__ import annotations

import warnings

import torch.fx
from torch import nn

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
    return type(m) is nn.Conv2d or (type(m) is WideConv2d and m.activation is None and m.pool is None)


def _fuse_children(parent: nn.Module) -> int:
    try:
        graph = _ChildrenAsLeaves(parent).trace(parent)
    except Exception as exc:  # fx cannot trace everything; fusion is an optimisation only
        warnings.warn(f"fuse: left {type(parent).__name__} unfused (fx could not trace it: {exc})",
                      stacklevel=3)
        return 0
    calls = [n for n in graph.nodes if n.op == "call_module"]
    uses: dict[str, int] = {}
    for n in calls:
        uses[n.target] = uses.get(n.target, 0) + 1

    def only_consumer(node: torch.fx.Node) -> torch.fx.Node | None:
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and users[0].args[:1] == (node,) \
                and len(users[0].args) == 1 and not users[0].kwargs and uses[users[0].target] == 1:
            return users[0]
        return None

    fused = 0
    for node in calls:
        conv = parent.get_submodule(node.target)
        if "." in node.target or not _is_plain_conv(conv):
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
    for module in list(model.modules()):
        if any(True for _ in module.children()):
            _fuse_children(module)
    return model


def unfuse(model: nn.Module) -> nn.Module:
    """The inverse of ``fuse``, in place: every WideConv2d becomes plain PyTorch layers.

    A WideConv2d without epilogue becomes an nn.Conv2d; one with ``activation``/``pool`` becomes
    ``nn.Sequential(nn.Conv2d, [nn.ReLU()], [nn.MaxPool2d(2)])``, so its parameters move to
    ``<name>.0.weight`` / ``<name>.0.bias``. The parameter tensors are shared, not copied, and
    the result computes the same function with aten's conv, ReLU and pool (cuDNN / oneDNN): the
    "plain PyTorch" baseline of the benchmarks and sweeps. Returns ``model`` (a WideConv2d
    passed itself is returned replaced).
    """
    def plain(m: WideConv2d) -> nn.Module:
        conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                         m.dilation, m.groups, m.bias is not None, m.padding_mode, device="meta")
        conv.weight, conv.bias = m.weight, m.bias
        layers = [conv] + ([nn.ReLU()] if m.activation == "relu" else []) + (
            [nn.MaxPool2d(2)] if m.pool == 2 else [])
        out = layers[0] if len(layers) == 1 else nn.Sequential(*layers)
        out.train(m.training)
        return out

    if isinstance(model, WideConv2d):
        return plain(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, WideConv2d):
                setattr(parent, name, plain(child))
    return model
