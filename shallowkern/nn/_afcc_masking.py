"""Mask bookkeeping shared by the AFCC layers (shallowkern/nn/afcc.py, afcc_linear.py).

Pruned weights are zeroed when a mask is set and after ``load_state_dict``, and the layers
compute with ``weight * mask``, so a pruned weight's gradient is exactly zero: under every
optimizer whose update of an element depends only on that element's value and gradient history
(``_ELEMENTWISE``) it stays zero. For any other ``torch.optim`` optimizer (one that mixes
elements, e.g. Muon's orthogonalisation) a global post-step hook re-applies the masks of the
AFCC layers whose weights it updated.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

# optimizers whose per-element update keeps an exactly-zero weight with zero gradient at zero
_ELEMENTWISE = tuple(getattr(torch.optim, n) for n in (
    "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adamax", "NAdam", "RAdam", "ASGD", "Adadelta",
    "Rprop", "SparseAdam") if hasattr(torch.optim, n))
_MASKED: "weakref.WeakValueDictionary[int, nn.Module]" = weakref.WeakValueDictionary()
_hook_handle = None


def _post_step(optimizer, args, kwargs):
    if type(optimizer) in _ELEMENTWISE or not _MASKED:
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            mod = _MASKED.get(id(p))
            if mod is not None and mod.weight is p:
                mod.apply_mask_()


def track(module: nn.Module) -> None:
    global _hook_handle
    _MASKED[id(module.weight)] = module
    if _hook_handle is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _hook_handle = register_optimizer_step_post_hook(_post_step)


def check_mask(mask, shape: tuple[int, int], who: str) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{who}: mask must be a bool tensor of shape {shape}, got "
                        f"{type(mask).__name__}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{who}: mask shape {tuple(mask.shape)} != expected {shape}")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex() or ((mask != 0) & (mask != 1)).any():
            raise ValueError(f"{who}: mask must be bool or 0/1, got {mask.dtype} with other values")
        mask = mask.bool()
    return mask
