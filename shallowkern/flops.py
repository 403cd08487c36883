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


# ---------------------------------------------------------------------------------------------
# SpinalNet head (shallowkern.ops.spinal_linear)
# ---------------------------------------------------------------------------------------------
def spinal_linear_flops(batch: int, in_features: int, layer_width: int, num_layers: int,
                        splits: int, out_features: int) -> int:
    """Forward of the whole chain: 2 * B * (sum_i F_{i mod S} W + (L-1) W^2 + L W O).

    F_s are the tensor_split column counts of the S splits (see ops/spinal_linear.py).
    """
    q, r = divmod(in_features, splits)
    macs = sum((q + 1 if i % splits < r else q) * layer_width for i in range(num_layers))
    macs += (num_layers - 1) * layer_width * layer_width + num_layers * layer_width * out_features
    return 2 * batch * macs


def spinal_linear_backward_flops(batch: int, in_features: int, layer_width: int, num_layers: int,
                                 splits: int, out_features: int) -> int:
    """Backward: the input-side and weight-side gradients each cost one forward."""
    return 2 * spinal_linear_flops(batch, in_features, layer_width, num_layers, splits,
                                   out_features)


# ---------------------------------------------------------------------------------------------
# quadric_linear (shallowkern/ops/quadric_linear.py): x (B, n), K outputs, T = n(n+1)/2
# ---------------------------------------------------------------------------------------------
def _quadric_terms(n: int, form: str, rank: int, kind: str) -> int:
    """Multiply-adds per (sample, output) of the quadratic part, by kind (see module doc)."""
    if kind not in ("dense", "effective", "executed"):
        raise ValueError(f"quadric_linear_flops: kind must be dense/effective/executed, got {kind!r}")
    if form == "diagonal":
        return n                                   # x*x is elementwise: one MAC per weight
    if form == "full":
        return n * n if kind == "dense" else n * (n + 1) // 2   # nn.Bilinear vs the triangle
    if form == "lowrank":
        return 2 * rank * n
    raise ValueError(f"quadric_linear_flops: unknown form {form!r}")


def quadric_linear_flops(batch: int, in_features: int, out_features: int, form: str,
                         rank: int = 1, kind: str = "effective") -> int:
    """Forward FLOPs. dense: what nn.Bilinear(x, x) + nn.Linear (full) or the unfused two/three
    GEMMs (diagonal, lowrank) run; effective: what the layer needs (full: the packed symmetric
    half, n(n+1)/2 per output); executed: what shallowkern's kernels run (= effective; the
    lowrank epilogue's r products per output are counted in all three)."""
    n, k = in_features, out_features
    macs = batch * k * (_quadric_terms(n, form, rank, kind) + n)
    return 2 * macs + (2 * batch * rank * k if form == "lowrank" else 0)


def quadric_linear_backward_flops(batch: int, in_features: int, out_features: int, form: str,
                                  rank: int = 1, output_mask: Sequence[bool] = (True,) * 4,
                                  kind: str = "effective") -> int:
    """Backward FLOPs: input gradient and weight gradients each cost one forward GEMM of their
    part (bias gradient not counted). executed adds what the kernels do beyond that: the full
    form's input-gradient contraction (4BT) on CPU, and the lowrank recomputation of the two
    factor GEMMs (2 * 2BrnK) whenever the input or quadratic-weight gradient is needed, as the
    Triton backward does (the C++ CPU training forward saves the factors instead)."""
    n, k = in_features, out_features
    quad = _quadric_terms(n, form, rank, kind)
    total = 0
    if output_mask[0]:
        total += 2 * batch * k * (quad + n)
        if form == "full" and kind == "executed":
            total += 4 * batch * n * (n + 1) // 2
    if output_mask[1]:
        total += 2 * batch * k * quad
    if output_mask[2]:
        total += 2 * batch * k * n
    if form == "lowrank" and kind == "executed" and (output_mask[0] or output_mask[1]):
        total += 4 * batch * rank * n * k
    return total


# ---------------------------------------------------------------------------------------------
# multi_delay_linear (shallowkern/ops/multi_delay_linear.py): x (B, T, n), M delays, K outputs
# ---------------------------------------------------------------------------------------------
def multi_delay_linear_flops(batch: int, steps: int, in_features: int, out_features: int,
                             num_delays: int) -> int:
    """Forward FLOPs: the one (B*T, n) x (n, M*K) GEMM (every input step meets every delay
    matrix once). The shift-and-add over delays (B*T_out*M*K adds) and the bias are not
    counted, as aten's conv does not count its bias."""
    return 2 * batch * steps * in_features * out_features * num_delays


def multi_delay_linear_backward_flops(batch: int, steps: int, in_features: int,
                                      out_features: int, num_delays: int,
                                      output_mask: Sequence[bool] = (True,) * 3) -> int:
    """Backward FLOPs: one GEMM of the forward's size for the input gradient and one for the
    weight gradient (the bias gradient's sum is not counted)."""
    one = multi_delay_linear_flops(batch, steps, in_features, out_features, num_delays)
    return one * (int(bool(output_mask[0])) + int(bool(output_mask[1])))
