"""The pure-PyTorch reference of wide_conv2d and its backward (CONVENTIONS.md §2: the CPU
fallback, the test oracle and the benchmark baseline), split from ops/wide_conv2d.py (size
budget); ops/wide_conv2d.py re-exports every name, so imports from there keep working. Math:
ops/wide_conv2d.py's docstring."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._geometry import NO_GRAD, conv_out_hw, out_memory_format

__all__ = ["wide_conv2d_reference", "wide_conv2d_backward_reference", "wide_conv2d_composite",
           "unpool_grad"]


def _pool_indices(out: Tensor, flat_idx: Tensor, ow: int, relu: bool) -> Tensor:
    """max_pool2d's flat indices -> window position 2*di+dj (uint8), NO_GRAD where ReLU zeroed."""
    pos = ((flat_idx // ow) % 2) * 2 + (flat_idx % ow) % 2
    if relu:
        pos = torch.where(out <= 0, NO_GRAD, pos)
    return pos.to(torch.uint8)


def wide_conv2d_reference(input: Tensor, weight: Tensor, bias: Tensor | None, stride, padding,
                          dilation, groups: int, relu: bool, pool: int, return_indices: bool
                          ) -> tuple[Tensor, Tensor]:
    """conv2d -> [relu] -> [max_pool2d(2)] in aten ops; returns (out, indices) as the op does."""
    y = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    if relu:
        y = torch.relu(y)
    fmt = out_memory_format(input)
    if pool == 1:
        return y.contiguous(memory_format=fmt), input.new_empty(0, dtype=torch.uint8)
    out, flat = F.max_pool2d(y, 2, 2, return_indices=True)
    out = out.contiguous(memory_format=fmt)
    if not return_indices:
        return out, input.new_empty(0, dtype=torch.uint8)
    return out, _pool_indices(out, flat, y.shape[3], relu).contiguous(memory_format=fmt)


def unpool_grad(grad_out: Tensor, idx: Tensor, oh: int, ow: int) -> Tensor:
    """Scatter the pooled gradient to the conv output (N, K, OH, OW) through the 2x2 indices."""
    n, k, ph, pw = grad_out.shape
    onehot = idx.long().unsqueeze(-1) == torch.arange(4, device=idx.device)  # NO_GRAD -> all False
    # select, not multiply: a non-finite gradient must not leak into the other window positions
    gy = torch.where(onehot, grad_out.unsqueeze(-1), 0).view(n, k, ph, pw, 2, 2)
    gy = gy.permute(0, 1, 2, 4, 3, 5).reshape(n, k, 2 * ph, 2 * pw)
    return F.pad(gy, (0, ow - 2 * pw, 0, oh - 2 * ph))


def wide_conv2d_backward_reference(grad_out: Tensor, input: Tensor, weight: Tensor, saved: Tensor,
                                   stride, padding, dilation, groups: int, relu: bool, pool: int,
                                   output_mask: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor]:
    """Unpool/ReLU-mask the gradient, then aten's convolution_backward."""
    oh, ow = conv_out_hw(input.shape[2], input.shape[3], weight.shape[2:], stride, padding, dilation)
    if pool == 2:
        gy = unpool_grad(grad_out, saved, oh, ow)
    elif relu:
        gy = torch.where(saved > 0, grad_out, torch.zeros_like(grad_out))
    else:
        gy = grad_out
    gi, gw, gb = torch.ops.aten.convolution_backward(
        gy, input, weight, [weight.shape[0]], stride, padding, dilation, False, [0, 0], groups,
        list(output_mask))
    gi = gi.contiguous(memory_format=out_memory_format(input)) if output_mask[0] else None
    gw = gw.contiguous() if output_mask[1] else None
    # custom ops may not return aliased outputs: a fresh empty tensor for each masked-off grad
    return tuple(t if t is not None else input.new_empty(0) for t in (gi, gw, gb))


def wide_conv2d_composite(input: Tensor, weight: Tensor, bias: Tensor | None, stride, padding,
                          dilation, groups: int, relu: bool, pool: int) -> Tensor:
    """The same function in differentiable aten ops: what function transforms and double
    backward run (every torch.func transform differentiates it exactly)."""
    y = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    if relu:
        y = torch.relu(y)
    return F.max_pool2d(y, 2, 2) if pool == 2 else y
