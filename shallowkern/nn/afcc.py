"""AFCC-pruned layers: AFCCConv2d (kernel-pair mask) and AFCCLinear (class x filter-block mask).

Both hold their mask as a bool buffer and compute with ``weight * mask`` (the op never reads a
pruned weight), so the gradient of a pruned weight is exactly zero. Pruned weights are zeroed
when the mask is set and after ``load_state_dict``. Hence they stay zero under every optimizer
whose update of an element depends only on that element's value and gradient history (SGD with
momentum / Nesterov / weight decay, Adam, AdamW, RMSprop, Adagrad, ...): the moment buffers of a
pruned weight stay zero too. For any other ``torch.optim`` optimizer (one that mixes elements,
e.g. Muon's orthogonalisation) a global optimizer post-step hook re-applies the masks of the
AFCC layers whose weights it updated.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.afcc_conv2d import DISPATCH, afcc_conv2d, masked_weight, register_executed_flops

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


def _track(module: nn.Module) -> None:
    global _hook_handle
    _MASKED[id(module.weight)] = module
    if _hook_handle is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _hook_handle = register_optimizer_step_post_hook(_post_step)


def _check_mask(mask, shape: tuple[int, int], who: str) -> Tensor:
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


def afcc_conv2d_module_forward(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None,
                               stride, padding, dilation, padding_mode: str,
                               reversed_padding) -> Tensor:
    """AFCCConv2d.forward's body: one leaf for torch.fx.symbolic_trace (the functional checks
    shapes in Python)."""
    if padding_mode != "zeros":
        input, padding = F.pad(input, reversed_padding, mode=padding_mode), (0, 0)
    return afcc_conv2d(input, weight, mask, bias, stride, padding, dilation)


torch.fx.wrap("afcc_conv2d_module_forward")


class AFCCConv2d(nn.Conv2d):
    """nn.Conv2d with a fixed (out_channels, in_channels) kernel-pair mask.

    Same arguments, parameters and state_dict keys as nn.Conv2d (plus the ``mask`` buffer);
    ``groups`` must be 1 (a block-diagonal mask expresses groups). Input (N, C, H, W) ->
    (N, K, OH, OW). Runs ``shallowkern.ops.afcc_conv2d``: the C++ block-sparse kernel on CPU
    (fp32/fp64), Triton on CUDA (fp32/fp16/bf16), the dense conv with the masked weight where the
    mask's blocks fill poorly or the dtype has no kernel (``explain(x)`` says which).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, mask: Tensor | None = None):
        if groups != 1:
            raise ValueError(f"AFCCConv2d: groups must be 1 (use a block-diagonal mask), got "
                             f"{groups}")
        if isinstance(padding, str):
            raise ValueError("AFCCConv2d: padding must be an int or a pair (no 'same'/'valid')")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, 1,
                         bias, padding_mode, device, dtype)
        full = torch.ones(out_channels, in_channels, dtype=torch.bool, device=self.weight.device)
        self.register_buffer("mask", full)
        self.set_mask(full if mask is None else mask)
        _track(self)
        register_executed_flops()
        self._register_load_state_dict_pre_hook(self._load_hook)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, mask: Tensor) -> "AFCCConv2d":
        """An AFCCConv2d with ``conv``'s configuration and weights (pruned pairs zeroed)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError("AFCCConv2d.from_conv: conv must be an nn.Conv2d, got "
                            f"{type(conv).__name__}")
        w = conv.weight
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                  conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                  conv.padding_mode, device=w.device, dtype=w.dtype, mask=mask)
        with torch.no_grad():
            new.weight.copy_(w)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        new.apply_mask_()
        new.train(conv.training)
        return new

    def set_mask(self, mask: Tensor) -> None:
        """Replace the (out, in) mask (bool or 0/1) and zero the newly pruned weights."""
        mask = _check_mask(mask, (self.out_channels, self.in_channels), "AFCCConv2d")
        self.mask = mask.to(self.weight.device).clone()
        self.apply_mask_()

    @torch.no_grad()
    def apply_mask_(self) -> None:
        self.weight.mul_(self.mask[:, :, None, None])

    def _load_hook(self, state_dict, prefix, *args):
        if prefix + "mask" not in state_dict:  # a plain nn.Conv2d state_dict: keep our mask
            state_dict[prefix + "mask"] = self.mask

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.apply_mask_()

    @property
    def density(self) -> float:
        """Share of kept kernel pairs."""
        return self.mask.float().mean().item() if self.mask.numel() else 0.0

    def masked_weight(self) -> Tensor:
        return masked_weight(self.weight, self.mask)

    def _pad(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        if self.padding_mode == "zeros":
            return x, self.padding
        return F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode), (0, 0)

    def forward(self, input: Tensor) -> Tensor:
        return afcc_conv2d_module_forward(input, self.weight, self.mask, self.bias, self.stride,
                                          self.padding, self.dilation, self.padding_mode,
                                          self._reversed_padding_repeated_twice)

    def explain(self, input: Tensor):
        """Which backend ``forward(input)`` runs on, and why (nothing runs)."""
        x, padding = self._pad(input)
        return DISPATCH.choose(x, self.weight, self.mask, self.bias, list(self.stride),
                               list(padding), list(self.dilation))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", density={self.density:.3f}"


class AFCCLinear(nn.Linear):
    """nn.Linear with a (out_features, in_blocks) mask over blocks of in_features.

    For AFCC's read-out the input is a flattened (filters, S) map: in_blocks = filters, each
    block is one filter's S = in_features / in_blocks positions, and mask[c, n] keeps class c's
    weights on filter n. Input (..., in_features) -> (..., out_features). The ``weight_mask``
    buffer (out, in) is the expanded mask (not saved; the profiler reads it).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None, mask: Tensor | None = None, in_blocks: int | None = None):
        super().__init__(in_features, out_features, bias, device, dtype)
        if in_blocks is None:
            two_d = isinstance(mask, Tensor) and mask.dim() == 2
            in_blocks = mask.shape[1] if two_d else in_features
        if in_blocks < 1 or in_features % in_blocks:
            raise ValueError(f"AFCCLinear: in_blocks={in_blocks} must divide "
                             f"in_features={in_features}")
        self.in_blocks = in_blocks
        full = torch.ones(out_features, in_blocks, dtype=torch.bool, device=self.weight.device)
        self.register_buffer("block_mask", full)
        self.register_buffer("weight_mask", full.repeat_interleave(self.block_size, 1),
                             persistent=False)
        self.set_mask(full if mask is None else mask)
        _track(self)

    @property
    def block_size(self) -> int:
        return self.in_features // self.in_blocks

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Tensor) -> "AFCCLinear":
        """An AFCCLinear with ``linear``'s weights; mask (out_features, in_blocks)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError("AFCCLinear.from_linear: expected an nn.Linear, got "
                            f"{type(linear).__name__}")
        w = linear.weight
        new = cls(linear.in_features, linear.out_features, linear.bias is not None,
                  device=w.device, dtype=w.dtype, mask=mask)
        with torch.no_grad():
            new.weight.copy_(w)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        new.apply_mask_()
        return new

    def set_mask(self, mask: Tensor) -> None:
        mask = _check_mask(mask, (self.out_features, self.in_blocks), "AFCCLinear")
        self.block_mask = mask.to(self.weight.device).clone()
        self.weight_mask = self.block_mask.repeat_interleave(self.block_size, 1)
        self.apply_mask_()

    @torch.no_grad()
    def apply_mask_(self) -> None:
        self.weight.mul_(self.weight_mask)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.weight_mask = self.block_mask.repeat_interleave(self.block_size, 1)
        self.apply_mask_()

    @property
    def density(self) -> float:
        return self.block_mask.float().mean().item() if self.block_mask.numel() else 0.0

    def forward(self, input: Tensor) -> Tensor:
        w = torch.where(self.weight_mask, self.weight, torch.zeros((), dtype=self.weight.dtype,
                                                                   device=self.weight.device))
        return F.linear(input, w, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", in_blocks={self.in_blocks}, density={self.density:.3f}"
