"""FLOP formulas shared by the registered ops, the profiler and the benchmarks.

Convention of ``torch.utils.flop_counter``: 2 FLOPs per multiply-add; bias, activations and
pooling are not counted (aten.convolution does not count its bias either). Three numbers matter
for structured layers (the profiler's columns):

* dense     what the equivalent dense layer (nn.Conv2d / nn.Linear / nn.Bilinear) spends;
* effective what the layer mathematically needs (kept connections, the symmetric half, ...);
* executed  what our kernel actually runs (including block padding of a block-sparse kernel).

Each op registers its formula with ``register_flop_formula`` in its own module, calling these.
Functions take shapes (tuples / torch.Size), never tensors, so they also serve fakes and models.
"""

from __future__ import annotations

from typing import Sequence

from .ops._geometry import conv_out_hw


# ---------------------------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------------------------
def conv2d_flops(input_shape: Sequence[int], weight_shape: Sequence[int], stride: Sequence[int],
                 padding: Sequence[int], dilation: Sequence[int]) -> int:
    """Dense 2-D convolution forward: 2 * N * OH * OW * K * (C/groups) * R * S."""
    n, _, h, w = input_shape
    k, cg, r, s = weight_shape
    oh, ow = conv_out_hw(h, w, (r, s), stride, padding, dilation)
    return 2 * n * max(oh, 0) * max(ow, 0) * k * cg * r * s


def conv2d_backward_flops(input_shape, weight_shape, stride, padding, dilation,
                          output_mask: Sequence[bool]) -> int:
    """Input and weight gradients each cost one forward's multiply-adds (bias grad not counted)."""
    return conv2d_flops(input_shape, weight_shape, stride, padding, dilation) * (
        int(bool(output_mask[0])) + int(bool(output_mask[1])))


def masked_conv2d_flops(input_shape, weight_shape, stride, padding, dilation,
                        kept_pairs: int) -> int:
    """A conv whose (out, in) kernel pairs are pruned: the dense count scaled by kept / all pairs."""
    k, cg = weight_shape[0], weight_shape[1]
    total = k * cg
    if total == 0:
        return 0
    return conv2d_flops(input_shape, weight_shape, stride, padding, dilation) * kept_pairs // total


# ---------------------------------------------------------------------------------------------
# linear layers
# ---------------------------------------------------------------------------------------------
def linear_flops(batch: int, in_features: int, out_features: int) -> int:
    """y = x W^T (+ b): 2 * B * in * out."""
    return 2 * batch * in_features * out_features


def bilinear_flops(batch: int, in1: int, in2: int, out_features: int) -> int:
    """nn.Bilinear, y_k = x1^T A_k x2: 2 * B * K * in1 * in2 (as aten's bilinear composes it)."""
    return 2 * batch * out_features * in1 * in2
