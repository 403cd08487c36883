"""spinal_linear: a SpinalNet head (Kabir et al., arXiv 2007.03347) as one op.

Math. x (B, F) is cut into S column splits x_0 .. x_{S-1} (``split_sizes``); layer i = 0..L-1
reads split s(i) = i mod S and, for i >= 1, the previous layer's output:

    z_i = W_i^x x_{s(i)} + W_i^h h_{i-1} + b_i          (no W_0^h: layer 0 sees only its split)
    h_i = act(z_i)                                       act in ACTIVATIONS
    y   = W_o [h_0, ..., h_{L-1}] + b_o

The module (``shallowkern.nn.SpinalLinear``) adds, per layer, dropout on the layer input
[x_{s(i)}, h_{i-1}] and on the output layer's input (as the public SpinalNet scripts do) and
BatchNorm1d on z_i. In inference the BatchNorm is folded into W_i^x, W_i^h, b_i (``fold_bn``),
so the op computes the whole head; dropout is the identity.

Split rule. With F = S*q + r (0 <= r < S) the first r splits have q+1 columns and the others q
(``torch.tensor_split``): every feature is used. The public SpinalNet code uses
x[:, 0:F//2] and x[:, F//2:2*(F//2)], which drops the last feature when F is odd; the two rules
agree whenever S divides F.

Backward (activations whose derivative is a function of their output, so only H = [h_0..h_{L-1}]
(B, L*W) is saved, no pre-activation):

    gH = gy W_o,  gW_o = gy^T H,  gb_o = sum_b gy
    for i = L-1 .. 0:  gz_i = (gH_i + gz_{i+1} W_{i+1}^h) * act'(h_i)
                       gW_i^x = gz_i^T x_{s(i)},  gW_i^h = gz_i^T h_{i-1},  gb_i = sum_b gz_i
                       gx_{s(i)} += gz_i W_i^x

No concatenation is materialised: the W_i^x / W_i^h products go into column slices of one
hidden buffer H, which is also the output layer's input.

Layers (CONVENTIONS.md §2): ``spinal_linear_reference`` (ops/spinal_reference.py, with the checks
and the backward formulas; re-exported here) is the fallback, the test oracle and the benchmark
baseline ("eager"); ops/spinal_fallback.py registers what _C does not provide and the CUDA
kernels; training with BatchNorm batch statistics or dropout is ops/spinal_train.py. The
registered ops ``torch.ops.shallowkern.spinal_linear`` (+ ``spinal_linear_forward`` /
``spinal_linear_backward`` for training) have C++ schemas
(csrc/registration.cpp) with a C++ autograd kernel and C++ CPU kernel (csrc/cpu/spinal_linear.cpp),
so a call costs a few microseconds of host time (two CPU paths: row blocks and, for large
layers, the BLAS chain; see ``_row_blocks_prefer``); on CUDA they run the Triton kernels
(shallowkern/triton/spinal_linear.py) or the CUDA C++ forward (csrc/cuda/spinal_linear.cu).
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import torch
from torch import Tensor
from ._common import register_flop_formula  # deferred: flop_counter imports Triton

from .. import _ext
from .. import flops as _flops
from ._backend import Backend, Choice, OpDispatch, record
from ._common import needs_composite, plain_eager_cpu
from .spinal_fallback import _LIBS, NATIVE_CPU, SCHEMAS  # noqa: F401  (registers the ops)
from .spinal_reference import (  # noqa: F401  (public names of this module)
    ACTIVATIONS, _ACT_FN, act_grad_from_out, check_args, check_config, fold_bn, init_bound,
    spinal_linear_backward_reference, spinal_linear_forward_reference, spinal_linear_reference,
    split_offsets, split_sizes)
from .spinal_train import (  # noqa: F401
    NATIVE_TRAIN, TRAIN_SCHEMAS, mask_layout, spinal_linear_train, spinal_linear_train_reference)


# ---------------------------------------------------------------------------------------------
# dispatch, FLOP formulas, functional
# ---------------------------------------------------------------------------------------------
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CUDA_NATIVE_MAX_WIDTH = 1024  # csrc/cuda/spinal_linear.cu keeps one row's h_{i-1} in shared memory


def _cuda_native_supports(input, weight_x, *rest) -> str | None:
    if torch.is_grad_enabled() and (input.requires_grad or any(w.requires_grad for w in weight_x)):
        return "the CUDA C++ kernel is forward-only (inference)"
    if weight_x[0].shape[0] > CUDA_NATIVE_MAX_WIDTH:
        return f"layer_width > {CUDA_NATIVE_MAX_WIDTH}"
    return None


def _triton_supports(input, *rest) -> str | None:
    if input.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton on CPU needs TRITON_INTERPRET=1"
    return None


def _triton_prefer(input, *rest) -> str | None:
    if input.device.type == "cpu":
        return "Triton on CPU runs only in the interpreter (tests force it with use_backend)"
    return None


class _TritonInterpreted(torch.autograd.Function):
    """Triton kernels on CPU tensors (TRITON_INTERPRET=1, tests only): the registered op's CPU
    kernel is the C++ one, so this path calls the launchers directly, with the same math."""

    @staticmethod
    def forward(ctx, input, nwx, nwh, nb, has_bo, splits, activation, *ts):
        from ..triton import spinal_linear as tk
        wx, wh, b = list(ts[:nwx]), list(ts[nwx:nwx + nwh]), list(ts[nwx + nwh:nwx + nwh + nb])
        wo, bo = ts[nwx + nwh + nb], (ts[-1] if has_bo else None)
        y, H = tk.spinal_forward(input, wx, wh, b, wo, bo, splits, activation)
        ctx.save_for_backward(input, H, wo, *wx, *wh)
        ctx.meta = (nwx, nwh, nb, has_bo, splits, activation)
        return y

    @staticmethod
    def backward(ctx, gy):
        from ..triton import spinal_linear as tk
        nwx, nwh, nb, has_bo, splits, activation = ctx.meta
        x, H, wo, *w = ctx.saved_tensors
        gx, gwx, gwh, gb, gwo, gbo = tk.spinal_backward(gy, x, w[:nwx], w[nwx:], H, wo, splits,
                                                        activation)
        return (gx, None, None, None, None, None, None, *gwx, *gwh, *(gb if nb else ()), gwo,
                *((gbo,) if has_bo else ()))


def _native_cpu_supports(*args) -> str | None:
    return None if NATIVE_CPU else \
        f"no C++ spinal_linear kernel (shallowkern._C: {_ext.load_error or 'built before it'})"


BLAS_CHAIN_MIN_MACS = 1 << 23  # per-layer multiply-adds from which the BLAS chain is chosen


@functools.lru_cache(maxsize=1024)
def _skinny_cached(rows: int, width: int, k: int) -> bool:
    ok = getattr(_ext._C, "small_gemm_ok", None)  # None: a _C built before the kernel
    return ok is not None and bool(ok(rows, width, k))


@functools.lru_cache(maxsize=1024)
def _transposed_cached(rows: int, width: int) -> bool:
    ok = getattr(_ext._C, "spinal_transposed_ok", None)  # None: a _C built before it
    return ok is not None and bool(ok(rows, width))


def _transposed(rows: int, width: int) -> bool:
    """Whether the C++ row-block forward runs as the transposed chain for this batch and width
    (fp32; csrc/cpu/spinal_linear.cpp chain_t), where it beats the BLAS chain too. Cached."""
    return _transposed_cached(rows, width)


def _skinny(rows: int, width: int, k: int) -> bool:
    """Whether the C++ kernels take their AVX-512 skinny-GEMM kernel for a layer (fp32). Cached
    per shape (a pybind call costs ~1 us): the SHALLOWKERN_CPU_AVX512 knob, flipped at run time,
    changes what the C++ GEMMs run at once but this path choice only for shapes not seen yet."""
    return _skinny_cached(rows, width, k)


# What torch.compiler.assume_constant_result sets: dynamo calls it at trace time (a static path
# choice) instead of tracing into the pybind call. Set directly because the decorator imports
# torch._dynamo (and Triton) at `import shallowkern` (tests/test_packaging.py); if torch renamed
# the attribute, torch.compile(fullgraph=True) of the module would fail loudly (tested).
_skinny._dynamo_marked_constant = True  # type: ignore[attr-defined]
_transposed._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _row_blocks_prefer(input, weight_x, *rest) -> str | None:
    """The C++ op has two CPU paths (csrc/cpu/spinal_linear.cpp): row blocks (the whole chain per
    block of rows, one block per thread, direct MKL for small products) and the BLAS chain
    (per-layer ATen/MKL GEMMs over the whole batch, multi-threaded inside). Row blocks win when
    per-call overhead matters; from BLAS_CHAIN_MIN_MACS multiply-adds per layer the chain's
    GEMMs are as fast or faster (docs/spinal.md, "CPU paths"), except for skinny fp32 layers
    (few rows or few outputs), where the row blocks' AVX-512 kernel beats MKL (small_gemm.h),
    and fp32 batches of 16-64 rows, which the row-block path runs as the transposed chain."""
    B = input.shape[0]
    W, k = weight_x[0].shape  # layer 0 reads split 0, the widest (tensor_split's rule)
    if input.dtype == torch.float32 and (_skinny(B, W, k) or _transposed(B, W)):
        return None
    if B * W * (k + W) >= BLAS_CHAIN_MIN_MACS:
        return f"{B}x{W}x{k + W} per layer >= {BLAS_CHAIN_MIN_MACS} multiply-adds: BLAS chain"
    return None


DISPATCH = OpDispatch("spinal_linear", [
    Backend("native", devices=("cpu",), dtypes=(torch.float32, torch.float64),
            supports=_native_cpu_supports, prefer=_row_blocks_prefer,
            description="C++ CPU kernel, row blocks (whole chain per block of rows, MKL GEMMs "
                        "into one hidden buffer)"),
    Backend("vendor", devices=("cpu",), dtypes=(torch.float32, torch.float64),
            supports=_native_cpu_supports,
            description="C++ CPU kernel, BLAS chain (per-layer multi-threaded ATen/MKL GEMMs over "
                        "the whole batch into one hidden buffer)"),
    Backend("triton", devices=("cuda", "cpu"), dtypes=(torch.float32, torch.float16, torch.bfloat16),
            needs_triton=True, supports=_triton_supports, prefer=_triton_prefer,
            description="Triton fused chain"),
    Backend("native", devices=("cuda",), dtypes=_CUDA_DTYPES, needs_cuda_ext=True,
            supports=_cuda_native_supports, description="CUDA C++ fused forward"),
    Backend("reference", description="PyTorch composition (spinal_linear_reference)"),
], key=lambda input, *rest: input)
_CPU_DTYPES = (torch.float32, torch.float64)
# what DISPATCH records for a CPU call on row blocks (the functional's fast path records the same)
_ROW_BLOCKS = Choice("native", next(b.description for b in DISPATCH.backends
                                    if b.name == "native" and b.devices == ("cpu",)))


def _flop_args(input_shape, weight_x_shapes, weight_h_shapes, out_weight_shape, splits):
    return (input_shape[0], input_shape[1], weight_x_shapes[0][0], len(weight_x_shapes), splits,
            out_weight_shape[0])


@register_flop_formula(torch.ops.shallowkern.spinal_linear)
def _flops_inference(input_shape, weight_x, weight_h, bias, out_weight, out_bias, splits, *a, **kw):
    return _flops.spinal_linear_flops(*_flop_args(input_shape, weight_x, weight_h, out_weight, splits))


@register_flop_formula(torch.ops.shallowkern.spinal_linear_forward)
def _flops_forward(input_shape, weight_x, weight_h, bias, out_weight, out_bias, splits, *a, **kw):
    return _flops.spinal_linear_flops(*_flop_args(input_shape, weight_x, weight_h, out_weight, splits))


@register_flop_formula(torch.ops.shallowkern.spinal_linear_backward)
def _flops_backward(grad_shape, input_shape, weight_x, weight_h, hidden, out_weight, splits, *a, **kw):
    return _flops.spinal_linear_backward_flops(
        *_flop_args(input_shape, weight_x, weight_h, out_weight, splits))


def flops(batch: int, in_features: int, layer_width: int, num_layers: int, splits: int,
          out_features: int) -> int:
    """Forward FLOPs (2 per multiply-add; bias/activation not counted, as torch's counter)."""
    return _flops.spinal_linear_flops(batch, in_features, layer_width, num_layers, splits, out_features)


def spinal_linear(
    input: Tensor, weight_x: Sequence[Tensor], weight_h: Sequence[Tensor],
    bias: Sequence[Tensor] | None, out_weight: Tensor, out_bias: Tensor | None = None, *,
    splits: int = 2, activation: str = "relu",
) -> Tensor:
    """The fused SpinalNet head: y = W_o [h_0..h_{L-1}] + b_o (see the module docstring).

    Shapes: input (B, F); weight_x[i] (W, F_{i mod S}); weight_h[i] (W, W) (layer i + 1);
    bias: L vectors (W,) or None; out_weight (O, L*W); out_bias (O,) or None -> (B, O).
    BatchNorm is not part of the op: fold it first (``fold_bn``; the module does).
    Support: CPU fp32/fp64 run the C++ kernel, as row blocks ("native") or, from
    ``BLAS_CHAIN_MIN_MACS`` multiply-adds per layer, as the BLAS chain ("vendor"); other dtypes,
    or no _C: the reference. CUDA fp32/fp16/bf16 run Triton (or the CUDA C++ forward when forced,
    inference only).
    Differentiable in every tensor argument; ``shallowkern.last_backend("spinal_linear")`` says
    which kernel ran. Bad arguments raise ValueError/TypeError naming the argument.
    """
    b = list(bias) if bias else []
    if NATIVE_CPU and plain_eager_cpu(input, _CPU_DTYPES):
        # the common CPU call, checked in C calls only (~2 us instead of ~12 through DISPATCH):
        # DISPATCH's choice for row blocks (a test keeps the two equal); the C++ op validates
        # everything itself. The BLAS chain's larger layers take the general path below.
        try:
            if not _row_blocks_prefer(input, weight_x):
                record("spinal_linear", _ROW_BLOCKS)
                return torch.ops.shallowkern.spinal_linear(input, weight_x, weight_h, b, out_weight,
                                                           out_bias, splits, activation, "native")
        except (RuntimeError, TypeError, ValueError, AttributeError, IndexError):
            check_args(input, weight_x, weight_h, b, out_weight, out_bias, splits, activation)
            raise
    if torch.compiler.is_compiling():
        # traced by dynamo: a static choice (no recording, no logging in the graph); the
        # registered op is one opaque node with its fake and autograd kernels
        if torch.is_autocast_enabled(input.device.type):
            dt = torch.get_autocast_dtype(input.device.type)
            c = lambda t: t.to(dt) if t is not None and t.is_floating_point() else t
            return spinal_linear_reference(c(input), [c(w) for w in weight_x], [c(w) for w in weight_h],
                                           [c(t) for t in b], c(out_weight), c(out_bias),
                                           splits=splits, activation=activation)
        backend = (("vendor" if _row_blocks_prefer(input, weight_x) else "native")
                   if input.device.type == "cpu" and NATIVE_CPU and input.dtype in
                   (torch.float32, torch.float64) else "triton" if input.is_cuda else
                   "reference" if _LIBS and input.device.type == "cpu" else None)
        if backend is None:
            return spinal_linear_reference(input, weight_x, weight_h, b, out_weight, out_bias,
                                           splits=splits, activation=activation)
        return torch.ops.shallowkern.spinal_linear(input, weight_x, weight_h, b, out_weight,
                                                   out_bias, splits, activation, backend)
    if torch.is_autocast_enabled(input.device.type) or needs_composite(input, *weight_x, out_weight):
        # autocast: every operand in the region's dtype, as aten's linear; torch.func transforms
        # and forward AD differentiate the composition exactly (a custom op's backward does not)
        if torch.is_autocast_enabled(input.device.type):
            dt = torch.get_autocast_dtype(input.device.type)
            c = lambda t: t.to(dt) if t is not None and t.is_floating_point() else t
            input, weight_x, weight_h, b = c(input), [c(w) for w in weight_x], [c(w) for w in weight_h], [c(t) for t in b]
            out_weight, out_bias = c(out_weight), c(out_bias)
        check_args(input, weight_x, weight_h, b, out_weight, out_bias, splits, activation)
        record("spinal_linear", Choice("reference", "autocast or function transform: the composition"))
        return spinal_linear_reference(input, weight_x, weight_h, b, out_weight, out_bias,
                                       splits=splits, activation=activation)
    try:
        choice = DISPATCH.select(input, weight_x, weight_h, b, out_weight, out_bias, splits, activation)
        if choice.backend == "reference":
            check_args(input, weight_x, weight_h, b, out_weight, out_bias, splits, activation)
            if _LIBS and input.device.type == "cpu":
                # no C++ kernel: the registered op's CPU kernels are the references (one node
                # for compile/export, as with the extension)
                return torch.ops.shallowkern.spinal_linear(input, weight_x, weight_h, b, out_weight,
                                                           out_bias, splits, activation, "reference")
            return spinal_linear_reference(input, weight_x, weight_h, b, out_weight, out_bias,
                                           splits=splits, activation=activation)
        if choice.backend == "triton" and input.device.type == "cpu":
            check_args(input, weight_x, weight_h, b, out_weight, out_bias, splits, activation)
            ts = [*weight_x, *weight_h, *b, out_weight] + ([out_bias] if out_bias is not None else [])
            return _TritonInterpreted.apply(input, len(weight_x), len(weight_h), len(b),
                                            out_bias is not None, splits, activation, *ts)
        # the C++ op validates everything itself: no Python checks on the fast path
        return torch.ops.shallowkern.spinal_linear(input, weight_x, weight_h, b, out_weight,
                                                   out_bias, splits, activation, choice.backend)
    except (RuntimeError, TypeError, ValueError, AttributeError, IndexError):
        # say what is wrong in Python's words (the argument's name) when the inputs are at fault
        check_args(input, weight_x, weight_h, b, out_weight, out_bias, splits, activation)
        raise


def explain(input: Tensor, weight_x, weight_h, bias, out_weight, out_bias=None, *, splits: int = 2,
            activation: str = "relu") -> Choice:
    """Which backend ``spinal_linear`` would run for these arguments (nothing runs)."""
    return DISPATCH.choose(input, weight_x, weight_h, list(bias or []), out_weight, out_bias,
                           splits, activation)
