"""AFCCConv2d: nn.Conv2d with a fixed (out, in) kernel-pair mask (AFCC pruning).

The mask is a bool buffer and the layer computes with ``weight * mask`` (the op never reads a
pruned weight), so a pruned weight's gradient is exactly zero and it stays zero under any
optimizer (``_afcc_masking``). AFCCLinear (the class x filter-block read-out) is in
``afcc_linear.py``, re-exported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.afcc_conv2d import DISPATCH, afcc_conv2d, masked_weight, register_executed_flops
from ._afcc_masking import check_mask, track
from .afcc_linear import AFCCLinear  # noqa: F401 (re-exported)


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
    (N, K, OH, OW). Runs ``shallowkern.ops.afcc_conv2d``: block-sparse on CPU (fp32/fp64: oneDNN
    sub-convs or the C++ kernel) and CUDA (Triton: fp32/fp16/bf16), the dense conv with the
    masked weight where that models faster or the dtype has no kernel (``explain(x)`` says).
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
        track(self)
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
        mask = check_mask(mask, (self.out_channels, self.in_channels), "AFCCConv2d")
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
