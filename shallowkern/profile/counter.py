"""One instrumented run: FLOPs per module (FlopCounterMode), bytes, op counts, uncounted ops.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` and its registry, in which the
``shallowkern::`` ops register their formulas at import. Its convention is 2 FLOPs per
multiply-add, and only matmul/conv-like ops (mm, addmm, bmm, convolution and their backwards,
attention, the shallowkern conv ops) have formulas: bias adds, activations, pooling and norms
count 0. So that a 0 is never silent, a second ``TorchDispatchMode`` (``_OpRecorder``) watches
the same run, attributed to the same modules through FlopCounterMode's own ModuleTracker, and
records per module:

* bytes moved: for every op, its tensor inputs read once + its outputs written once (the
  roofline minimum for that op; views and metadata ops move nothing);
* how often each op without a FLOP formula ran ("uncounted"), leaving out pure view/metadata
  ops (view, t, transpose, expand, detach, _unsafe_view, as_strided, ...);
* executed-FLOP savings for ops that register an executed-FLOP formula (a structured-sparse
  kernel that skips work); none does yet, so executed == dense today.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten

# Ops that only change metadata or alias storage; ``OpOverload.is_view`` catches most views,
# these are the ones whose schema does not say so (or that allocate without computing).
_NO_WORK = {
    aten.view, aten._unsafe_view, aten.t, aten.transpose, aten.permute, aten.expand, aten.detach,
    aten.alias, aten.as_strided, aten.reshape, aten._reshape_alias, aten.squeeze, aten.unsqueeze,
    aten.slice, aten.select, aten.unfold, aten.empty, aten.empty_like, aten.empty_strided,
    aten.new_empty, aten.new_empty_strided, aten.lift_fresh, aten._local_scalar_dense,
    torch.ops.prim.device,
}
# Size/stride queries FlopCounterMode also passes over (they reach modes only for subclasses).
_METADATA = {
    aten.sym_is_contiguous.default, aten.is_contiguous.default, aten.is_contiguous.memory_format,
    aten.is_strides_like_format.default, aten.is_non_overlapping_and_dense.default,
    aten.size.default, aten.sym_size.default, aten.stride.default, aten.sym_stride.default,
    aten.storage_offset.default, aten.sym_storage_offset.default, aten.numel.default,
    aten.sym_numel.default, aten.dim.default, torch.ops.prim.layout.default,
}

# op packet -> fn(*args, out_val=..., **kwargs) -> FLOPs the kernel actually executes, given the
# real tensors (so it can look at their sparsity structure). See register_executed_flop_formula.
EXECUTED_FLOP_REGISTRY: dict[Any, Callable[..., int]] = {}


def register_executed_flop_formula(op: Any) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Register what a structured-sparse kernel really executes for ``op`` (an OpOverloadPacket).

    The formula is called as ``fn(*args, out_val=out, **kwargs)`` with the op's real arguments
    and must return the executed FLOPs (same 2-per-multiply-add convention as its dense formula,
    which must exist in ``torch.utils.flop_counter``). Ops without one execute their dense FLOPs.
    """
    packet = op._overloadpacket if isinstance(op, torch._ops.OpOverload) else op

    def deco(fn: Callable[..., int]) -> Callable[..., int]:
        EXECUTED_FLOP_REGISTRY[packet] = fn
        return fn

    return deco


def does_work(func: Any) -> bool:
    """False for pure view/metadata/allocation ops: they neither compute nor move data."""
    return not (func in _METADATA or func._overloadpacket in _NO_WORK
                or getattr(func, "is_view", False))


def tensor_bytes(t: Tensor) -> int:
    """Bytes an op must touch for ``t``: its logical size, or its storage if that is smaller
    (an expanded tensor is read from its small storage)."""
    logical = t.numel() * t.element_size()
    try:
        return min(logical, t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage
        return logical


def _op_bytes(args: Sequence[Any], kwargs: dict, out: Any) -> int:
    inputs, _ = tree_flatten((args, kwargs))
    seen: set[int] = set()
    total = 0
    for t in inputs:  # each distinct input read once
        if isinstance(t, Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += tensor_bytes(t)
    outputs, _ = tree_flatten(out)
    return total + sum(tensor_bytes(t) for t in outputs if isinstance(t, Tensor))


class _OpRecorder(TorchDispatchMode):
    """Bytes, op counts and executed-FLOP savings per module, beside a FlopCounterMode.

    Entered inside the FlopCounterMode so it sees each op first and passes it down to the
    counter: both see the same ops, attributed by the counter's ModuleTracker.
    """

    def __init__(self, counter: FlopCounterMode) -> None:
        super().__init__()
        self.counter = counter
        self.recording = True  # off while profile() builds gradient seeds
        self.bytes: dict[str, int] = defaultdict(int)
        self.ops: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.uncounted: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.executed_savings: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA or isinstance(func, torch._ops.HigherOrderOperator):
            return NotImplemented
        packet = func._overloadpacket
        registry = self.counter.flop_registry
        if packet not in registry and func is not torch.ops.prim.device.default:
            # FlopCounterMode decomposes ops it has no formula for when it can; do it here so
            # the pieces pass through both modes (and the composite is not reported uncounted).
            with self:
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        out = func(*args, **kwargs)
        if not self.recording or not does_work(func):
            return out
        name = str(packet)
        nbytes = _op_bytes(args, kwargs, out)
        saved = 0
        if packet in EXECUTED_FLOP_REGISTRY and packet in registry:
            dense = registry[packet](*args, **kwargs, out_val=out)
            saved = dense - int(EXECUTED_FLOP_REGISTRY[packet](*args, **kwargs, out_val=out))
        for parent in set(self.counter.mod_tracker.parents):
            self.bytes[parent] += nbytes
            self.ops[parent][name] += 1
            self.executed_savings[parent] += saved
            if packet not in registry:
                self.uncounted[parent][name] += 1
        return out


@dataclass
class RawCounts:
    """Per-module numbers of one run, keyed by the model's module path ("" = the model itself).

    ``flops_fwd``/``flops_bwd``: op name -> dense FLOPs; ``ops``/``uncounted``: op name -> calls
    (ops doing real work; uncounted = those without a FLOP formula); ``bytes``: roofline-minimum
    bytes; ``executed_savings``: dense - executed FLOPs. Key "Global" holds the whole run,
    including work done outside every module.
    """

    flops_fwd: dict[str, dict[str, int]] = field(default_factory=dict)
    flops_bwd: dict[str, dict[str, int]] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    ops: dict[str, dict[str, int]] = field(default_factory=dict)
    uncounted: dict[str, dict[str, int]] = field(default_factory=dict)
    executed_savings: dict[str, int] = field(default_factory=dict)


GLOBAL = "Global"


def _rename(d: dict[str, Any], root: str) -> dict[str, Any]:
    """ModuleTracker names modules "<RootClass>.features.0"; map them to named_modules paths."""
    out = {}
    for key, value in d.items():
        if key == GLOBAL:
            out[GLOBAL] = value
        elif key == root:
            out[""] = value
        elif key.startswith(root + "."):
            out[key[len(root) + 1:]] = value
    return out


def _as_plain(counts: dict[Any, dict[Any, int]]) -> dict[str, dict[str, int]]:
    return {mod: {str(op): int(v) for op, v in per_op.items()} for mod, per_op in counts.items()}


def _subtract(total: dict[str, dict[str, int]], part: dict[str, dict[str, int]]
              ) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for mod, per_op in total.items():
        diff = {op: v - part.get(mod, {}).get(op, 0) for op, v in per_op.items()}
        out[mod] = {op: v for op, v in diff.items() if v}
    return out


def grad_targets(model: nn.Module, args: Sequence[Any]) -> list[Tensor]:
    """What a training step differentiates: the trainable parameters and inputs needing grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    inputs = [a for a in tree_flatten(list(args))[0] if isinstance(a, Tensor) and a.requires_grad]
    return params + inputs


def differentiable_outputs(out: Any) -> list[Tensor]:
    return [t for t in tree_flatten(out)[0] if isinstance(t, Tensor) and t.requires_grad]


def backward_step(outputs: list[Tensor], targets: list[Tensor], seeds: list[Tensor]) -> None:
    """Gradients of ``outputs`` (seeded with ``seeds``) w.r.t. ``targets``, not touching .grad.

    ModuleTracker's backward hooks do not fire on a tensor that is itself the root of the
    backward graph, so the last module's and the model's backward would go unattributed; a view
    of each output (no work, no FLOPs) makes the outputs interior nodes.
    """
    roots = [o.view_as(o) for o in outputs]
    torch.autograd.grad(roots, targets, seeds, allow_unused=True)


def interior_inputs(args: tuple) -> tuple:
    """``args`` with each leaf tensor that requires grad replaced by a view of itself.

    ModuleTracker hooks the model's input tensors for its backward bookkeeping, and autograd
    cannot hook a leaf while it runs ``autograd.grad``; a view (no work) is not a leaf, and its
    gradient still flows to the leaf, which stays the differentiation target.
    """
    return tuple(tree_map(lambda a: a.view_as(a) if isinstance(a, Tensor) and a.requires_grad
                          and a.is_leaf else a, list(args)))


def count(model: nn.Module, args: tuple, backward: bool) -> RawCounts:
    """Run ``model(*args)`` once (and its backward if asked) under the counters."""
    root = type(model).__name__
    with FlopCounterMode(display=False) as counter, _OpRecorder(counter) as rec:
        if backward:
            out = model(*interior_inputs(args))
            fwd = copy.deepcopy(_as_plain(counter.get_flop_counts()))
            outputs = differentiable_outputs(out)
            rec.recording = False  # the seeds are not the model's work
            seeds = [torch.ones_like(o) for o in outputs]
            rec.recording = True
            backward_step(outputs, grad_targets(model, args), seeds)
        else:
            with torch.no_grad():
                model(*args)
            fwd = _as_plain(counter.get_flop_counts())
    total = _as_plain(counter.get_flop_counts())
    return RawCounts(
        flops_fwd=_rename(fwd, root),
        flops_bwd=_rename(_subtract(total, fwd), root),
        bytes=_rename(dict(rec.bytes), root),
        ops=_rename({k: dict(v) for k, v in rec.ops.items()}, root),
        uncounted=_rename({k: dict(v) for k, v in rec.uncounted.items()}, root),
        executed_savings=_rename(dict(rec.executed_savings), root),
    )
