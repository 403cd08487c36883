"""AFCCLinear: nn.Linear with a (out_features, in_blocks) mask over blocks of in_features
(AFCC's class x filter read-out); pruned weights stay exactly zero (``_afcc_masking``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._afcc_masking import check_mask, track


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
        track(self)

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
        mask = check_mask(mask, (self.out_features, self.in_blocks), "AFCCLinear")
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
