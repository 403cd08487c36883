"""WideConv2d: an nn.Conv2d whose forward runs the fused conv + bias + [ReLU] + [2x2 max-pool]."""

from __future__ import annotations

import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops._backend import Choice
from ..ops.wide_conv2d import FORWARD, wide_conv2d


def _module_args(cfg: tuple, input: Tensor) -> tuple[Tensor, tuple[int, int], bool]:
    """(batched input with non-zero padding modes applied, int padding, was it unbatched)."""
    padding_mode, pads, padding = cfg[:3]
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    if padding_mode != "zeros":
        return F.pad(x, pads, mode=padding_mode), (0, 0), unbatched
    if isinstance(padding, str):  # 'valid' or 'same' (possibly asymmetric)
        if pads[0] == pads[1] and pads[2] == pads[3]:
            return x, (pads[2], pads[0]), unbatched
        return F.pad(x, pads), (0, 0), unbatched
    return x, padding, unbatched


def wide_conv2d_module_forward(input: Tensor, weight: Tensor, bias: Tensor | None,
                               cfg: tuple) -> Tensor:
    """WideConv2d's forward as one function of tensors and a tuple of plain values, so
    ``torch.fx.symbolic_trace`` (and torchvision's ``create_feature_extractor``) records it as one
    node instead of tracing the Python shape logic, which proxies cannot evaluate."""
    x, padding, unbatched = _module_args(cfg, input)
    stride, dilation, groups, activation, pool = cfg[3:]
    out = wide_conv2d(x, weight, bias, stride, padding, dilation, groups, activation, pool)
    return out.squeeze(0) if unbatched else out


torch.fx.wrap("wide_conv2d_module_forward")


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

    def _config(self) -> tuple:
        return (self.padding_mode, tuple(self._reversed_padding_repeated_twice), self.padding,
                tuple(self.stride), tuple(self.dilation), self.groups, self.activation, self.pool)

    def forward(self, input: Tensor) -> Tensor:
        return wide_conv2d_module_forward(input, self.weight, self.bias, self._config())

    def explain(self, input: Tensor) -> Choice:
        """Which kernel a forward on ``input`` would run, and why (no computation).

        Asks the op's dispatch table with exactly the arguments the forward would pass
        (unbatched inputs and padding modes included).
        """
        x, padding, _ = _module_args(self._config(), input)
        return FORWARD.choose(x, self.weight, self.bias, list(self.stride), list(padding),
                              list(self.dilation), self.groups)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.activation:
            s += f", activation={self.activation!r}"
        if self.pool:
            s += f", pool={self.pool}"
        return s
