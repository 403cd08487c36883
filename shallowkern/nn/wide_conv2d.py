"""WideConv2d: an nn.Conv2d whose forward runs the fused conv + bias + [ReLU] + [2x2 max-pool]."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.wide_conv2d import select_forward, wide_conv2d
from ..ops._backend import Choice


class WideConv2d(nn.Conv2d):
    """Drop-in ``nn.Conv2d`` with an optional fused epilogue.

    Same constructor, parameters (``weight`` (K, C/groups, R, S), ``bias`` (K,)) and state_dict
    keys as nn.Conv2d, so its checkpoints load unchanged. Keyword-only ``activation`` (None or
    "relu") and ``pool`` (None or 2: MaxPool2d(2), floor mode) fuse what would follow it.

    Input (N, C, H, W) or (C, H, W); any dtype/device nn.Conv2d takes. Which kernel runs
    (C++ CPU, CUDA, Triton, or the vendor op when the kernels do not cover the configuration) is
    reported by ``explain(x)`` before a call and ``shallowkern.last_backend("wide_conv2d")``
    after it. Non-zero ``padding_mode`` pads explicitly first, as nn.Conv2d does.
    """

    def __init__(self, *args, activation: str | None = None, pool: int | None = None, **kwargs):
        if activation not in (None, "relu"):
            raise ValueError(f"WideConv2d: activation must be None or 'relu', got {activation!r}")
        if pool not in (None, 1, 2):
            raise ValueError(f"WideConv2d: pool must be None or 2, got {pool!r}")
        super().__init__(*args, **kwargs)
        self.activation = activation
        self.pool = None if pool == 1 else pool

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, activation: str | None = None,
                  pool: int | None = None) -> "WideConv2d":
        """A WideConv2d sharing ``conv``'s configuration and (the same) parameter tensors."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                  device="meta", activation=activation, pool=pool)
        new.weight, new.bias = conv.weight, conv.bias
        new.train(conv.training)
        return new

    def _args(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Apply non-zero padding modes and string paddings; returns (input, int padding)."""
        if self.padding_mode != "zeros":
            return F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode), (0, 0)
        if isinstance(self.padding, str):  # 'valid' or 'same' (possibly asymmetric)
            pads = self._reversed_padding_repeated_twice
            if pads[0] == pads[1] and pads[2] == pads[3]:
                return x, (pads[2], pads[0])
            return F.pad(x, pads), (0, 0)
        return x, self.padding

    def forward(self, input: Tensor) -> Tensor:
        unbatched = input.dim() == 3
        x, padding = self._args(input.unsqueeze(0) if unbatched else input)
        out = wide_conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation,
                          self.groups, self.activation, self.pool)
        return out.squeeze(0) if unbatched else out

    def explain(self, input: Tensor) -> Choice:
        """Which kernel a forward on ``input`` would run, and why (no computation)."""
        return select_forward(input, self.weight, self.groups)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.activation:
            s += f", activation={self.activation!r}"
        if self.pool:
            s += f", pool={self.pool}"
        return s
