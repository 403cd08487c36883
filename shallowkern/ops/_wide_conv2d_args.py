"""Argument checks of shallowkern::wide_conv2d and wide_conv2d_backward (the registered ops
validate their own arguments: they are public API), split from ops/wide_conv2d.py (size budget);
ops/wide_conv2d.py re-exports them."""

from __future__ import annotations

import torch
from torch import Tensor

from ._geometry import check_conv_geometry, check_conv_tensors, pair

__all__ = ["check_args", "out_channels"]


def _shape(t) -> object:
    return tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__


def check_args(input: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation,
               groups: int, pool: int) -> tuple[int, int, int, int]:
    """Validate a call; returns (OH, OW, PH, PW): conv output and pooled output sizes."""
    op = "wide_conv2d"
    check_conv_tensors(op, input, weight, None, "(K, C/groups, R, S)")
    stride, padding, dilation = (pair(stride, "stride", op), pair(padding, "padding", op),
                                 pair(dilation, "dilation", op))
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1 \
            or input.shape[1] % groups or weight.shape[0] % groups:
        raise ValueError(f"{op}: groups={groups!r} must be a positive int dividing "
                         f"in_channels={input.shape[1]} and out_channels={weight.shape[0]}")
    if weight.shape[1] * groups != input.shape[1]:
        raise ValueError(f"{op}: weight has {weight.shape[1]} input channels per group but "
                         f"input has {input.shape[1]} channels and groups={groups}")
    if weight.shape[2] < 1 or weight.shape[3] < 1:  # oneDNN's error for it names nothing
        raise ValueError(f"{op}: weight must have a non-empty kernel, got {tuple(weight.shape)}")
    if bias is not None:
        if not isinstance(bias, Tensor) or tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {_shape(bias)}")
        if bias.dtype != input.dtype or bias.device != input.device:
            raise TypeError(f"{op}: bias must be {input.dtype} on {input.device}, got "
                            f"{bias.dtype} on {bias.device}")
    if pool not in (1, 2) or isinstance(pool, bool):
        raise ValueError(f"{op}: pool must be None/1 (no pooling) or 2, got {pool!r}")
    oh, ow = check_conv_geometry(op, input.shape[2:], weight.shape[2:], stride, padding, dilation)
    if pool == 2 and (oh < 2 or ow < 2):
        raise ValueError(f"{op}: pool=2 needs a conv output of at least 2x2, got {oh}x{ow}")
    if pool == 2 and input.shape[1] == 0:
        raise ValueError(f"{op}: pool=2 with zero input channels: conv2d's (N, 0, OH, OW) output "
                         "has no channel to pool (max_pool2d refuses it too)")
    return oh, ow, oh // pool, ow // pool


def out_channels(input: Tensor, weight: Tensor) -> int:
    """Output channels as aten's conv2d gives them: K, or 0 when the input has no channels."""
    return 0 if input.shape[1] == 0 else weight.shape[0]


def _check_backward_args(grad_out, input, weight, saved, stride, padding, dilation, groups, relu,
                         pool, output_mask):
    op = "wide_conv2d_backward"
    _, _, ph, pw = check_args(input, weight, None, stride, padding, dilation, groups, pool)
    want = (input.shape[0], out_channels(input, weight), ph, pw)
    if not isinstance(grad_out, Tensor) or tuple(grad_out.shape) != want:
        raise ValueError(f"{op}: grad_out must have shape {want}, got {_shape(grad_out)}")
    if grad_out.dtype != input.dtype or grad_out.device != input.device:
        raise TypeError(f"{op}: grad_out must be {input.dtype} on {input.device}, got "
                        f"{grad_out.dtype} on {grad_out.device}")
    if pool == 2:
        if saved.dtype != torch.uint8 or tuple(saved.shape) != want:
            raise ValueError(f"{op}: pool=2 needs the forward's uint8 indices of shape {want}, got "
                             f"{saved.dtype} {_shape(saved)}")
    elif relu and tuple(saved.shape) != want:
        raise ValueError(f"{op}: relu needs the forward's output of shape {want}, got "
                         f"{_shape(saved)}")
    if len(output_mask) != 3:
        raise ValueError(f"{op}: output_mask must have 3 entries, got {list(output_mask)}")
