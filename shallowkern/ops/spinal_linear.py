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

Layers (CONVENTIONS.md §2): ``spinal_linear_reference`` below is the fallback, the test oracle and
the benchmark baseline ("eager"). The registered ops ``torch.ops.shallowkern.spinal_linear``
(+ ``spinal_linear_forward`` / ``spinal_linear_backward`` for training) have C++ schemas
(csrc/registration.cpp) with a C++ autograd kernel and C++ CPU kernel (csrc/cpu/spinal_linear.cpp),
so a call costs a few microseconds of host time; on CUDA they run the Triton kernels
(shallowkern/triton/spinal_linear.py) or the CUDA C++ forward (csrc/cuda/spinal_linear.cu).
"""

from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from ._common import register_flop_formula  # deferred: flop_counter imports Triton

from .. import _ext
from .. import flops as _flops
from ._backend import Backend, Choice, OpDispatch, record
from ._common import needs_composite

ACTIVATIONS = ("relu", "tanh", "sigmoid", "identity")
_ACT_FN: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda t: t,
}


# ---------------------------------------------------------------------------------------------
# shapes and checks
# ---------------------------------------------------------------------------------------------
def split_sizes(in_features: int, splits: int) -> list[int]:
    """Column counts of the S splits of ``in_features`` (tensor_split rule, see module doc)."""
    q, r = in_features // splits, in_features % splits  # (not divmod: SymInt under fake tensors)
    return [q + 1 if s < r else q for s in range(splits)]


def split_offsets(in_features: int, splits: int) -> list[int]:
    """Start column of each split (length S + 1, last = in_features)."""
    offs = [0]
    for n in split_sizes(in_features, splits):
        offs.append(offs[-1] + n)
    return offs


def check_config(in_features: int, out_features: int, layer_width: int, num_layers: int,
                 splits: int, activation: str) -> None:
    """Validate SpinalLinear hyper-parameters; errors name the argument."""
    for name, v, lo in (("in_features", in_features, 1), ("out_features", out_features, 1),
                        ("layer_width", layer_width, 1), ("num_layers", num_layers, 1),
                        ("splits", splits, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"spinal_linear: {name} must be an int >= {lo}, got {v!r}")
    if splits > in_features:
        raise ValueError(f"spinal_linear: splits={splits} must be <= in_features={in_features} "
                         "(every split needs at least one column)")
    if activation not in ACTIVATIONS:
        raise ValueError(f"spinal_linear: activation must be one of {ACTIVATIONS}, got {activation!r}")


def check_args(input: Tensor, weight_x: Sequence[Tensor], weight_h: Sequence[Tensor],
               bias: Sequence[Tensor] | None, out_weight: Tensor, out_bias: Tensor | None,
               splits: int, activation: str) -> tuple[int, int, int]:
    """Validate a functional call; returns (L, W, O): layers, layer width, out features."""
    if not isinstance(input, Tensor) or input.dim() != 2:
        raise ValueError("spinal_linear: input must be a 2-D (B, in_features) tensor, got "
                         f"{tuple(input.shape) if isinstance(input, Tensor) else type(input)}")
    if not input.is_floating_point():
        raise TypeError(f"spinal_linear: input must be a floating-point tensor, got {input.dtype}")
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= max(input.shape[1], 1):
        raise ValueError(f"spinal_linear: splits must be an int in [1, in_features={input.shape[1]}], "
                         f"got {splits!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"spinal_linear: activation must be one of {ACTIVATIONS}, got {activation!r}")
    L = len(weight_x)
    if L < 1:
        raise ValueError("spinal_linear: weight_x must hold one (W, split) matrix per layer, got none")
    if len(weight_h) != L - 1:
        raise ValueError(f"spinal_linear: weight_h must hold num_layers - 1 = {L - 1} matrices "
                         f"(layer 0 has no W^h), got {len(weight_h)}")
    if bias is not None and len(bias) not in (0, L):
        raise ValueError(f"spinal_linear: bias must hold {L} vectors (or be None/empty), got {len(bias)}")
    if not isinstance(out_weight, Tensor) or out_weight.dim() != 2:
        raise ValueError("spinal_linear: out_weight must be a 2-D (out_features, num_layers * "
                         "layer_width) tensor")
    W = weight_x[0].shape[0] if weight_x[0].dim() == 2 else -1
    sizes = split_sizes(input.shape[1], splits)

    def same(t: Tensor, name: str) -> None:
        if not isinstance(t, Tensor):
            raise TypeError(f"spinal_linear: {name} must be a tensor, got {type(t).__name__}")
        if t.dtype != input.dtype or t.device != input.device:
            raise TypeError(f"spinal_linear: {name} must be {input.dtype} on {input.device} like "
                            f"input, got {t.dtype} on {t.device}")

    for i, w in enumerate(weight_x):
        same(w, f"weight_x[{i}]")
        want = (W, sizes[i % splits])
        if tuple(w.shape) != want:
            raise ValueError(f"spinal_linear: weight_x[{i}] must have shape {want} (layer_width, "
                             f"columns of split {i % splits}), got {tuple(w.shape)}")
    for i, w in enumerate(weight_h):
        same(w, f"weight_h[{i}]")
        if tuple(w.shape) != (W, W):
            raise ValueError(f"spinal_linear: weight_h[{i}] (layer {i + 1}) must have shape "
                             f"{(W, W)}, got {tuple(w.shape)}")
    for i, b in enumerate(bias or ()):
        same(b, f"bias[{i}]")
        if tuple(b.shape) != (W,):
            raise ValueError(f"spinal_linear: bias[{i}] must have shape ({W},), got {tuple(b.shape)}")
    same(out_weight, "out_weight")
    if out_weight.shape[1] != L * W:
        raise ValueError(f"spinal_linear: out_weight must have {L} * {W} = {L * W} columns "
                         f"(num_layers * layer_width), got {tuple(out_weight.shape)}")
    O = out_weight.shape[0]
    if out_bias is not None:
        same(out_bias, "out_bias")
        if tuple(out_bias.shape) != (O,):
            raise ValueError(f"spinal_linear: out_bias must have shape ({O},), got {tuple(out_bias.shape)}")
    return L, W, O


# ---------------------------------------------------------------------------------------------
# the pure-PyTorch reference (fallback, oracle, "eager" baseline)
# ---------------------------------------------------------------------------------------------
def spinal_linear_reference(
    input: Tensor, weight_x: Sequence[Tensor], weight_h: Sequence[Tensor],
    bias: Sequence[Tensor] | None, out_weight: Tensor, out_bias: Tensor | None = None, *,
    splits: int = 2, activation: str = "relu",
    norms: Sequence[Callable[[Tensor], Tensor]] | None = None, dropout: float = 0.0,
    training: bool = False,
) -> Tensor:
    """The SpinalNet head in plain PyTorch ops (differentiable; any device/dtype torch supports).

    input (B, F); weight_x[i] (W, F_{i mod S}); weight_h[i] (W, W) for layer i + 1; bias[i] (W,)
    or None; out_weight (O, L*W); out_bias (O,) or None -> (B, O). ``norms``: one callable per
    layer applied to z_i (the module passes its BatchNorm1d layers); ``dropout``: probability on
    every layer input and the output layer input when ``training``.
    """
    offs = split_offsets(input.shape[1], splits)
    act = _ACT_FN[activation]
    drop = (lambda t: F.dropout(t, dropout, True)) if training and dropout > 0 else (lambda t: t)
    hs: list[Tensor] = []
    for i, wx in enumerate(weight_x):
        s = i % splits
        z = F.linear(drop(input[:, offs[s]:offs[s + 1]]), wx, bias[i] if bias else None)
        if i > 0:
            z = z + F.linear(drop(hs[-1]), weight_h[i - 1])
        if norms is not None:
            z = norms[i](z)
        hs.append(act(z))
    return F.linear(drop(torch.cat(hs, 1)), out_weight, out_bias)


def fold_bn(weight_x: Sequence[Tensor], weight_h: Sequence[Tensor], bias: Sequence[Tensor] | None,
            running_mean: Sequence[Tensor], running_var: Sequence[Tensor],
            bn_weight: Sequence[Tensor | None], bn_bias: Sequence[Tensor | None], eps: float,
            ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Fold inference BatchNorm (z -> (z - mean) / sqrt(var + eps) * gamma + beta) into the layers.

    Returns (weight_x', weight_h', bias') with W' = s W and b' = s (b - mean) + beta, where
    s = gamma / sqrt(var + eps). Exact up to rounding; gradients flow to all inputs.
    """
    wx, wh, bs = [], [], []
    for i in range(len(weight_x)):
        scale = torch.rsqrt(running_var[i] + eps)
        if bn_weight[i] is not None:
            scale = scale * bn_weight[i]
        b = bias[i] if bias else torch.zeros_like(running_mean[i])
        shift = (b - running_mean[i]) * scale
        if bn_bias[i] is not None:
            shift = shift + bn_bias[i]
        wx.append(weight_x[i] * scale[:, None])
        if i > 0:
            wh.append(weight_h[i - 1] * scale[:, None])
        bs.append(shift)
    return wx, wh, bs


# ---------------------------------------------------------------------------------------------
# registered ops: schemas (C++ in csrc/registration.cpp; defined here when _C is missing)
# ---------------------------------------------------------------------------------------------
SCHEMAS = {
    "spinal_linear": (
        "spinal_linear(Tensor input, Tensor[] weight_x, Tensor[] weight_h, Tensor[] bias, "
        "Tensor out_weight, Tensor? out_bias, int splits, str activation, str backend) -> Tensor"),
    "spinal_linear_forward": (
        "spinal_linear_forward(Tensor input, Tensor[] weight_x, Tensor[] weight_h, Tensor[] bias, "
        "Tensor out_weight, Tensor? out_bias, int splits, str activation, str backend) "
        "-> (Tensor out, Tensor hidden)"),
    "spinal_linear_backward": (
        "spinal_linear_backward(Tensor grad_out, Tensor input, Tensor[] weight_x, Tensor[] weight_h, "
        "Tensor hidden, Tensor out_weight, int splits, str activation, str backend) "
        "-> (Tensor grad_input, Tensor[] grad_weight_x, Tensor[] grad_weight_h, Tensor[] grad_bias, "
        "Tensor grad_out_weight, Tensor grad_out_bias)"),
}


def spinal_linear_forward_reference(input, weight_x, weight_h, bias, out_weight, out_bias, splits,
                                    activation) -> tuple[Tensor, Tensor]:
    """(y, H): the output and the hidden buffer [h_0..h_{L-1}] (B, L*W) the backward needs."""
    offs = split_offsets(input.shape[1], splits)
    act = _ACT_FN[activation]
    hs: list[Tensor] = []
    for i, wx in enumerate(weight_x):
        s = i % splits
        z = F.linear(input[:, offs[s]:offs[s + 1]], wx, bias[i] if len(bias) else None)
        if i > 0:
            z = z + F.linear(hs[-1], weight_h[i - 1])
        hs.append(act(z))
    H = torch.cat(hs, 1)
    return F.linear(H, out_weight, out_bias), H


def act_grad_from_out(h: Tensor, activation: str) -> Tensor:
    """act'(z) written with h = act(z)."""
    if activation == "relu":
        return (h > 0).to(h.dtype)
    if activation == "tanh":
        return 1 - h * h
    if activation == "sigmoid":
        return h * (1 - h)
    return torch.ones_like(h)


def spinal_linear_backward_reference(grad_out, input, weight_x, weight_h, hidden, out_weight,
                                     splits, activation):
    """The backward formulas of the module docstring in torch ops (oracle of the kernels)."""
    L, W = len(weight_x), weight_x[0].shape[0]
    offs = split_offsets(input.shape[1], splits)
    gy = grad_out.to(input.dtype)
    gwo, gbo = gy.t() @ hidden, gy.sum(0)
    gH = gy @ out_weight
    gx = torch.zeros_like(input)
    gwx, gwh, gb = [None] * L, [None] * (L - 1), [None] * L
    gz_next = None
    for i in range(L - 1, -1, -1):
        h = hidden[:, i * W:(i + 1) * W]
        g = gH[:, i * W:(i + 1) * W]
        if gz_next is not None:
            g = g + gz_next @ weight_h[i]
        gz = g * act_grad_from_out(h, activation)
        s = i % splits
        xs = input[:, offs[s]:offs[s + 1]]
        gwx[i], gb[i] = gz.t() @ xs, gz.sum(0)
        if i > 0:
            gwh[i - 1] = gz.t() @ hidden[:, (i - 1) * W:i * W]
        gx[:, offs[s]:offs[s + 1]] += gz @ weight_x[i]
        gz_next = gz
    return gx, gwx, gwh, gb, gwo, gbo


def _has_kernel(name: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"shallowkern::{name}", key)


def _define_python_ops() -> None:
    """Whatever _C did not provide (schemas, CPU kernels, Meta, autograd), from Python.

    Without the extension (or with one built before this op existed) the op keeps working: the
    CPU kernels are the references, the backward recomputes H (no saved buffer).
    """
    lib = torch.library.Library("shallowkern", "FRAGMENT")  # noqa: TOR901
    _LIBS.append(lib)
    if not hasattr(torch.ops.shallowkern, "spinal_linear_backward"):
        for schema in SCHEMAS.values():
            lib.define(schema)
    if not _has_kernel("spinal_linear", "CPU"):
        def checked_forward(*a):
            check_args(*a[:8])  # the raw op is public API: the same clear errors as the functional
            return spinal_linear_forward_reference(*a[:8])

        lib.impl("spinal_linear", lambda *a: checked_forward(*a)[0], "CPU")
        lib.impl("spinal_linear_forward", checked_forward, "CPU")
        lib.impl("spinal_linear_backward", lambda *a: spinal_linear_backward_reference(*a[:8]), "CPU")
    if _has_kernel("spinal_linear", "Autograd"):
        return  # C++ Meta and autograd kernels are there

    def fake_fwd(input, weight_x, weight_h, bias, out_weight, out_bias, splits, activation, backend):
        check_args(input, weight_x, weight_h, bias, out_weight, out_bias, splits, activation)
        B, LW = input.shape[0], len(weight_x) * weight_x[0].shape[0]
        return input.new_empty(B, out_weight.shape[0]), input.new_empty(B, LW)

    def fake_bwd(grad_out, input, weight_x, weight_h, hidden, out_weight, splits, activation, backend):
        return (torch.empty_like(input), [torch.empty_like(w) for w in weight_x],
                [torch.empty_like(w) for w in weight_h],
                [input.new_empty(w.shape[0]) for w in weight_x], torch.empty_like(out_weight),
                input.new_empty(out_weight.shape[0]))

    torch.library.register_fake("shallowkern::spinal_linear", lambda *a: fake_fwd(*a)[0], lib=lib)
    torch.library.register_fake("shallowkern::spinal_linear_forward", fake_fwd, lib=lib)
    torch.library.register_fake("shallowkern::spinal_linear_backward", fake_bwd, lib=lib)

    def setup_context(ctx, inputs, output):
        ctx.args = inputs
        ctx.save_for_backward(inputs[0], *inputs[1], *inputs[2], *inputs[3], inputs[4],
                              *(() if inputs[5] is None else (inputs[5],)))
        ctx.counts = (len(inputs[1]), len(inputs[3]), inputs[5] is not None)

    def backward(ctx, grad):
        L, nb, has_bo = ctx.counts
        t = list(ctx.saved_tensors)
        x, wx, wh, b = t[0], t[1:1 + L], t[1 + L:2 * L], t[2 * L:2 * L + nb]
        wo = t[2 * L + nb]
        bo = t[2 * L + nb + 1] if has_bo else None
        splits, act, backend = ctx.args[6:9]
        # the fallback saves no hidden buffer: recompute it (one forward) in the backward
        _, H = torch.ops.shallowkern.spinal_linear_forward(x, wx, wh, b, wo, bo, splits, act, backend)
        gx, gwx, gwh, gb, gwo, gbo = torch.ops.shallowkern.spinal_linear_backward(
            grad, x, wx, wh, H, wo, splits, act, backend)
        return gx, list(gwx), list(gwh), list(gb) if nb else [], gwo, gbo if has_bo else None, \
            None, None, None

    torch.library.register_autograd("shallowkern::spinal_linear", backward,
                                    setup_context=setup_context, lib=lib)


_LIBS: list = []
# True when _C carries the C++ CPU kernel, Meta and autograd (csrc/cpu/spinal_linear.cpp)
# (checked on the dispatcher itself: a _C built before this op existed has neither)
NATIVE_CPU = hasattr(torch.ops.shallowkern, "spinal_linear_backward") and \
    _has_kernel("spinal_linear", "CPU") and _has_kernel("spinal_linear", "Autograd")
if not NATIVE_CPU:  # pragma: no cover - exercised by the no-extension CI job
    _define_python_ops()


# ---------------------------------------------------------------------------------------------
# CUDA kernels (Triton; the CUDA C++ forward through shallowkern::_spinal_linear_cuda)
# ---------------------------------------------------------------------------------------------
def _cuda_forward(input, weight_x, weight_h, bias, out_weight, out_bias, splits, activation, backend,
                  need_hidden: bool):
    if backend == "native" and not need_hidden:
        return torch.ops.shallowkern._spinal_linear_cuda(
            input, list(weight_x), list(weight_h), list(bias), out_weight, out_bias, splits,
            activation), None
    if backend in ("triton", "native"):
        from ..triton import spinal_linear as tk
        return tk.spinal_forward(input, weight_x, weight_h, bias, out_weight, out_bias, splits,
                                 activation, need_hidden=need_hidden)
    y, H = spinal_linear_forward_reference(input, weight_x, weight_h, bias, out_weight, out_bias,
                                           splits, activation)
    return y, H


def _cuda_backward(grad_out, input, weight_x, weight_h, hidden, out_weight, splits, activation,
                   backend):
    if backend in ("triton", "native"):
        from ..triton import spinal_linear as tk
        return tk.spinal_backward(grad_out, input, weight_x, weight_h, hidden, out_weight, splits,
                                  activation)
    return spinal_linear_backward_reference(grad_out, input, weight_x, weight_h, hidden, out_weight,
                                            splits, activation)


for _name, _fn in (
    ("spinal_linear", lambda *a: _cuda_forward(*a, need_hidden=False)[0]),
    ("spinal_linear_forward", lambda *a: _cuda_forward(*a, need_hidden=True)),
    ("spinal_linear_backward", _cuda_backward),
):
    torch.library.register_kernel(f"shallowkern::{_name}", "cuda", _fn,
                                  lib=_LIBS[0] if _LIBS else None)


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


DISPATCH = OpDispatch("spinal_linear", [
    Backend("native", devices=("cpu",), dtypes=(torch.float32, torch.float64),
            supports=lambda *a: None if NATIVE_CPU else
            f"no C++ spinal_linear kernel (shallowkern._C: {_ext.load_error or 'built before it'})",
            description="C++ CPU kernel (whole chain, MKL GEMMs into one hidden buffer)"),
    Backend("triton", devices=("cuda", "cpu"), dtypes=(torch.float32, torch.float16, torch.bfloat16),
            needs_triton=True, supports=_triton_supports, prefer=_triton_prefer,
            description="Triton fused chain"),
    Backend("native", devices=("cuda",), dtypes=_CUDA_DTYPES, needs_cuda_ext=True,
            supports=_cuda_native_supports, description="CUDA C++ fused forward"),
    Backend("reference", description="PyTorch composition (spinal_linear_reference)"),
], key=lambda input, *rest: input)


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
    Support: CPU fp32/fp64 run the C++ kernel (other dtypes, or no _C: the reference); CUDA
    fp32/fp16/bf16 run Triton (or the CUDA C++ forward when forced, inference only).
    Differentiable in every tensor argument; ``shallowkern.last_backend("spinal_linear")`` says
    which kernel ran. Bad arguments raise ValueError/TypeError naming the argument.
    """
    b = list(bias) if bias else []
    if torch.compiler.is_compiling():
        # traced by dynamo: a static choice (no recording, no logging in the graph); the
        # registered op is one opaque node with its fake and autograd kernels
        if torch.is_autocast_enabled(input.device.type):
            dt = torch.get_autocast_dtype(input.device.type)
            c = lambda t: t.to(dt) if t is not None and t.is_floating_point() else t
            return spinal_linear_reference(c(input), [c(w) for w in weight_x], [c(w) for w in weight_h],
                                           [c(t) for t in b], c(out_weight), c(out_bias),
                                           splits=splits, activation=activation)
        backend = ("native" if input.device.type == "cpu" and NATIVE_CPU and input.dtype in
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


def init_bound(fan_in: int) -> float:
    """nn.Linear's default bound 1/sqrt(fan_in) for a layer reading ``fan_in`` features."""
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
