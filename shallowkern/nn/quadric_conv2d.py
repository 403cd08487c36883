"""QuadricConv2d: diagonal quadric neurons on image patches (one quadric_linear call)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.quadric_linear import init_parameters, quadric_linear

__all__ = ["QuadricConv2d"]


def _pair(v, name: str) -> tuple[int, int]:
    v = (v, v) if isinstance(v, int) else tuple(v)
    if len(v) != 2 or not all(isinstance(e, int) and not isinstance(e, bool) for e in v):
        raise ValueError(f"QuadricConv2d: {name} must be an int or a pair of ints, got {v!r}")
    return v


class QuadricConv2d(nn.Module):
    """Diagonal quadric neurons on image patches: y = conv(x*x, Wq) + conv(x, W) + b.

    Same arguments as nn.Conv2d (zero padding, groups=1); ``weight`` and ``bias`` keep
    nn.Conv2d's names and shapes (K, C, R, S) / (K,), ``weight_quad`` has the weight's shape.
    Input (N, C, H, W) -> (N, K, OH, OW). The patch GEMM is one quadric_linear call on the
    unfolded patches (N*OH*OW, C*R*S), so the squaring happens in the kernel's operand load.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, device=None, dtype=None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"QuadricConv2d: {name} must be a positive int, got {v!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride, self.padding = _pair(stride, "stride"), _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.dilation) < 1 \
                or min(self.padding) < 0:
            raise ValueError("QuadricConv2d: need kernel_size, stride, dilation >= 1 and "
                             "padding >= 0")
        fk = {"device": device, "dtype": dtype}
        shape = (out_channels, in_channels, *self.kernel_size)
        self.weight_quad = nn.Parameter(torch.empty(shape, **fk))
        self.weight = nn.Parameter(torch.empty(shape, **fk))
        self.bias = nn.Parameter(torch.empty(out_channels, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        k = self.out_channels
        init_parameters(self.weight_quad.view(k, -1), self.weight.view(k, -1), self.bias,
                        "diagonal")

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor) or input.dim() != 4 or input.shape[1] != self.in_channels:
            got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"QuadricConv2d: input must be (N, {self.in_channels}, H, W), got {got}")
        n, _, h, w = input.shape
        (r, s), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        oh = (h + 2 * ph - dh * (r - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (s - 1) - 1) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"QuadricConv2d: the {r}x{s} kernel does not fit the padded {h}x{w} "
                             f"input")
        cols = F.unfold(input, self.kernel_size, self.dilation, self.padding, self.stride)
        patches = cols.transpose(1, 2)  # (N, OH*OW, C*R*S), a view: the op reads any strides
        k = self.out_channels
        y = quadric_linear(patches, self.weight_quad.view(k, -1), self.weight.view(k, -1), self.bias)
        return y.transpose(1, 2).reshape(n, k, oh, ow)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"bias={self.bias is not None}")
