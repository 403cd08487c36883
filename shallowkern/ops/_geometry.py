"""Convolution geometry shared by every conv-shaped op, its Triton launchers, models and FLOP formulas.

Torch-only (no Triton, no extension), so fakes, models and the profiler can import it freely.
The output-size formula floors, as aten does; the C++ checks (csrc/include/shallowkern/checks.h)
and the CUDA header implement the same floor division and tests compare them on impossible
geometries (kernel larger than the padded input gives a size < 1, never a truncated "fit").
"""

from __future__ import annotations

import numbers
from typing import Sequence

import torch
from torch import Tensor

# idx value of wide_conv2d's uint8 pooling indices for windows the ReLU zeroed: no gradient flows
NO_GRAD = 4


def out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """One spatial output size of a convolution: floor((size + 2p - d(k-1) - 1) / s) + 1.

    Python's ``//`` floors, so an input smaller than the dilated kernel gives a value <= 0
    (C's ``/`` truncates toward zero and would wrongly give 1 for e.g. size 4, kernel 15).
    """
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_out_hw(h: int, w: int, weight_hw: Sequence[int], stride: Sequence[int],
                padding: Sequence[int], dilation: Sequence[int]) -> tuple[int, int]:
    """(OH, OW) of a 2-D convolution with zero padding; may be <= 0 for impossible geometries."""
    r, s = weight_hw
    return (out_size(h, r, stride[0], padding[0], dilation[0]),
            out_size(w, s, stride[1], padding[1], dilation[1]))


def out_memory_format(x: Tensor) -> torch.memory_format:
    """Outputs follow the input's layout, as cuDNN does: channels_last in, channels_last out."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def pair(v, name: str, op: str = "shallowkern") -> list[int]:
    """Normalise an int or a pair of ints (as nn.Conv2d takes) into ``[a, b]``.

    Rejects floats, bools, strings and wrong lengths with a ValueError naming ``name``.
    """
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return [int(v), int(v)]
    try:
        items = list(v)
    except TypeError:
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}") from None
    if len(items) != 2 or not all(isinstance(e, numbers.Integral) and not isinstance(e, bool)
                                  for e in items):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    return [int(e) for e in items]


def check_conv_geometry(op: str, in_hw: Sequence[int], weight_hw: Sequence[int],
                        stride: Sequence[int], padding: Sequence[int],
                        dilation: Sequence[int]) -> tuple[int, int]:
    """Validate stride/padding/dilation and that the kernel fits; returns (OH, OW) >= 1."""
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"{op}: need stride >= 1, dilation >= 1, padding >= 0; got "
                         f"stride={list(stride)}, dilation={list(dilation)}, padding={list(padding)}")
    oh, ow = conv_out_hw(in_hw[0], in_hw[1], weight_hw, stride, padding, dilation)
    if oh < 1 or ow < 1:
        raise ValueError(f"{op}: the {weight_hw[0]}x{weight_hw[1]} kernel (dilation "
                         f"{list(dilation)}) does not fit the {in_hw[0]}x{in_hw[1]} input padded by "
                         f"{list(padding)} (output would be {oh}x{ow})")
    return oh, ow


def _shape_of(t) -> object:
    return tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__


def check_conv_tensors(op: str, input, weight, bias=None,
                       weight_dims: str = "(K, C, R, S)") -> None:
    """The tensor checks every conv-shaped op shares, each error naming the argument: input
    (N, C, H, W) and weight ``weight_dims`` 4-D, input floating-point, weight of the input's
    dtype and device, and (when given) bias (K,) of the input's dtype and device."""
    if not isinstance(input, Tensor) or input.dim() != 4:
        raise ValueError(f"{op}: input must be a 4-D (N, C, H, W) tensor, got {_shape_of(input)}")
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise ValueError(f"{op}: weight must be a 4-D {weight_dims} tensor, got "
                         f"{_shape_of(weight)}")
    if not input.is_floating_point():
        raise TypeError(f"{op}: input must be a floating-point tensor, got {input.dtype}")
    if weight.dtype != input.dtype:
        raise TypeError(f"{op}: weight dtype {weight.dtype} != input dtype {input.dtype}")
    if weight.device != input.device:
        raise ValueError(f"{op}: weight is on {weight.device}, input on {input.device}")
    if bias is not None:
        if not isinstance(bias, Tensor) or tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got "
                             f"{_shape_of(bias)}")
        if bias.dtype != input.dtype or bias.device != input.device:
            raise TypeError(f"{op}: bias must be {input.dtype} on {input.device}, got "
                            f"{bias.dtype} on {bias.device}")
