"""Effective FLOPs: the share of a layer's weights that are really in use.

A weight-bearing layer (a ``weight`` of 2 or more dims: Conv*, Linear, WideConv2d, ...) does work
for each (out, in) pair: a kernel of a conv, a single weight of a linear layer. A pair does not
count when

* all its weights are exactly zero (structure found in the weights themselves), or
* a mask removes it: ``masks={module_name: mask}`` given to ``profile``, or else a ``weight_mask``
  buffer (what ``torch.nn.utils.prune`` installs) or a ``mask`` buffer on the module. A mask may be
  per weight (``weight.shape``), per (out, in) pair (``weight.shape[:2]``) or per output
  (``weight.shape[:1]``); True/non-zero keeps.

The fraction kept is measured over weight elements, so an element-wise mask counts element by
element, while zero detection works on whole pairs (a dense kernel runs a partly-zero kernel in
full). The layer's own FLOPs (forward, and backward: its input and weight gradients) scale by it.
This is what AFCC pruning reports.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn


def weight_of(module: nn.Module) -> Tensor | None:
    """The module's weight if it is a matmul/conv-like one (2+ dims), else None."""
    w = getattr(module, "weight", None)
    return w if isinstance(w, Tensor) and w.dim() >= 2 else None


def module_mask(module: nn.Module, given: Tensor | None) -> Tensor | None:
    """The mask that applies: the one passed in, else a ``weight_mask`` / ``mask`` buffer."""
    if given is not None:
        return given
    buffers = dict(module.named_buffers(recurse=False))
    return buffers.get("weight_mask", buffers.get("mask"))


def check_masks(model: nn.Module, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """Validate ``masks`` against the model; raises TypeError/ValueError naming the bad entry."""
    if masks is None:
        return {}
    if not isinstance(masks, Mapping):
        raise TypeError(f"profile: masks must be a dict {{module_name: bool tensor}}, got "
                        f"{type(masks).__name__}")
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        if name not in modules:
            raise ValueError(f"profile: masks[{name!r}]: the model has no module {name!r}")
        if not isinstance(mask, Tensor):
            raise TypeError(f"profile: masks[{name!r}] must be a tensor, got {type(mask).__name__}")
        weight = weight_of(modules[name])
        if weight is None:
            raise ValueError(f"profile: masks[{name!r}]: module {name!r} "
                             f"({type(modules[name]).__name__}) has no conv/linear weight to mask")
        _expand(mask, weight, name)
    return dict(masks)


def _expand(mask: Tensor, weight: Tensor, name: str) -> Tensor:
    shapes = (tuple(weight.shape), tuple(weight.shape[:2]), tuple(weight.shape[:1]))
    if tuple(mask.shape) not in shapes:
        raise ValueError(f"profile: mask for {name!r} has shape {tuple(mask.shape)}; expected the "
                         f"weight's {shapes[0]}, per (out, in) pair {shapes[1]} or per output "
                         f"{shapes[2]}")
    keep = mask if mask.dtype == torch.bool else mask != 0
    keep = keep.reshape(*keep.shape, *([1] * (weight.dim() - keep.dim())))
    return keep.expand(weight.shape)


def kept_fraction(module: nn.Module, name: str, mask: Tensor | None) -> tuple[float, str | None]:
    """(fraction of weight elements in use, why it may be overstated or None) for one module."""
    weight = weight_of(module)
    if weight is None or weight.numel() == 0:
        return 1.0, None
    mask = module_mask(module, mask)
    note = None
    with torch.no_grad():
        if weight.is_meta:
            keep = None  # no values: no zero detection
            note = "weights on meta: zero kernels not detected"
        else:
            pairs = weight.reshape(weight.shape[0], weight.shape[1], -1).ne(0).any(-1)
            keep = pairs.reshape(*pairs.shape, *([1] * (weight.dim() - 2))).expand(weight.shape)
        if mask is not None:
            if mask.is_meta:
                return 1.0, "mask on meta: ignored"
            m = _expand(mask, weight, name).to(weight.device if keep is not None else mask.device)
            keep = m if keep is None else keep & m
        if keep is None:
            return 1.0, note
        return keep.sum().item() / weight.numel(), note
