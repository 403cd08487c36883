"""``profile(model, x)``: FLOPs (dense / effective / executed), bytes, latency and roofline."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from . import latency as _latency
from . import roofline as _roofline
from .counter import (RawCounts, backward_step, count, differentiable_outputs, grad_targets,
                      interior_inputs)
from .effective import check_masks, kept_fraction, weight_of
from .result import ModuleRow, ProfileResult, Totals
from .roofline import Roofline


def profile(model: nn.Module, example_input: Tensor | tuple | list, *, backward: bool = False,
            latency: bool = True, warmup: int = 3, repeats: int = 20,
            device: torch.device | str | None = None, roofline: Roofline | None = None,
            masks: Mapping[str, Tensor] | None = None) -> ProfileResult:
    """Profile one call of ``model`` on ``example_input``: per-module FLOPs, bytes, latency.

    Args:
        model: any nn.Module; it runs as it is (train/eval mode kept; its ``.grad`` untouched).
        example_input: a Tensor, or a tuple/list of positional arguments holding at least one
            Tensor, e.g. (N, 3, 32, 32) for GeneralizedLeNet. FLOPs are for this whole batch.
        backward: profile forward + backward (gradients of every output, seeded with ones,
            w.r.t. the trainable parameters and the inputs that require grad) instead of forward.
        latency: time the pass (skipped, with a note, on the meta device).
        warmup, repeats: untimed calls first, then about ``repeats`` timed calls (median).
        device: None: where the model and input are. With a model on meta, the device whose
            roofline to report: a torch device (measured if not in the table) or a known name
            such as "NVIDIA H100 80GB HBM3". Must match the model's device otherwise.
        roofline: peak FLOP/s and bandwidth to use instead of the table or a measurement.
        masks: {module name: mask} of weights to leave out of the effective FLOPs; a mask has the
            module weight's shape, its (out, in) shape or its (out,) shape; True keeps.
    Returns:
        a ProfileResult (``print()``, ``table()``, ``to_dict()``, ``to_json()``).
    Runs on every device, including meta (nothing allocated: huge widths profile for free).
    """
    args = _check_inputs(model, example_input, warmup, repeats, roofline)
    data_device = _data_device(model, args)
    roof_device = _roof_device(data_device, device)
    masks = check_masks(model, masks)
    if backward and not grad_targets(model, args):
        raise ValueError("profile: backward=True but no parameter or input requires grad")
    dtype = _dtype(model, args)

    raw = count(model, args, backward)
    rows, totals, warnings, notes = _rows(model, raw, masks)
    if backward and not any(isinstance(a, Tensor) and a.requires_grad
                            for a in tree_flatten(list(args))[0]):
        notes.append("the input does not require grad, so layers that read it directly compute "
                     "no input gradient (aten skips it): their backward is 1x their forward")
    notes.append("executed FLOPs = dense FLOPs: no op reported a structured-sparse kernel"
                 if totals.executed_flops == totals.flops else
                 "executed FLOPs < dense: some ops ran structured-sparse kernels")

    result = ProfileResult(
        model=type(model).__name__, device=_roofline.device_name(data_device),
        dtype=_roofline.dtype_name(dtype), torch_version=torch.__version__,
        input_shapes=[list(a.shape) for a in args if isinstance(a, Tensor)], backward=backward,
        batch_size=_batch_size(args), totals=totals, rows=rows,
        uncounted=dict(sorted(raw.uncounted.get("Global", {}).items())),
        warnings=warnings, notes=notes)

    if latency and data_device.type == "meta":
        result.notes.append("latency skipped: the model is on the meta device (nothing runs)")
    elif latency:
        result.latency = _latency.measure(_step(model, args, backward), data_device, warmup,
                                          repeats, backward)

    if roofline is None and roof_device is not None:
        roofline, why = _roofline.for_device(roof_device, dtype)
        if why:
            result.notes.append(why)
    elif roofline is None:
        result.notes.append("no roofline: the model is on meta; pass device= (e.g. 'cuda' or "
                            "'NVIDIA H100 80GB HBM3') or roofline=")
    if roofline is not None:
        result.roofline = roofline
        result.time_floor_s, result.bound = roofline.floor(totals.executed_flops, totals.bytes)
        if result.latency is not None and result.latency.median_s > 0:
            result.roofline_pct = 100.0 * result.time_floor_s / result.latency.median_s
            if result.roofline_pct > 100.0:
                result.notes.append("measured faster than the roofline floor: the peaks are too "
                                    "low (a measurement disturbed by other load?); pass roofline=")
    return result


def _check_inputs(model: Any, example_input: Any, warmup: Any, repeats: Any, roofline: Any
                  ) -> tuple:
    if not isinstance(model, nn.Module):
        raise TypeError(f"profile: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_input, Tensor):
        args: tuple = (example_input,)
    elif isinstance(example_input, (tuple, list)) and any(
            isinstance(a, Tensor) for a in example_input):
        args = tuple(example_input)
    else:
        raise TypeError("profile: example_input must be a Tensor or a tuple/list of positional "
                        f"arguments with at least one Tensor, got {type(example_input).__name__}")
    for name, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"profile: {name} must be an int, got {type(value).__name__}")
        if value < low:
            raise ValueError(f"profile: {name} must be >= {low}, got {value}")
    if roofline is not None and not isinstance(roofline, Roofline):
        raise TypeError("profile: roofline must be a shallowkern.profile.Roofline(flops_per_s=..., "
                        f"bytes_per_s=...), got {type(roofline).__name__}")
    return args


def _data_device(model: nn.Module, args: tuple) -> torch.device:
    """The one device the model's tensors and the input tensors share."""
    found: dict[str, str] = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        found.setdefault(str(t.device), f"model tensor {name!r}")
    for i, t in enumerate(tree_flatten(list(args))[0]):
        if isinstance(t, Tensor):
            found.setdefault(str(t.device), f"example_input tensor #{i}")
    if len(found) > 1:
        raise ValueError("profile: the model and example_input must be on one device, found "
                         + ", ".join(f"{d} ({what})" for d, what in found.items()))
    return torch.device(next(iter(found)))


def _roof_device(data: torch.device, device: torch.device | str | None
                 ) -> torch.device | str | None:
    """The device whose roofline applies (None: none to measure)."""
    if device is None:
        return None if data.type == "meta" else data
    if isinstance(device, str) and not _roofline._is_device_string(device):
        if data.type != "meta":
            raise ValueError(f"profile: device={device!r} names a device for the roofline; that "
                             f"is for models on meta (this one is on {data})")
        return device
    if not isinstance(device, (str, torch.device)):
        raise TypeError("profile: device must be a torch.device or str, got "
                        f"{type(device).__name__}")
    dev = torch.device(device)
    if data.type != "meta" and (dev.type != data.type or
                                (dev.index is not None and data.index is not None
                                 and dev.index != data.index)):
        raise ValueError(f"profile: device={device!r} but the model and input are on {data}; "
                         "move them first (profile does not copy the model), or profile on meta")
    return dev


def _dtype(model: nn.Module, args: tuple) -> torch.dtype:
    for t in [*model.parameters(), *tree_flatten(list(args))[0]]:
        if isinstance(t, Tensor) and t.is_floating_point():
            return t.dtype
    return torch.float32


def _batch_size(args: tuple) -> int | None:
    for a in args:
        if isinstance(a, Tensor) and a.dim() > 0:
            return int(a.shape[0])
    return None


def _step(model: nn.Module, args: tuple, backward: bool):
    """One timed call: forward under no_grad, or forward + the same backward as counted."""
    if not backward:
        def forward() -> None:
            with torch.no_grad():
                model(*args)
        return forward
    targets = grad_targets(model, args)

    def train_step() -> None:
        outputs = differentiable_outputs(model(*interior_inputs(args)))
        backward_step(outputs, targets, [torch.ones_like(o) for o in outputs])
    return train_step


def _rows(model: nn.Module, raw: RawCounts, masks: dict[str, Tensor]
          ) -> tuple[list[ModuleRow], Totals, list[str], list[str]]:
    """Per-module rows and totals from the raw counts; effective FLOPs from the kept fractions."""
    named = list(model.named_modules())
    children = {name: [f"{name}.{c}" if name else c for c, _ in mod.named_children()]
                for name, mod in named}

    def dense(name: str) -> int:
        return sum(raw.flops_fwd.get(name, {}).values()) + sum(raw.flops_bwd.get(name, {}).values())

    def ops(name: str) -> int:
        return sum(raw.ops.get(name, {}).values())

    warnings: list[str] = []
    by_note: dict[str, list[str]] = {}
    own_savings: dict[str, int] = {}
    fractions: dict[str, float] = {}
    flagged: set[str] = set()
    for name, mod in named:
        own = dense(name) - sum(dense(c) for c in children[name])
        if weight_of(mod) is not None:
            fractions[name], note = kept_fraction(mod, name or type(model).__name__,
                                                  masks.get(name))
            if note:
                by_note.setdefault(note, []).append(name or type(model).__name__)
            own_savings[name] = round(own * (1.0 - fractions[name]))
        own_ops = ops(name) - sum(ops(c) for c in children[name])
        if own == 0 and own_ops > 0 and any(True for _ in mod.parameters(recurse=False)):
            flagged.add(name)
            in_children = [raw.uncounted.get(c, {}) for c in children[name]]
            own_uncounted = {op: n - sum(u.get(op, 0) for u in in_children)
                             for op, n in raw.uncounted.get(name, {}).items()}
            listed = ", ".join(op for op, n in own_uncounted.items() if n > 0)
            warnings.append(f"{name or type(model).__name__} ({type(mod).__name__}) has parameters "
                            f"and does work ({listed}) but no FLOP formula counted it: its FLOPs "
                            "read 0")

    notes = [f"{note} ({', '.join(names)})" for note, names in by_note.items()]
    rows = []
    for name, mod in named:
        inside = [n for n in own_savings if n == name or not name or n.startswith(name + ".")]
        fwd, bwd = raw.flops_fwd.get(name, {}), raw.flops_bwd.get(name, {})
        by_op = {op: fwd.get(op, 0) + bwd.get(op, 0) for op in {*fwd, *bwd}}
        total = dense(name)
        rows.append(ModuleRow(
            name=name, type=type(mod).__name__, depth=name.count(".") + 1 if name else 0,
            params=sum(p.numel() for p in mod.parameters()), flops=total,
            flops_forward=sum(fwd.values()), flops_backward=sum(bwd.values()),
            effective_flops=total - sum(own_savings[n] for n in inside),
            executed_flops=total - raw.executed_savings.get(name, 0),
            bytes=raw.bytes.get(name, 0), flops_by_op=dict(sorted(by_op.items())),
            uncounted=dict(sorted(raw.uncounted.get(name, {}).items())),
            kept_fraction=fractions.get(name, 1.0), flagged=name in flagged))

    g_fwd, g_bwd = raw.flops_fwd.get("Global", {}), raw.flops_bwd.get("Global", {})
    g_total = sum(g_fwd.values()) + sum(g_bwd.values())
    totals = Totals(params=sum(p.numel() for p in model.parameters()), flops=g_total,
                    flops_forward=sum(g_fwd.values()), flops_backward=sum(g_bwd.values()),
                    effective_flops=g_total - sum(own_savings.values()),
                    executed_flops=g_total - raw.executed_savings.get("Global", 0),
                    bytes=raw.bytes.get("Global", 0))
    if g_total == 0 and ops("Global") > 0:
        warnings.append("no FLOPs were counted at all although ops ran: none of them has a FLOP "
                        "formula (see 'uncounted')")
    return rows, totals, warnings, notes

